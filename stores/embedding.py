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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from stores import _provenance as prov_mod
from stores._layout import (DOC_KEY, FORMAT_VERSION, as_str_array, build_group, check_rank, read_str,
                            validate_create)
from stores._ledger import UnitLedger
from stores._zarrio import (chunk_path, default_rows_per_chunk, default_rows_per_shard, dir_size, fast_pipeline,
                            file_checksum, fsync_chunk, read_raw_rows, take_raw_rows)
from stores.errors import ProvenanceMismatchError, StoreError

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "EmbeddingStore"]


class EmbeddingStore(UnitLedger):
    """A Zarr v3 embedding store. Build with :meth:`create`, :meth:`open` or :meth:`open_or_create`.

    The lock, ledger, failures, checksums, verification and finalisation are :class:`stores._ledger.UnitLedger`'s;
    this class adds the feature views and the fast readers.
    """

    KEY, KIND, NOUN, TITLE = DOC_KEY, "embeddings", "embedding store", "Store"
    FOREIGN = {"embedkit_image_cache": "image cache"}

    def _open_unit_arrays(self, root: zarr.Group) -> dict[str, zarr.Array]:
        with fast_pipeline():
            self._features = {v: root[f"features/{v}"] for v in self._doc["views"]}
        return dict(self._features)

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
        unit = rps or rpc
        doc = {"format_version": FORMAT_VERSION, "kind": "embeddings", "n_rows": n, "views": dict(views),
               "dtype": dtype, "rows_per_chunk": rpc, "rows_per_shard": rps, "unit_rows": unit,
               "n_units": -(-n // unit), "label_names": spec["label_names"],
               "metadata": sorted(spec["metadata"]), "has_split": split is not None, "summary": None}
        return cls._create(path, overwrite=overwrite, world_size=world_size, run_id=run_id, durable=durable,
                           build=lambda p: build_group(p, doc, prov, ids_arr, spec))

    @classmethod
    def open(cls, path: str | Path, mode: Literal["r", "r+"] = "r", *, rank: int | None = None,
             world_size: int | None = None, run_id: str | None = None, durable: bool = True) -> EmbeddingStore:
        """Open an existing store (format version 1 or 2); ``"r+"`` takes the writer lock (shared among the ranks
        of one run).

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
        if mode in ("r", "r+") and not (path / "zarr.json").is_file():
            raise StoreError(f"No store at '{path}' (no zarr.json); check the path or create the store first.")
        return cls._open(path, mode, rank=rank, world_size=world_size, run_id=run_id, durable=durable)

    def _check_resume(self, kwargs: Mapping[str, Any]) -> None:
        self._check_compatible(kwargs["provenance"], kwargs["views"], kwargs.get("dtype", "float16"))

    def _check_compatible(self, provenance: Mapping, views: Mapping[str, int], dtype: str) -> None:
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

    # ------------------------------------------------------------------ description
    @property
    def views(self) -> dict[str, int]:
        """Feature view name -> dimension."""
        return dict(self._doc["views"])

    @property
    def dtype(self) -> str:
        """Stored feature dtype, ``"float16"`` or ``"float32"``."""
        return str(self._doc["dtype"])

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

    def _check_unit(self, sl: slice, data: Mapping[str, np.ndarray]) -> None:
        self._check_views(data, sl)

    def _unit_block(self, name: str, sl: slice, data: Mapping[str, np.ndarray], ok: np.ndarray) -> np.ndarray:
        return self._prepare(name, data, sl, ok)

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
    def summary(self) -> dict:
        """Everything ``embedkit info`` shows: counts, views, labels per split, provenance, size on disk."""
        from stores._verify import summarize

        return summarize(self)

    def size_on_disk(self) -> tuple[int, int]:
        """(bytes, files) of the store directory."""
        return dir_size(self.path)

    def expected_arrays(self) -> dict[str, tuple[tuple[int, ...], str | None]]:
        """Array path -> (shape, dtype or None) that :meth:`verify` checks."""
        out = super().expected_arrays()
        out.update({f"features/{v}": ((self.n_rows, d), self.dtype) for v, d in self.views.items()})
        return out

    def deep_problems(self, filled: np.ndarray) -> list[str]:
        """Filled rows holding NaN/inf, per view (``verify(deep=True)``)."""
        problems = []
        for v in self.views:
            n_bad = 0
            for idx, x in self.iter_batches(v, batch_size=self.unit_rows * 4, dtype=None):
                n_bad += int((~np.isfinite(x[filled[idx]])).any(axis=1).sum())
            if n_bad:
                problems.append(f"features/{v}: {n_bad} filled rows hold NaN/inf")
        return problems

    def __repr__(self) -> str:
        mode = "r+" if self._lock is not None and self._lock.held else "r"
        return f"EmbeddingStore('{self.path}', n_rows={self.n_rows}, views={self.views}, dtype={self.dtype}, {mode})"


def _cast(x: np.ndarray, dtype: Any) -> np.ndarray:
    return x if dtype is None else x.astype(dtype, copy=False)
