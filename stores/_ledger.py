"""The unit ledger: the write protocol shared by every resumable artefact (embedding store, image cache).

One Zarr v3 group whose rows are written by whole *units* (one outer chunk of the unit arrays each), with one
vocabulary (``ids``, ``filled``, ``failures``, ``checksums``, ``ledger``, ``labels``/``label``, ``split``,
``meta/<name>``), one lock (``ledger/writer.lock``, :mod:`stores._lock`), one durability rule and one fingerprint
rule (:func:`stores._provenance.fingerprint`). Per unit, :meth:`UnitLedger.write_unit`:

1. clears the unit's ledger entry durably if it was done (a writer killed mid-rewrite leaves it pending);
2. writes every unit array's chunk (shard) whole, fsync'd, and records each file's (crc32c, nbytes) in ``checksums``;
3. writes ``filled`` and ``failures`` (fsync'd);
4. sets ``ledger[u] = 1`` (not fsync'd: losing it only means redoing the unit).

A subclass names its unit arrays (:meth:`UnitLedger._open_unit_arrays`), validates a caller's arrays
(:meth:`UnitLedger._check_unit`) and turns them into one block per unit array (:meth:`UnitLedger._unit_block`);
everything else (lock and rank ownership, creation that
survives a kill, ledger, failures, checksums, verification, finalisation) lives here. See ``stores/FORMAT.md``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import zarr

from stores import _provenance as prov_mod
from stores import _safe as safe
from stores._layout import FORMAT_VERSION, array_names, as_str_array, check_doc, check_rank, read_str
from stores._lock import LOCK_RELPATH, WriterLock, default_run_id
from stores._zarrio import (chunk_path, fast_pipeline, file_checksum, fsync_chunk, is_raw_1d,
                            is_raw_layout, write_raw_1d_chunk, write_raw_chunk, write_raw_whole_chunk)
from stores.errors import ProvenanceMismatchError, StoreError

logger = logging.getLogger(__name__)

#: Longest failure reason kept (one line).
MAX_REASON_CHARS = 500


def unit_coords(arr: zarr.Array, u: int) -> tuple[int, ...]:
    """Outer-chunk grid coordinates of unit ``u`` in a unit array (whole trailing dimensions per chunk)."""
    return (u,) + (0,) * (arr.ndim - 1)


class UnitLedger:
    """Base of the resumable artefacts: a Zarr group written unit by unit under a writer lock.

    Subclasses set the class attributes and implement :meth:`_open_unit_arrays`, :meth:`_check_unit` and
    :meth:`_unit_block`.
    """

    KEY: ClassVar[str]  # the group attribute holding the layout document
    KIND: ClassVar[str]  # the document's "kind"
    NOUN: ClassVar[str]  # "embedding store" / "image cache", in messages
    TITLE: ClassVar[str]  # "Store" / "Image cache", at the start of messages
    FOREIGN: ClassVar[dict[str, str]]  # other artefacts' keys -> nouns, to name a refused folder
    #: Whether a version-1 artefact may be resumed (opened "r+"); otherwise it opens read-only.
    V1_WRITABLE: ClassVar[bool] = True

    def __init__(self, path: Path, root: zarr.Group, *, lock: WriterLock | None, rank: int, world_size: int,
                 durable: bool) -> None:
        self.path = Path(path)
        self._root = root
        self._lock = lock
        self._rank, self._world_size, self._durable = rank, world_size, durable
        attrs = root.attrs.asdict()
        self._doc: dict = dict(attrs[self.KEY])
        self._provenance: dict = attrs.get("provenance", {})
        self._fingerprint: str = attrs.get("fingerprint", "")
        self._names = array_names(self.KIND, self.format_version)
        with fast_pipeline():
            self._filled, self._ledger = root[self._names["filled"]], root[self._names["ledger"]]
        self._failures = root[self._names["failures"]]  # strings: zarr-python's own pipeline
        self._checksums = root["checksums"] if "checksums" in root else None  # absent before checksums existed
        self._units: dict[str, zarr.Array] = self._open_unit_arrays(root)
        # Unit arrays whose chunk files are raw row blocks of one unit each: written without the codec pipeline.
        self._raw = {k: is_raw_layout(a) and a.chunks[0] == self.unit_rows for k, a in self._units.items()}
        self._ids: np.ndarray | None = None

    # ------------------------------------------------------------------ hooks
    def _open_unit_arrays(self, root: zarr.Group) -> dict[str, zarr.Array]:
        """The arrays written by unit, by name (their order is the ``checksums`` order)."""
        raise NotImplementedError

    def _check_unit(self, sl: slice, data: Mapping[str, np.ndarray]) -> None:
        """Validate a caller's data for rows ``sl`` (names, shapes, dtypes) before anything is touched."""
        raise NotImplementedError

    def _unit_block(self, name: str, sl: slice, data: Mapping[str, np.ndarray], ok: np.ndarray) -> np.ndarray:
        """The block of unit array ``name`` to store for rows ``sl`` (failed rows set to the fill value).

        Called one array at a time, while writing, so that only one converted block is alive at once.
        """
        raise NotImplementedError

    def expected_arrays(self) -> dict[str, tuple[tuple[int, ...], str | None]]:
        """Array path -> (shape, dtype or None) that :meth:`verify` checks."""
        n = self.n_rows
        out: dict[str, tuple[tuple[int, ...], str | None]] = {
            "ids": ((n,), None), self._names["filled"]: ((n,), None), self._names["failures"]: ((n,), None),
            self._names["ledger"]: ((self.n_units,), None)}
        if self.label_names:
            out["labels"] = ((n, len(self.label_names)), None)
        if self._doc.get("has_split", "split" in self._root):
            out["split"] = ((n,), None)
        out.update({f"{self._names['meta']}/{m}": ((n,), None) for m in self.metadata_names})
        return out

    def deep_problems(self, filled: np.ndarray) -> list[str]:
        """Problems only a full scan of the data finds (``verify(deep=True)``); none by default."""
        return []

    # ------------------------------------------------------------------ creation and opening
    @classmethod
    def _classify(cls, path: Path) -> safe.State:
        return safe.classify(path, key=cls.KEY, lock_relpath=LOCK_RELPATH, ledger=("ledger", "done"), noun=cls.NOUN,
                             foreign_keys=cls.FOREIGN)

    @classmethod
    def check_path(cls, path: str | Path) -> safe.State:
        """What ``path`` holds, before any work: ``"absent"``, ``"incomplete"`` (an interrupted creation) or
        ``"complete"``; raise when it is not ours to write (a file, ``.``, the home directory, another kind of
        artefact, a non-empty foreign folder). Cheap: reads at most one ``zarr.json``.

        Raises
        ------
        StoreError
            ``path`` is neither an artefact of this kind nor a free place for one.
        """
        return cls._classify(Path(path))

    @classmethod
    def _create(cls, path: Path, *, overwrite: bool, world_size: int, run_id: str | None, durable: bool,
                build: Callable[[Path], None]) -> Any:
        """Take the lock, write the creation marker, clear, ``build(path)``, fsync, remove the marker; open r+."""
        exists = f"A{'n' if cls.NOUN[0] in 'aeiou' else ''} {cls.NOUN} already exists at '{path}'; open it, use " \
                 "open_or_create to resume, or pass overwrite=True."
        if cls._classify(path) == "complete" and not overwrite:  # before anything is touched
            raise StoreError(exists)
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = WriterLock(path, rank=0, world_size=world_size, run_id=run_id or default_run_id(),
                              noun=cls.TITLE)
        except OSError as exc:
            raise safe.creation_error(path, cls.NOUN, exc) from None
        try:
            if cls._classify(path) == "complete" and not overwrite:  # another creator finished while we checked
                raise StoreError(exists)
            lock_file = path / LOCK_RELPATH
            # The marker goes first: a kill (or a full disk) from here on leaves a folder that every later call
            # recognises as an interrupted creation of ours, which the same command recreates.
            safe.write_marker(lock_file, {"kind": cls.KIND, "pid": os.getpid()})
            safe.clear_for_creation(path, lock_file)  # keeps the held lock file: deleting it would let a writer in
            build(path)
            if durable:
                safe.fsync_tree(path)
            safe.remove_marker(lock_file)
            root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            return cls(path, root, lock=lock, rank=0, world_size=world_size, durable=durable)
        except OSError as exc:
            lock.release()
            raise safe.creation_error(path, cls.NOUN, exc) from None
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open(cls, path: Path, mode: str, *, rank: int | None, world_size: int | None, run_id: str | None,
              durable: bool) -> Any:
        """Open an existing artefact (whose ``zarr.json`` the caller found); ``"r+"`` takes the writer lock."""
        if mode not in ("r", "r+"):
            raise StoreError(f"The 'mode' parameter of {cls.__name__}.open must be 'r' or 'r+'. Got {mode!r}.")
        rank, world_size = check_rank(rank, world_size)
        root = zarr.open_group(str(path), mode="r", use_consolidated=False)
        version = check_doc(path, root.attrs.asdict(), key=cls.KEY, kind=cls.KIND, noun=cls.NOUN, title=cls.TITLE)
        ledger = array_names(cls.KIND, version)["ledger"]
        lock_relpath = f"{ledger}/writer.lock"
        if safe.is_incomplete(path, lock_relpath=lock_relpath, ledger=ledger):
            raise StoreError(f"{cls.TITLE} '{path}' was never completely created (its creation was interrupted); "
                             "re-run the command that creates it (it starts over) or delete the folder.")
        lock = None
        if mode == "r+":
            if version != FORMAT_VERSION and not cls.V1_WRITABLE:
                raise StoreError(f"{cls.TITLE} '{path}' was written in format version {version}, which this embedkit "
                                 "reads but does not resume; re-create it: delete the folder or use a new --out "
                                 "(in Python, create(..., overwrite=True)).")
            lock = WriterLock(path, rank=rank, world_size=world_size, run_id=run_id or default_run_id(),
                              relpath=lock_relpath, noun=cls.TITLE)
            try:
                root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            except BaseException:
                lock.release()
                raise
        return cls(path, root, lock=lock, rank=rank, world_size=world_size, durable=durable)

    @classmethod
    def open_or_create(cls, path: str | Path, **kwargs: Any) -> Any:
        """Resume: open ``path`` read-write if it holds a compatible artefact, else create it (kwargs of ``create``).

        On resume, done units whose chunk files are missing or truncated are marked pending (a stat each).

        Raises
        ------
        ProvenanceMismatchError
            The existing artefact was written from other inputs (see the subclass's ``_check_resume``) or ids.
        """
        path = Path(path)
        if kwargs.get("overwrite") or cls._classify(path) != "complete":  # absent, or an interrupted creation
            return cls.create(path, **kwargs)
        obj = cls.open(path, "r+", rank=kwargs.get("rank"), world_size=kwargs.get("world_size"),
                       run_id=kwargs.get("run_id"), durable=kwargs.get("durable", True))
        try:
            obj._check_resume(kwargs)
            obj._check_ids(kwargs.get("ids", []))
            obj._requeue_damaged()
        except BaseException:
            obj.close()
            raise
        return obj

    def _check_resume(self, kwargs: Mapping[str, Any]) -> None:
        """Refuse to resume with ``create`` arguments that would mix incompatible rows."""
        raise NotImplementedError

    def _check_ids(self, ids: Sequence[str]) -> None:
        """Refuse to resume with other ids (open_or_create)."""
        new_ids = as_str_array(ids, "ids")
        old_ids = self.ids
        if len(new_ids) != len(old_ids) or not np.array_equal(new_ids, old_ids):
            diff = "row count differs" if len(new_ids) != len(old_ids) else (
                f"first difference at row {int(np.flatnonzero(new_ids != old_ids)[0])}")
            raise ProvenanceMismatchError(
                f"{self.TITLE} '{self.path}' holds {len(old_ids)} rows whose ids differ from this run's "
                f"{len(new_ids)} ({diff}); refusing to append. Use a new --out.")

    def _requeue_damaged(self) -> None:
        """On resume, mark done units whose chunk file is missing or has the wrong size pending (a stat each)."""
        from stores._verify import damaged_units

        if self._rank != 0:
            return
        bad = damaged_units(self, np.flatnonzero(self.done_units()), read=False)
        if bad:
            logger.warning(
                "%s '%s': %d done unit(s) have missing or truncated chunk files (%s); rewriting them.", self.TITLE,
                self.path, len(bad), "; ".join(p for u in sorted(bad) for p in bad[u][:1]))
            self.mark_pending(sorted(bad))

    # ------------------------------------------------------------------ description
    @property
    def format_version(self) -> int:
        """The format version the artefact was written in (1 or 2)."""
        return int(self._doc["format_version"])

    @property
    def n_rows(self) -> int:
        """N, the number of rows."""
        return int(self._doc["n_rows"])

    @property
    def unit_rows(self) -> int:
        """Rows per unit (the last unit may be shorter)."""
        return int(self._doc["unit_rows"])

    @property
    def n_units(self) -> int:
        """Number of units."""
        return -(-self.n_rows // self.unit_rows)

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
        """The layout document (format version, counts, chunking, units, summary), a copy."""
        return dict(self._doc)

    @property
    def group(self) -> zarr.Group:
        """The underlying zarr group (for reading; writes go through this object)."""
        return self._root

    @property
    def unit_arrays(self) -> dict[str, zarr.Array]:
        """The arrays written by unit, by name, in ``checksums`` order."""
        return dict(self._units)

    def is_raw(self, name: str) -> bool:
        """Whether unit array ``name`` uses the raw fast path (chunk file = raw bytes of one unit)."""
        return self._raw[name]

    def checksum_records(self) -> np.ndarray | None:
        """(n_units, n_unit_arrays, 2) int64 (crc32c, nbytes) per unit and array, -1 = none; None when absent."""
        return None if self._checksums is None else np.asarray(self._checksums[:])

    @property
    def ids(self) -> np.ndarray:
        """Row ids, shape (N,), dtype object (str)."""
        if self._ids is None:
            self._ids = read_str(self._root["ids"])
        return self._ids

    @property
    def label_names(self) -> list[str]:
        """Label column names, length K (empty without labels)."""
        return list(self._root["labels"].attrs["label_names"]) if "labels" in self._root else []

    @property
    def labels(self) -> np.ndarray | None:
        """Labels, shape (N, K) float32 with NaN = unknown, or None."""
        return np.asarray(self._root["labels"][:], dtype=np.float32) if "labels" in self._root else None

    @property
    def split(self) -> np.ndarray | None:
        """Split per row, shape (N,) object (str; ``''`` = none), or None."""
        return read_str(self._root["split"]) if "split" in self._root else None

    @property
    def metadata_names(self) -> list[str]:
        """Names of the stored per-row metadata arrays."""
        meta = self._names["meta"]
        return sorted(self._root[meta].array_keys()) if meta in self._root else []

    def metadata(self, name: str) -> np.ndarray | None:
        """Per-row metadata ``name``, shape (N,) (object str, or numbers), or None when not stored."""
        if name not in self.metadata_names:
            return None
        arr = self._root[f"{self._names['meta']}/{name}"]
        return read_str(arr) if arr.dtype.kind not in "fiub" else np.asarray(arr[:])

    @property
    def filled(self) -> np.ndarray:
        """Rows whose data is written, shape (N,) bool."""
        return np.asarray(self._filled[:], dtype=bool)

    def failure_reasons(self, rows: slice | None = None) -> np.ndarray:
        """Failure reason per row (``''`` = none), shape (n,) object, for ``rows`` (default all)."""
        return read_str(self._failures, rows)

    def failures(self) -> dict[str, str]:
        """Rows that could not be written: id -> reason."""
        reasons = self.failure_reasons()
        rows = np.flatnonzero(reasons != "")
        ids = self.ids
        return {str(ids[i]): str(reasons[i]) for i in rows}

    # ------------------------------------------------------------------ units
    def unit_slice(self, u: int) -> slice:
        """Row range of unit ``u``."""
        if not 0 <= u < self.n_units:
            raise StoreError(f"Unit {u} is out of range; this {self.NOUN} has units 0..{self.n_units - 1}.")
        return slice(u * self.unit_rows, min((u + 1) * self.unit_rows, self.n_rows))

    def done_units(self) -> np.ndarray:
        """Ledger: units whose data, filled and failure rows are durably written, shape (n_units,) bool."""
        return np.asarray(self._ledger[:], dtype=bool)

    def pending_units(self, rank: int | None = None, world_size: int | None = None) -> list[int]:
        """Units not done that belong to ``rank`` (round robin ``u % world_size == rank``; default: this writer's).

        The assignment is static (not a split of the pending list), so ranks asking at different moments, while
        others already write, still get disjoint sets.
        """
        rank = self._rank if rank is None else rank
        world_size = self._world_size if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise StoreError(f"Invalid rank {rank} for world size {world_size}.")
        done = self.done_units()
        return [u for u in range(rank, self.n_units, world_size) if not done[u]]

    # ------------------------------------------------------------------ writing
    def write_unit(self, u: int, features: Mapping[str, np.ndarray], ok: np.ndarray | None = None,
                   failures: Mapping[int, str] | None = None) -> None:
        """Write unit ``u`` whole: its data, then its filled/failure rows, then its ledger entry.

        Parameters
        ----------
        u : int
            Unit index; in a distributed run it must satisfy ``u % world_size == rank``.
        features : dict of str to ndarray, shape (rows_in_unit, ...)
            One array per unit array of the artefact (see the subclass).
        ok : ndarray of bool, shape (rows_in_unit,), optional
            False for rows that failed (stored as the fill value). Default all True.
        failures : dict of int to str, optional
            Global row -> reason (implies not ok).

        Raises
        ------
        StoreError
            Read-only, unit out of range or owned by another rank, missing or wrong-shaped data.
        """
        self._require_writable()
        sl = self.unit_slice(u)
        if self._world_size > 1 and u % self._world_size != self._rank:
            raise StoreError(f"Unit {u} belongs to rank {u % self._world_size}, not rank {self._rank}.")
        ok_arr, reasons = self._ok_and_reasons(sl, ok, failures)
        self._check_unit(sl, features)  # before anything is touched: a bad call must not half-rewrite a unit
        self._unmark_done(u)
        sums = []
        for name, arr in self._units.items():
            block = self._unit_block(name, sl, features, ok_arr)
            if self._raw[name]:
                sums.append(write_raw_chunk(arr, self.path, u, block, durable=self._durable))
                continue
            # The unit is written whole: drop the old shard first, else zarr merges into it and a damaged one
            # (truncated index) would make the rewrite that repairs it fail.
            key = unit_coords(arr, u)
            chunk_path(arr, self.path, key).unlink(missing_ok=True)
            arr[sl] = block
            if self._durable:
                fsync_chunk(arr, self.path, key)
            sums.append(file_checksum(chunk_path(arr, self.path, key)))
        self._write_checksums(u, sums)
        self._write_1d(self._filled, u, ok_arr)
        fail_key = chunk_path(self._failures, self.path, (u,))
        if (reasons != "").any() or fail_key.exists():  # an all-'' chunk is never stored: skip the no-op write
            self._failures[sl] = reasons
            if self._durable:
                fsync_chunk(self._failures, self.path, (u,))
        # Not fsync'd: a ledger entry lost to a power cut only means redoing the unit; what must never happen is an
        # entry that survives while the unit's data does not, and the data was fsync'd above.
        self._write_1d(self._ledger, u, np.ones(1, np.uint8), durable=False)

    def _write_checksums(self, u: int, sums: list[tuple[int, int] | None]) -> None:
        """Record each unit array's (crc32c, nbytes) of unit ``u``'s chunk file, before its ledger entry."""
        if self._checksums is None:  # written before checksums existed
            return
        values = np.array([s if s is not None else (-1, -1) for s in sums], dtype=np.int64)
        if not write_raw_whole_chunk(self._checksums, self.path, (u, 0, 0), values[None]):
            self._checksums[u] = values
        if self._durable:
            fsync_chunk(self._checksums, self.path, (u, 0, 0))

    def mark_pending(self, units: Sequence[int]) -> None:
        """Clear the ledger entries of ``units`` so that the next run (``open_or_create``) rewrites them.

        Raises
        ------
        StoreError
            Read-only, or a unit out of range.
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
        key = chunk_path(self._ledger, self.path, (u,))
        if not key.exists() or not self._ledger[u]:  # all-zero ledger chunks are never stored: a stat suffices
            return
        self._write_1d(self._ledger, u, np.zeros(1, np.uint8), durable=self._durable)
        if self._durable:
            safe.fsync_path(key.parent)  # the entry is removed (fill value), so it is the directory that must persist

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

    def _ok_and_reasons(self, sl: slice, ok: np.ndarray | None,
                        failures: Mapping[int, str] | None) -> tuple[np.ndarray, np.ndarray]:
        n = sl.stop - sl.start
        ok_arr = np.ones(n, bool) if ok is None else np.array(ok, dtype=bool).reshape(-1)
        if ok_arr.shape != (n,):
            raise StoreError(f"'ok' must have shape ({n},) for rows {sl.start}..{sl.stop - 1}. Got {ok_arr.shape}.")
        reasons = np.full(n, "", dtype=object)
        for row, reason in (failures or {}).items():
            if not sl.start <= int(row) < sl.stop:
                raise StoreError(f"Failure row {row} is outside unit rows {sl.start}..{sl.stop - 1} being written.")
            reasons[int(row) - sl.start] = str(reason).replace("\n", " ")[:MAX_REASON_CHARS] or "failed"
            ok_arr[int(row) - sl.start] = False
        reasons[(~ok_arr) & (reasons == "")] = "failed"
        return ok_arr, reasons

    def _require_writable(self) -> None:
        if self._lock is None or not self._lock.held:
            raise StoreError(f"{self.TITLE} '{self.path}' is open read-only (or closed); open it with mode='r+' "
                             "to write.")

    # ------------------------------------------------------------------ checks, summary, closing
    def verify(self, *, deep: bool = False, repair: bool = False) -> dict:
        """Check shapes, dtypes, every done unit's chunk files against their recorded checksums, ledger vs filled,
        and the fingerprint (with ``deep``, also what only a full scan finds).

        Parameters
        ----------
        deep : bool
            Also scan the data (embedding store: every filled row is finite).
        repair : bool
            Mark the damaged units pending (needs ``"r+"``), so that re-running the writer rewrites exactly them.

        Returns
        -------
        dict
            ``ok`` (bool), ``problems`` (list of str, each naming its unit), ``damaged_units`` (list of int),
            ``n_rows``, ``n_filled``, ``n_failed``, ``n_units``, ``n_done_units``, ``complete``,
            ``format_version``; with ``repair``, ``marked_pending``.

        Raises
        ------
        StoreError
            ``repair`` on a read-only artefact.

        Examples
        --------
        >>> EmbeddingStore.open("runs/nih.zarr").verify()["damaged_units"]  # doctest: +SKIP
        []
        """
        from stores._verify import verify_store

        if repair:
            self._require_writable()
        return verify_store(self, deep=deep, repair=repair)

    def finalize(self) -> dict:
        """Record the completion summary in the layout document (rank 0 / the single writer, after all ranks).

        Returns
        -------
        dict
            The summary written (``complete``, ``n_filled``, ``n_failed``, ``n_done_units``, ``finalized``).
        """
        self._require_writable()
        if self._rank != 0:
            raise StoreError(f"Only rank 0 finalizes the {self.NOUN}; this is rank {self._rank}.")
        done = self.done_units()
        summary = {"complete": bool(done.all()), "n_filled": int(self.filled.sum()),
                   "n_failed": len(self.failures()), "n_done_units": int(done.sum()),
                   "finalized": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._doc["summary"] = summary
        self._root.attrs.update({self.KEY: self._doc})
        return summary

    def close(self) -> None:
        """Release the writer lock (idempotent); the object stays readable."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
