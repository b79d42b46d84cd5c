"""The embedding store: one Zarr v3 group of per-view feature arrays, written by whole units, resumable.

The layout is documented in ``stores/FORMAT.md``. A *unit* is one outer chunk of the feature arrays (a whole shard,
or a whole chunk when unsharded): every writer owns whole units, because two processes writing different rows of one
chunk (or different inner chunks of one shard) lose updates in zarr. Per unit, the data is written and fsync'd, then
the ``filled``/``failures`` rows, then the one-entry ``ledger`` chunk that says the unit is done. Rewriting a unit that
is already done first clears (and fsyncs) its ledger entry, so a writer killed mid-rewrite leaves it pending.

Example
-------
>>> import numpy as np
>>> st = EmbeddingStore.create(tmp / "s.zarr", ids=["a", "b"], views={"cls": 4},
...                            provenance={"backbone": {"name": "x"}, "resolution": 64})  # doctest: +SKIP
>>> st.write_unit(0, {"cls": np.ones((2, 4))}); st.load("cls").shape  # doctest: +SKIP
(2, 4)
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from stores import _provenance as prov_mod
from stores import _safe as safe
from stores._lock import LOCK_RELPATH, WriterLock, default_run_id
from stores._zarrio import (_fsync_path, chunk_path, default_rows_per_chunk, default_rows_per_shard, dir_size,
                            fast_pipeline, file_checksum, fsync_chunk, is_raw_1d, is_raw_layout, read_raw_rows,
                            take_raw_rows, write_raw_1d_chunk, write_raw_chunk, write_raw_whole_chunk)
from stores._layout import (DOC_KEY, FORMAT_VERSION, as_str_array, build_group, check_doc, check_rank, read_str,
                            validate_create)
from stores.errors import ProvenanceMismatchError, StoreError

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "EmbeddingStore"]


class EmbeddingStore:
    """A Zarr v3 embedding store. Build with :meth:`create`, :meth:`open` or :meth:`open_or_create`."""

    def __init__(self, path: Path, root: zarr.Group, *, lock: WriterLock | None, rank: int, world_size: int,
                 durable: bool) -> None:
        self.path = Path(path)
        self._root = root
        self._lock = lock
        self._rank, self._world_size, self._durable = rank, world_size, durable
        attrs = root.attrs.asdict()
        self._doc: dict = dict(attrs[DOC_KEY])
        self._provenance: dict = attrs.get("provenance", {})
        self._fingerprint: str = attrs.get("fingerprint", "")
        with fast_pipeline():
            self._features = {v: root[f"features/{v}"] for v in self._doc["views"]}
            self._filled, self._ledger = root["filled"], root["ledger"]
        self._failures = root["failures"]  # strings: zarr-python's own pipeline
        self._checksums = root["checksums"] if "checksums" in root else None  # absent in stores written before it
        # Views whose chunk files are raw row blocks of one unit each: written and read without the codec pipeline.
        self._raw = {v: is_raw_layout(a) and a.chunks[0] == self.unit_rows for v, a in self._features.items()}
        self._ids: np.ndarray | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | Path, *, ids: Sequence[str], views: Mapping[str, int], provenance: Mapping[str, Any],
               labels: np.ndarray | None = None, label_names: Sequence[str] | None = None,
               split: Sequence[str] | None = None, metadata: Mapping[str, Sequence] | None = None,
               dtype: Literal["float16", "float32"] = "float16", rows_per_shard: int | None = None,
               rows_per_chunk: int | None = None, overwrite: bool = False, rank: int | None = None,
               world_size: int | None = None, run_id: str | None = None, durable: bool = True) -> EmbeddingStore:
        """Create a store and hold its writer lock (read-write).

        Parameters
        ----------
        path : str or Path
            Directory of the new store (conventionally ``*.zarr``).
        ids : sequence of str, shape (N,)
            Unique, stable row ids.
        views : dict of str to int
            Feature view name -> dimension D (e.g. ``{"cls": 768, "mean_patch": 768}``).
        provenance : dict
            Plain-JSON provenance document (see FORMAT.md); stored verbatim.
        labels : ndarray, shape (N, K), optional
            Labels, NaN = unknown; stored as float32.
        label_names : sequence of str, shape (K,), optional
            Defaults to ``label_0..label_{K-1}``.
        split : sequence of str, shape (N,), optional
            ``'train'``/``'val'``/``'test'``/``''`` per row.
        metadata : dict of str to sequence, shape (N,) each, optional
            Per-row metadata (patient_id, study_id, view, sex, age, dataset...). Numeric columns become float32
            (NaN = unknown), others strings (``''`` = unknown).
        dtype : {"float16", "float32"}
            Stored feature dtype.
        rows_per_shard, rows_per_chunk : int, optional
            Layout override; by default ~8 MiB chunks, unsharded unless an array would exceed 2048 chunks.
        overwrite : bool
            Replace an existing embedding store at ``path`` (needs its writer lock). Never clears anything else:
            a file, ``.``/``..``/the home directory, another kind of artefact or a non-empty folder without an
            embedding store's ``zarr.json`` is refused. A folder left by an interrupted creation is recreated
            with or without ``overwrite``.
        rank, world_size, run_id : optional
            Distributed creation: rank 0 creates, the other ranks :meth:`open` after a barrier.
        durable : bool
            fsync every unit's data before its ledger entry (off only for benchmarks/scratch).

        Raises
        ------
        StoreError
            Invalid arguments, a store exists and ``overwrite`` is False, ``path`` is not ours to clear, or an
            OSError (full disk, read-only filesystem) while creating: re-running the same call then starts over.
        StoreLockedError
            Another writer holds the store.
        """
        path = Path(path)
        rank, world_size = check_rank(rank, world_size)
        if rank != 0:
            raise StoreError(f"Only rank 0 creates a store; rank {rank} must open '{path}' after a barrier.")
        ids_arr = as_str_array(ids, "ids")
        n = len(ids_arr)
        spec = validate_create(n, ids_arr, views, dtype, labels, label_names, split, metadata)
        prov = prov_mod.normalize(provenance)
        row_bytes = max(views.values()) * np.dtype(dtype).itemsize
        rpc = int(rows_per_chunk) if rows_per_chunk else default_rows_per_chunk(row_bytes, n)
        rps = int(rows_per_shard) if rows_per_shard else (None if rows_per_chunk else default_rows_per_shard(rpc, n))
        if rpc < 1 or (rps is not None and (rps < rpc or rps % rpc)):
            raise StoreError(f"rows_per_shard ({rps}) must be a positive multiple of rows_per_chunk ({rpc}).")
        state = _classify(path)  # before anything is touched: refuse what is not ours
        if state == "complete" and not overwrite:
            raise StoreError(f"A store already exists at '{path}'; open it, use open_or_create to resume, "
                             "or pass overwrite=True.")
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = WriterLock(path, rank=0, world_size=world_size, run_id=run_id or default_run_id())
        except OSError as exc:
            raise safe.creation_error(path, "embedding store", exc) from None
        try:
            if _classify(path) == "complete" and not overwrite:  # another creator finished while we checked
                raise StoreError(f"A store already exists at '{path}'; open it, use open_or_create to resume, "
                                 "or pass overwrite=True.")
            lock_file = path / LOCK_RELPATH
            # The marker goes first: a kill (or a full disk) from here on leaves a folder that every later call
            # recognises as an interrupted creation of ours, which the same command recreates.
            safe.write_marker(lock_file, {"kind": "embeddings", "pid": os.getpid()})
            safe.clear_for_creation(path, lock_file)
            unit = rps or rpc
            doc = {"format_version": FORMAT_VERSION, "kind": "embeddings", "n_rows": n, "views": dict(views),
                   "dtype": dtype, "rows_per_chunk": rpc, "rows_per_shard": rps, "unit_rows": unit,
                   "n_units": -(-n // unit), "label_names": spec["label_names"],
                   "metadata": sorted(spec["metadata"]), "has_split": split is not None, "summary": None}
            fp = prov_mod.fingerprint(prov, ids_arr)
            build_group(path, doc, prov, fp, ids_arr, spec)
            if durable:
                safe.fsync_tree(path)
            safe.remove_marker(lock_file)
            root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            return cls(path, root, lock=lock, rank=0, world_size=world_size, durable=durable)
        except OSError as exc:
            lock.release()
            raise safe.creation_error(path, "embedding store", exc) from None
        except BaseException:
            lock.release()
            raise

    @staticmethod
    def check_path(path: str | Path) -> safe.State:
        """What ``path`` holds, before any work: ``"absent"``, ``"incomplete"`` (an interrupted creation) or
        ``"complete"``; raise when it is not ours to write (a file, ``.``, the home directory, another kind of
        artefact, a non-empty foreign folder). Cheap: reads at most one ``zarr.json``.

        Raises
        ------
        StoreError
            ``path`` is not an embedding store nor a free place for one.
        """
        return _classify(Path(path))

    @classmethod
    def open(cls, path: str | Path, mode: Literal["r", "r+"] = "r", *, rank: int | None = None,
             world_size: int | None = None, run_id: str | None = None, durable: bool = True) -> EmbeddingStore:
        """Open an existing store; ``"r+"`` takes the writer lock (shared among the ranks of one run).

        Raises
        ------
        StoreError
            No embedkit store at ``path``.
        FormatVersionError
            The store's format version is unknown to this code.
        StoreLockedError
            ``"r+"`` and another writer holds the store.
        """
        path = Path(path)
        if mode not in ("r", "r+"):
            raise StoreError(f"The 'mode' parameter of EmbeddingStore.open must be 'r' or 'r+'. Got {mode!r}.")
        rank, world_size = check_rank(rank, world_size)
        if not (path / "zarr.json").is_file():
            raise StoreError(f"No store at '{path}' (no zarr.json); check the path or create the store first.")
        root = zarr.open_group(str(path), mode="r", use_consolidated=False)
        check_doc(path, root.attrs.asdict())
        if safe.is_incomplete(path, lock_relpath=LOCK_RELPATH, ledger="ledger"):
            raise StoreError(f"Store '{path}' was never completely created (its creation was interrupted); re-run the "
                             "command that creates it (it starts over) or delete the folder.")
        lock = None
        if mode == "r+":
            lock = WriterLock(path, rank=rank, world_size=world_size, run_id=run_id or default_run_id())
            try:
                root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            except BaseException:
                lock.release()
                raise
        return cls(path, root, lock=lock, rank=rank, world_size=world_size, durable=durable)

    @classmethod
    def open_or_create(cls, path: str | Path, **kwargs: Any) -> EmbeddingStore:
        """Resume: open ``path`` read-write if it holds a compatible store, else create it (same kwargs as create).

        Raises
        ------
        ProvenanceMismatchError
            The existing store was written with another backbone, resolution, preprocessing, views, dtype or ids.
        """
        path = Path(path)
        if kwargs.get("overwrite") or _classify(path) != "complete":  # absent, or an interrupted creation
            return cls.create(path, **kwargs)
        st = cls.open(path, "r+", rank=kwargs.get("rank"), world_size=kwargs.get("world_size"),
                      run_id=kwargs.get("run_id"), durable=kwargs.get("durable", True))
        try:
            st._check_compatible(kwargs["provenance"], kwargs["views"], kwargs.get("dtype", "float16"), kwargs["ids"])
            st._requeue_damaged()
        except BaseException:
            st.close()
            raise
        return st

    def _requeue_damaged(self) -> None:
        """On resume, mark done units whose chunk file is missing or has the wrong size pending (a stat each)."""
        from stores._verify import damaged_units

        if self._rank != 0:
            return
        bad = damaged_units(self, np.flatnonzero(self.done_units()), read=False)
        if bad:
            logger.warning("Store '%s': %d done unit(s) have missing or truncated chunk files (%s); rewriting them.",
                           self.path, len(bad), "; ".join(p for u in sorted(bad) for p in bad[u][:1]))
            self.mark_pending(sorted(bad))

    def _check_compatible(self, provenance: Mapping, views: Mapping[str, int], dtype: str, ids: Sequence[str]) -> None:
        new = prov_mod.normalize(provenance)
        diffs = prov_mod.differences(self._provenance, new)
        if dict(views) != self.views and "views" not in diffs:
            diffs.append("views")
        if dtype != self.dtype and "dtype" not in diffs:
            diffs.append("dtype")
        if diffs:
            raise ProvenanceMismatchError(
                f"Store '{self.path}' was written by {prov_mod.describe(self._provenance)}; refusing to append "
                f"{prov_mod.describe(new)} (differs in: {', '.join(diffs)}). Use a new --out.")
        new_ids = as_str_array(ids, "ids")
        old_ids = self.ids
        if len(new_ids) != len(old_ids) or not np.array_equal(new_ids, old_ids):
            diff = "row count differs" if len(new_ids) != len(old_ids) else (
                f"first difference at row {int(np.flatnonzero(new_ids != old_ids)[0])}")
            raise ProvenanceMismatchError(
                f"Store '{self.path}' holds {len(old_ids)} rows whose ids differ from this run's {len(new_ids)} "
                f"({diff}); refusing to append. Use a new --out.")

    # ------------------------------------------------------------------ description
    @property
    def n_rows(self) -> int:
        """N, the number of rows."""
        return int(self._doc["n_rows"])

    @property
    def views(self) -> dict[str, int]:
        """Feature view name -> dimension."""
        return dict(self._doc["views"])

    @property
    def dtype(self) -> str:
        """Stored feature dtype, ``"float16"`` or ``"float32"``."""
        return str(self._doc["dtype"])

    @property
    def provenance(self) -> dict:
        """The provenance document (a copy)."""
        return prov_mod.normalize(self._provenance)

    @property
    def fingerprint(self) -> str:
        """Hex sha256 of provenance (minus volatile keys) + ids; see FORMAT.md for the recipe."""
        return self._fingerprint

    @property
    def layout(self) -> dict:
        """The ``embedkit_store`` document (format version, chunking, units, summary)."""
        return dict(self._doc)

    @property
    def ids(self) -> np.ndarray:
        """Row ids, shape (N,), dtype object (str)."""
        if self._ids is None:
            self._ids = read_str(self._root["ids"])
        return self._ids

    @property
    def label_names(self) -> list[str]:
        """Label column names, length K (empty without labels)."""
        return list(self._doc.get("label_names") or [])

    @property
    def labels(self) -> np.ndarray | None:
        """Labels, shape (N, K) float32 with NaN = unknown, or None."""
        return self._root["labels"][:] if "labels" in self._root else None

    @property
    def split(self) -> np.ndarray | None:
        """Split per row, shape (N,) object (str; ``''`` = none), or None."""
        return read_str(self._root["split"]) if "split" in self._root else None

    @property
    def metadata_names(self) -> list[str]:
        """Names of the stored per-row metadata arrays."""
        return list(self._doc.get("metadata") or [])

    def metadata(self, name: str) -> np.ndarray | None:
        """Per-row metadata ``name``, shape (N,) (object str or float32), or None when not stored."""
        if name not in self.metadata_names:
            return None
        arr = self._root[f"meta/{name}"]
        return read_str(arr) if arr.dtype.kind not in "fiub" else arr[:]

    @property
    def filled(self) -> np.ndarray:
        """Rows whose features are written, shape (N,) bool."""
        return np.asarray(self._filled[:], dtype=bool)

    def failures(self) -> dict[str, str]:
        """Rows that could not be embedded: id -> reason."""
        reasons = read_str(self._failures)
        rows = np.flatnonzero(reasons != "")
        ids = self.ids
        return {str(ids[i]): str(reasons[i]) for i in rows}

    # ------------------------------------------------------------------ units
    @property
    def unit_rows(self) -> int:
        """Rows per unit (the last unit may be shorter)."""
        return int(self._doc["unit_rows"])

    @property
    def n_units(self) -> int:
        """Number of units."""
        return int(self._doc["n_units"])

    def unit_slice(self, u: int) -> slice:
        """Row range of unit ``u``."""
        if not 0 <= u < self.n_units:
            raise StoreError(f"Unit {u} is out of range; this store has units 0..{self.n_units - 1}.")
        return slice(u * self.unit_rows, min((u + 1) * self.unit_rows, self.n_rows))

    def done_units(self) -> np.ndarray:
        """Ledger: units whose data, filled and failure rows are durably written, shape (n_units,) bool."""
        return np.asarray(self._ledger[:], dtype=bool)

    def pending_units(self, rank: int | None = None, world_size: int | None = None) -> list[int]:
        """Units not done that belong to ``rank`` (round robin ``u % world_size == rank``; default: this writer's)."""
        rank = self._rank if rank is None else rank
        world_size = self._world_size if world_size is None else world_size
        done = self.done_units()
        return [u for u in range(rank, self.n_units, world_size) if not done[u]]

    # ------------------------------------------------------------------ writing
    def write_unit(self, u: int, features: Mapping[str, np.ndarray], ok: np.ndarray | None = None,
                   failures: Mapping[int, str] | None = None) -> None:
        """Write all views of unit ``u``, then its filled/failure rows, then its ledger entry.

        Parameters
        ----------
        u : int
            Unit index; in a distributed run it must satisfy ``u % world_size == rank``.
        features : dict of str to ndarray, shape (rows_in_unit, D_view)
            Every view of the store.
        ok : ndarray of bool, shape (rows_in_unit,), optional
            False for rows that failed (their features are stored as NaN). Default all True.
        failures : dict of int to str, optional
            Global row -> reason (implies not ok).

        Raises
        ------
        StoreError
            Read-only store, unit out of range or owned by another rank, missing view or wrong shape.
        """
        self._require_writable()
        sl = self.unit_slice(u)
        if self._world_size > 1 and u % self._world_size != self._rank:
            raise StoreError(f"Unit {u} belongs to rank {u % self._world_size}, not rank {self._rank}.")
        ok_arr, reasons = self._ok_and_reasons(sl, ok, failures)
        self._check_views(features, sl)  # before anything is touched: a bad call must not half-rewrite a unit
        self._unmark_done(u)
        sums = []
        for view, arr in self._features.items():
            data = self._prepare(view, features, sl, ok_arr)
            if self._raw[view]:
                sums.append(write_raw_chunk(arr, self.path, u, data, durable=self._durable))
                continue
            # The unit is written whole: drop the old shard first, else zarr merges into it and a damaged one
            # (truncated index) would make the rewrite that repairs it fail.
            chunk_path(arr, self.path, (u, 0)).unlink(missing_ok=True)
            arr[sl] = data
            if self._durable:
                fsync_chunk(arr, self.path, (u, 0))
            sums.append(file_checksum(chunk_path(arr, self.path, (u, 0))))
        self._write_checksums(u, sums)
        self._write_1d(self._filled, u, ok_arr)
        fail_key = self.path / self._failures.path / self._failures.metadata.encode_chunk_key((u,))
        if (reasons != "").any() or fail_key.exists():  # an all-'' chunk is never stored: skip the no-op write
            self._failures[sl] = reasons
            if self._durable:
                fsync_chunk(self._failures, self.path, (u,))
        # Not fsync'd: a ledger entry lost to a power cut only means redoing the unit; what must never happen is an
        # entry that survives while the unit's data does not, and the data was fsync'd above.
        self._write_1d(self._ledger, u, np.ones(1, np.uint8), durable=False)

    def _write_checksums(self, u: int, sums: list[tuple[int, int] | None]) -> None:
        """Record each view's (crc32c, nbytes) of unit ``u``'s chunk file, before its ledger entry (durably)."""
        if self._checksums is None:  # a store written before checksums existed
            return
        values = np.array([s if s is not None else (-1, -1) for s in sums], dtype=np.int64)
        if not write_raw_whole_chunk(self._checksums, self.path, (u, 0, 0), values[None]):
            self._checksums[u] = values
        if self._durable:
            fsync_chunk(self._checksums, self.path, (u, 0, 0))

    def mark_pending(self, units: Sequence[int]) -> None:
        """Clear the ledger entries of ``units`` so that the next run (``open_or_create``) rewrites them.

        Used after :meth:`verify` found a unit's chunk missing, truncated or altered.

        Raises
        ------
        StoreError
            Read-only store, or a unit out of range.
        """
        self._require_writable()
        for u in units:
            self.unit_slice(int(u))
            self._unmark_done(int(u))

    def _unmark_done(self, u: int) -> None:
        """Clear unit ``u``'s ledger entry before its data is rewritten; no-op for a unit that is not done.

        Made durable (the entry's removal fsync'd through its directory) before any byte of the unit changes:
        otherwise a writer killed mid-rewrite would leave a unit reported done whose data is half old, half new.
        """
        key = self.path / self._ledger.path / self._ledger.metadata.encode_chunk_key((u,))
        if not key.exists() or not self._ledger[u]:  # all-zero ledger chunks are never stored: a stat suffices
            return
        self._write_1d(self._ledger, u, np.zeros(1, np.uint8), durable=self._durable)
        if self._durable:
            _fsync_path(key.parent)  # the entry is removed (fill value), so it is the directory that must persist

    def _write_1d(self, arr: zarr.Array, chunk: int, values: np.ndarray, *, durable: bool | None = None) -> None:
        """Write one whole chunk of ``filled`` (one unit) or ``ledger`` (one entry), durably if asked."""
        durable = self._durable if durable is None else durable
        if is_raw_1d(arr):
            write_raw_1d_chunk(arr, self.path, chunk, values, durable=durable)
            return
        rows = arr.chunks[0]
        arr[chunk * rows:chunk * rows + len(values)] = values
        if durable:
            fsync_chunk(arr, self.path, (chunk,))

    def write_rows(self, start: int, features: Mapping[str, np.ndarray], ok: np.ndarray | None = None,
                   failures: Mapping[int, str] | None = None) -> None:
        """Write rows ``start:start+n`` of every view (single writer only); completed units enter the ledger.

        Parameters
        ----------
        start : int
            First row.
        features : dict of str to ndarray, shape (n, D_view)
            Every view of the store.
        ok, failures
            As in :meth:`write_unit` (``ok`` has shape (n,)).
        """
        self._require_writable()
        if self._world_size > 1:
            raise StoreError("write_rows is for a single writer; ranks of a distributed run use write_unit.")
        first = next(iter(features.values()), None)
        n = 0 if first is None else len(first)
        if start < 0 or start + n > self.n_rows:
            raise StoreError(f"Rows {start}..{start + n - 1} are out of range for a store of {self.n_rows} rows.")
        sl = slice(start, start + n)
        ok_arr, reasons = self._ok_and_reasons(sl, ok, failures)
        units = range(start // self.unit_rows, (start + n - 1) // self.unit_rows + 1) if n else range(0)
        self._check_views(features, sl)
        for u in units:  # a rewrite of done units: not done until rewritten, as in write_unit
            self._unmark_done(u)
        for view, arr in self._features.items():
            arr[sl] = self._prepare(view, features, sl, ok_arr)
        self._filled[sl] = ok_arr
        self._failures[sl] = reasons
        for u in units:
            usl = self.unit_slice(u)
            done = np.asarray(self._filled[usl], bool) | (read_str(self._failures, usl) != "")
            if self._durable:
                for arr in (*self._features.values(), self._filled, self._failures):
                    fsync_chunk(arr, self.path, (u, 0) if arr.ndim == 2 else (u,))
            if done.all():
                self._write_checksums(u, [file_checksum(chunk_path(a, self.path, (u, 0)))
                                          for a in self._features.values()])
                self._write_1d(self._ledger, u, np.ones(1, np.uint8), durable=False)

    def _ok_and_reasons(self, sl: slice, ok: np.ndarray | None,
                        failures: Mapping[int, str] | None) -> tuple[np.ndarray, np.ndarray]:
        n = sl.stop - sl.start
        ok_arr = np.ones(n, bool) if ok is None else np.array(ok, dtype=bool).reshape(-1)
        if ok_arr.shape != (n,):
            raise StoreError(f"'ok' must have shape ({n},) for rows {sl.start}..{sl.stop - 1}. Got {ok_arr.shape}.")
        reasons = np.full(n, "", dtype=object)
        for row, reason in (failures or {}).items():
            if not sl.start <= int(row) < sl.stop:
                raise StoreError(f"Failure row {row} is outside rows {sl.start}..{sl.stop - 1} being written.")
            reasons[int(row) - sl.start] = str(reason) or "failed"
            ok_arr[int(row) - sl.start] = False
        reasons[(~ok_arr) & (reasons == "")] = "failed"
        return ok_arr, reasons

    def _check_views(self, features: Mapping[str, np.ndarray], sl: slice) -> None:
        extra = set(features) - set(self._features)
        if extra:
            raise StoreError(f"Unknown view(s) {sorted(extra)}; this store has {sorted(self._features)}.")
        for view, dim in self.views.items():
            if view not in features:
                raise StoreError(f"Missing view '{view}': write every view of the store ({sorted(self._features)}).")
            shape, want = np.shape(features[view]), (sl.stop - sl.start, dim)
            if shape != want:
                raise StoreError(f"View '{view}' rows {sl.start}..{sl.stop - 1} must have shape {want}. Got {shape}.")

    def _prepare(self, view: str, features: Mapping[str, np.ndarray], sl: slice, ok: np.ndarray) -> np.ndarray:
        data = np.asarray(features[view])
        out = data.astype(self.dtype, copy=False)
        if not ok.all():
            out = out.copy() if out is data else out
            out[~ok] = np.nan  # failed rows read as NaN, like never-written ones
        return out

    def _require_writable(self) -> None:
        if self._lock is None or not self._lock.held:
            raise StoreError(f"Store '{self.path}' is open read-only (or closed); open it with mode='r+' to write.")

    # ------------------------------------------------------------------ reading
    def _arrays(self, view_or_views: str) -> list[zarr.Array]:
        names = view_or_views.split("+")
        unknown = [v for v in names if v not in self._features]
        if unknown:
            raise StoreError(f"Unknown view '{unknown[0]}'; this store has {sorted(self._features)} "
                             "(join several with '+', e.g. 'cls+mean_patch').")
        return [self._features[v] for v in names]

    def iter_batches(self, view: str, batch_size: int = 65536, *, rows: np.ndarray | None = None,
                     dtype: Any = np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate row batches without loading the store; memory stays O(batch_size * D).

        Parameters
        ----------
        view : str
            A view, or several joined with ``+`` (concatenated along axis 1).
        batch_size : int
            Rows per batch.
        rows : ndarray, optional
            Row indices (int, shape (M,)) or a bool mask (shape (N,)); batches follow this order.
        dtype : numpy dtype or None
            Output dtype (None keeps the stored dtype).

        Yields
        ------
        idx : ndarray of int64, shape (B,)
            Global row indices of the batch.
        x : ndarray, shape (B, D)
            Features (NaN rows were never filled).
        """
        if batch_size < 1:
            raise StoreError(f"The 'batch_size' parameter of iter_batches must be an int >= 1. Got {batch_size}.")
        arrs = self._arrays(view)
        if rows is None:
            for s in range(0, self.n_rows, batch_size):
                e = min(s + batch_size, self.n_rows)
                yield np.arange(s, e), _cast(np.concatenate([self._read(a, s, e) for a in arrs], axis=1), dtype)
            return
        idx = self._as_rows(rows)
        for s in range(0, len(idx), batch_size):
            r = idx[s:s + batch_size]
            yield r, _cast(np.concatenate([self._take(a, r) for a in arrs], axis=1), dtype)

    def load(self, view_or_views: str, *, split: str | None = None, mask: np.ndarray | None = None,
             dtype: Any = np.float32) -> np.ndarray:
        """Load a view (or ``"a+b"`` concatenation) into memory, optionally only a split and/or mask.

        Returns
        -------
        ndarray, shape (M, D_total)
            Rows in store order; dtype ``dtype`` (None keeps the stored dtype).
        """
        arrs = self._arrays(view_or_views)
        sel = None
        if split is not None:
            s = self.split
            if s is None:
                raise StoreError(f"Store '{self.path}' has no split column; load without split= or use mask=.")
            sel = s == split
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            if m.shape != (self.n_rows,):
                raise StoreError(f"'mask' must have shape ({self.n_rows},). Got {m.shape}.")
            sel = m if sel is None else sel & m
        if sel is None and len(arrs) == 1:
            return _cast(self._read(arrs[0], 0, self.n_rows), dtype)
        rows = np.arange(self.n_rows) if sel is None else np.flatnonzero(sel)
        out_dtype = np.dtype(self.dtype if dtype is None else dtype)
        out = np.empty((len(rows), sum(a.shape[1] for a in arrs)), dtype=out_dtype)
        block = max(arrs[0].chunks[0], 1) * 16  # ~128 MiB windows: bounded temporaries, few zarr calls
        pos = 0
        for s in range(0, self.n_rows, block):
            r = rows[(rows >= s) & (rows < s + block)]
            if len(r) == 0:
                continue
            off = 0
            for a in arrs:
                chunk = self._read(a, s, min(s + block, self.n_rows))
                out[pos:pos + len(r), off:off + a.shape[1]] = chunk[r - s]
                off += a.shape[1]
            pos += len(r)
        return out

    def _is_raw(self, arr: zarr.Array) -> bool:
        return self._raw[arr.basename]

    def _read(self, arr: zarr.Array, start: int, stop: int) -> np.ndarray:
        if not self._is_raw(arr):
            return arr[start:stop]
        out = np.empty((stop - start, arr.shape[1]), dtype=arr.dtype)
        read_raw_rows(arr, self.path, start, stop, out)
        return out

    def _take(self, arr: zarr.Array, rows: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(rows, return_inverse=True)
        if len(uniq) == 0:
            return np.empty((0, arr.shape[1]), dtype=arr.dtype)
        if uniq[-1] - uniq[0] + 1 <= 4 * len(uniq):  # dense: one contiguous read beats a scattered selection
            block = self._read(arr, int(uniq[0]), int(uniq[-1]) + 1)[uniq - uniq[0]]
        elif self._is_raw(arr):
            block = np.empty((len(uniq), arr.shape[1]), dtype=arr.dtype)
            take_raw_rows(arr, self.path, uniq, block)
        else:
            block = arr.get_orthogonal_selection((uniq, slice(None)))
        return block[inv.reshape(-1)]

    def _as_rows(self, rows: np.ndarray) -> np.ndarray:
        r = np.asarray(rows)
        if r.dtype == bool:
            if r.shape != (self.n_rows,):
                raise StoreError(f"A boolean 'rows' mask must have shape ({self.n_rows},). Got {r.shape}.")
            return np.flatnonzero(r)
        r = r.astype(np.int64).reshape(-1)
        if len(r) and (r.min() < 0 or r.max() >= self.n_rows):
            raise StoreError(f"Row indices must lie in 0..{self.n_rows - 1}.")
        return r

    # ------------------------------------------------------------------ checks and summary
    def verify(self, *, deep: bool = False, repair: bool = False) -> dict:
        """Check shapes, dtypes, every done unit's chunk files against their recorded checksums, ledger vs filled,
        and the fingerprint (with ``deep``, also that filled rows are finite).

        Parameters
        ----------
        deep : bool
            Also scan every filled row for NaN/inf.
        repair : bool
            Mark the damaged units pending (needs ``"r+"``), so that re-running the extract rewrites exactly them.

        Returns
        -------
        dict
            ``ok`` (bool), ``problems`` (list of str, each naming its unit), ``damaged_units`` (list of int: done
            units whose chunk file is missing, truncated or altered, or whose rows are incomplete), ``n_rows``,
            ``n_filled``, ``n_failed``, ``n_units``, ``n_done_units``, ``complete``, ``format_version``; with
            ``repair``, ``marked_pending``.

        Raises
        ------
        StoreError
            ``repair`` on a read-only store.

        Examples
        --------
        >>> EmbeddingStore.open("runs/nih.zarr").verify()["damaged_units"]  # doctest: +SKIP
        []
        """
        from stores._verify import verify_store

        if repair:
            self._require_writable()
        return verify_store(self, deep=deep, repair=repair)

    def summary(self) -> dict:
        """Everything ``embedkit info`` shows: counts, views, labels per split, provenance, size on disk."""
        from stores._verify import summarize

        return summarize(self)

    def size_on_disk(self) -> tuple[int, int]:
        """(bytes, files) of the store directory."""
        return dir_size(self.path)

    def finalize(self) -> dict:
        """Record the completion summary in the group attrs (rank 0 / the single writer, after all ranks finish).

        Returns
        -------
        dict
            The summary written (``complete``, ``n_filled``, ``n_failed``, ``n_done_units``, ``finalized``).
        """
        self._require_writable()
        if self._rank != 0:
            raise StoreError(f"Only rank 0 finalizes the store; this is rank {self._rank}.")
        done = self.done_units()
        filled = self.filled
        summary = {"complete": bool(done.all()), "n_filled": int(filled.sum()),
                   "n_failed": len(self.failures()), "n_done_units": int(done.sum()),
                   "finalized": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._doc["summary"] = summary
        self._root.attrs.update({DOC_KEY: self._doc})
        return summary

    def close(self) -> None:
        """Release the writer lock (idempotent); the object stays readable."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "r+" if self._lock is not None and self._lock.held else "r"
        return f"EmbeddingStore('{self.path}', n_rows={self.n_rows}, views={self.views}, dtype={self.dtype}, {mode})"


def _classify(path: Path) -> safe.State:
    return safe.classify(path, key=DOC_KEY, lock_relpath=LOCK_RELPATH, ledger="ledger", noun="embedding store",
                         foreign_keys={"embedkit_image_cache": "image cache"})


def _cast(x: np.ndarray, dtype: Any) -> np.ndarray:
    return x if dtype is None else x.astype(dtype, copy=False)
