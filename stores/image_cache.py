"""The image cache: preprocessed uint8 radiographs (N, R, R) in one Zarr v3 group, written once, read many times.

Layout (``cache.zarr/``)::

    zarr.json      attrs: {"embedkit_image_cache": {format_version, n_rows, resolution, unit_rows, ...},
                           "provenance": {...}, "fingerprint": "<sha256 of the provenance>"}
    images         (N, R, R) uint8; chunks of ``images_per_chunk`` images, one shard per work unit
    ids            (N,) string
    filled         (N,) bool, chunked by unit   -- row holds an image
    failure        (N,) string, chunked by unit -- why a row is empty ("" when filled)
    done           (n_units,) bool, one chunk per unit: the completion ledger
    done/writer.lock   the writer lock (``fcntl.flock``; not a zarr object), as in the embedding store
    done/creating.json only while the cache is being created: an interrupted creation, redone by the same command
    labels         (N, K) float32 (NaN = unknown), optional; attrs["label_names"]
    split          (N,) string, optional
    metadata/<name> (N,), optional (patient_id, study_id, view, sex, age, dataset)

Work units are whole shards, so writers in different processes never touch the same file (concurrent writes to one
shard lose updates). A unit is done only when the ledger says so: written data, then ``filled``/``failure``, then the
ledger entry, so a unit killed half-way is simply redone. Labels, split and metadata are copied from the manifest so
that a cache can stand in for it.

Writers hold the lock of ``stores._lock`` (see FORMAT.md, "Image cache"): one exclusive writer, or the ranks of one
distributed run sharing it (rank 0 creates/opens first); the kernel drops it when the holder dies.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stores import _safe as safe
from stores._layout import check_rank
from stores._lock import CACHE_LOCK_RELPATH, WriterLock, default_run_id
from stores.errors import FormatVersionError, ProvenanceMismatchError, StoreError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_KEY = "embedkit_image_cache"
#: Provenance keys that must agree before rows are appended to an existing cache.
COMPATIBILITY_KEYS = ("resolution", "preprocess")


def _fingerprint(provenance: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(provenance, sort_keys=True, default=str).encode()).hexdigest()


class ImageCache:
    """Preprocessed uint8 images with a per-unit completion ledger.

    Use :meth:`create`, :meth:`open` or :meth:`open_or_create`; the constructor is internal.

    Examples
    --------
    >>> cache = ImageCache.create(tmp / "c.zarr", ids=["a", "b"], resolution=4,
    ...                           provenance={"resolution": 4, "preprocess": {}})  # doctest: +SKIP
    >>> cache.write_unit(0, {"images": np.zeros((2, 4, 4), np.uint8)})  # doctest: +SKIP
    """

    def __init__(self, group: Any, path: Path, mode: str, *, lock: WriterLock | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        self._group = group
        self.path = path
        self.mode = mode
        self._lock = lock
        self._rank, self._world_size = rank, world_size
        info = dict(group.attrs[_KEY])
        self._info = info
        self.n_rows = int(info["n_rows"])
        self.resolution = int(info["resolution"])
        self.unit_rows = int(info["unit_rows"])
        self.images_per_chunk = int(info["images_per_chunk"])

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        ids: Sequence[str],
        resolution: int,
        provenance: Mapping[str, Any],
        labels: np.ndarray | None = None,
        label_names: Sequence[str] | None = None,
        split: Sequence[str] | None = None,
        metadata: Mapping[str, Sequence] | None = None,
        unit_rows: int = 256,
        images_per_chunk: int = 1,
        compress: bool = True,
        overwrite: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        run_id: str | None = None,
    ) -> ImageCache:
        """Create an empty cache (opened read-write, holding the writer lock).

        Parameters
        ----------
        path : str or Path
            Directory to create (``*.zarr`` by convention).
        ids : sequence of str, length N
            Unique image ids, in row order.
        resolution : int
            Side R of the square images.
        provenance : mapping
            Plain JSON-able dict: source dataset spec, preset parameters, resolution.
        labels : ndarray (N, K) float, optional
            NaN = unknown.
        label_names : sequence of str, length K, optional
        split : sequence of str, length N, optional
        metadata : mapping of name -> sequence of length N, optional
        unit_rows : int
            Rows per work unit (one shard); a multiple of ``images_per_chunk``.
        images_per_chunk : int
            Images per zarr chunk inside a shard.
        compress : bool
            Zstd level 1 on the image chunks (radiographs compress ~1.5-2x; decoding stays far cheaper than PNG).
        overwrite : bool
            Replace an existing image cache (needs its writer lock). Never clears anything else: a file,
            ``.``/``..``/the home directory, an embedding store or a non-empty folder without an image cache's
            ``zarr.json`` is refused. A folder left by an interrupted creation is recreated either way.
        rank, world_size, run_id : optional
            Distributed creation: rank 0 creates (the lock is then shared by the run), the other ranks
            :meth:`open` with ``"r+"`` after a barrier. ``run_id`` defaults to the launcher's (see ``stores._lock``).

        Returns
        -------
        ImageCache

        Raises
        ------
        StoreError
            Bad arguments, ``path`` holds a cache and ``overwrite`` is False, ``path`` is not ours to clear, or an
            OSError (full disk, read-only filesystem) while creating: re-running the same call then starts over.
        StoreLockedError
            Another writer holds the cache.
        """
        path = Path(path)
        ids = [str(i) for i in ids]
        n = len(ids)
        if n < 1:
            raise StoreError("An image cache needs at least one id. Got an empty dataset.")
        if len(set(ids)) != n:
            raise StoreError("Image ids must be unique; deduplicate the manifest's 'id' column.")
        if int(resolution) < 1:
            raise StoreError(f"The 'resolution' of an image cache must be an int >= 1. Got {resolution!r}.")
        if images_per_chunk < 1 or unit_rows < 1 or unit_rows % images_per_chunk:
            raise StoreError(
                f"'unit_rows' ({unit_rows}) must be a positive multiple of 'images_per_chunk' ({images_per_chunk})."
            )
        rank, world_size = check_rank(rank, world_size)
        if rank != 0:
            raise StoreError(f"Only rank 0 creates an image cache; rank {rank} must open '{path}' after a barrier.")
        _validate_columns(n, labels, label_names, split, metadata)  # argument errors before anything is touched
        state = _classify(path)  # refuse what is not ours
        if state == "complete" and not overwrite:
            raise StoreError(f"'{path}' already exists; pass overwrite=True or choose another path.")
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = WriterLock(path, rank=0, world_size=world_size, run_id=run_id or default_run_id(),
                              relpath=CACHE_LOCK_RELPATH, noun="Image cache")
        except OSError as exc:
            raise safe.creation_error(path, "image cache", exc) from None
        try:
            if _classify(path) == "complete" and not overwrite:  # another creator finished while we checked
                raise StoreError(f"'{path}' already exists; pass overwrite=True or choose another path.")
            lock_file = path / CACHE_LOCK_RELPATH
            # Marker first, as for the embedding store: a kill from here on leaves an interrupted creation that
            # the same command recreates.
            safe.write_marker(lock_file, {"kind": "image_cache", "pid": os.getpid()})
            safe.clear_for_creation(path, lock_file)  # deleting the held lock file would let a second writer in
            group = cls._build(path, ids=ids, resolution=resolution, provenance=provenance, labels=labels,
                               label_names=label_names, split=split, metadata=metadata, unit_rows=unit_rows,
                               images_per_chunk=images_per_chunk, compress=compress)
            safe.fsync_tree(path)
            safe.remove_marker(lock_file)
        except OSError as exc:
            lock.release()
            raise safe.creation_error(path, "image cache", exc) from None
        except BaseException:
            lock.release()
            raise
        return cls(group, path, "r+", lock=lock, rank=0, world_size=world_size)

    @classmethod
    def _build(cls, path: Path, *, ids: list[str], resolution: int, provenance: Mapping[str, Any],
               labels: np.ndarray | None, label_names: Sequence[str] | None, split: Sequence[str] | None,
               metadata: Mapping[str, Sequence] | None, unit_rows: int, images_per_chunk: int,
               compress: bool) -> Any:
        """Create every array of a new cache in the (empty but for the lock) directory ``path``."""
        import zarr
        from zarr.codecs import ZstdCodec

        n = len(ids)
        r = int(resolution)
        unit_rows = int(min(unit_rows, max(images_per_chunk, -(-n // images_per_chunk) * images_per_chunk)))
        n_units = -(-n // unit_rows)
        provenance = json.loads(json.dumps(dict(provenance), default=str))
        info = {
            "format_version": FORMAT_VERSION,
            "n_rows": n,
            "resolution": r,
            "unit_rows": unit_rows,
            "n_units": n_units,
            "images_per_chunk": int(images_per_chunk),
            "compressed": bool(compress),
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        # Not mode="w": that empties the directory, lock file included.
        group = zarr.create_group(store=str(path), zarr_format=3,
                                  attributes={_KEY: info, "provenance": provenance,
                                              "fingerprint": _fingerprint(provenance)})
        group.create_array(
            "images", shape=(n, r, r), dtype="uint8", chunks=(images_per_chunk, r, r), shards=(unit_rows, r, r),
            compressors=[ZstdCodec(level=1)] if compress else None, fill_value=0,
            dimension_names=["row", "y", "x"],
        )
        group.create_array("ids", shape=(n,), dtype=str, chunks=(min(n, 65536),), dimension_names=["row"])
        group["ids"][:] = np.asarray(ids, dtype=object)
        group.create_array("filled", shape=(n,), dtype="bool", chunks=(unit_rows,), fill_value=False,
                           dimension_names=["row"])
        group.create_array("failure", shape=(n,), dtype=str, chunks=(unit_rows,), fill_value="",
                           dimension_names=["row"])
        if labels is not None:
            labels = np.asarray(labels, dtype=np.float32)
            if labels.ndim != 2 or labels.shape[0] != n:
                raise StoreError(f"'labels' must have shape (N={n}, K). Got {labels.shape}.")
            names = [str(x) for x in (label_names or [f"label_{k}" for k in range(labels.shape[1])])]
            if len(names) != labels.shape[1]:
                raise StoreError(f"'label_names' has {len(names)} names for {labels.shape[1]} label columns.")
            arr = group.create_array("labels", shape=labels.shape, dtype="float32", chunks=(min(n, 65536), labels.shape[1]),
                                     fill_value=float("nan"), attributes={"label_names": names},
                                     dimension_names=["row", "label"])
            arr[:] = labels
        if split is not None:
            cls._write_column(group, "split", split, n)
        if metadata:
            meta = group.create_group("metadata")
            for name, values in metadata.items():
                cls._write_column(meta, name, values, n)
        # The ledger comes last: a cache whose ledger exists was completely created (versions without a marker).
        group.create_array("done", shape=(n_units,), dtype="bool", chunks=(1,), fill_value=False,
                           dimension_names=["unit"])
        return zarr.open_group(str(path), mode="r+", use_consolidated=False)

    @staticmethod
    def _write_column(group: Any, name: str, values: Sequence, n: int) -> None:
        arr = np.asarray(values)
        if arr.shape != (n,):
            raise StoreError(f"Column '{name}' must have length {n}. Got shape {arr.shape}.")
        if arr.dtype.kind in "fiub":
            out = group.create_array(name, shape=(n,), dtype=arr.dtype, chunks=(min(n, 65536),), dimension_names=["row"])
            out[:] = arr
        else:
            out = group.create_array(name, shape=(n,), dtype=str, chunks=(min(n, 65536),), dimension_names=["row"])
            out[:] = np.asarray(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values],
                                dtype=object)

    @classmethod
    def is_cache(cls, path: str | Path) -> bool:
        """True if ``path`` is a directory holding an image cache (cheap: reads one JSON file)."""
        meta = Path(path) / "zarr.json"
        if not meta.is_file():
            return False
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError):
            return False
        return _KEY in (doc.get("attributes") or {})

    @staticmethod
    def check_path(path: str | Path) -> safe.State:
        """What ``path`` holds, before any work: ``"absent"``, ``"incomplete"`` (an interrupted creation) or
        ``"complete"``; raise when it is not ours to write (a file, ``.``, the home directory, another kind of
        artefact, a non-empty foreign folder). Cheap: reads at most one ``zarr.json``.

        Raises
        ------
        StoreError
            ``path`` is not an image cache nor a free place for one.
        """
        return _classify(Path(path))

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", *, rank: int | None = None, world_size: int | None = None,
             run_id: str | None = None) -> ImageCache:
        """Open an existing cache; ``"r+"`` takes the writer lock (shared among the ranks of one run).

        Parameters
        ----------
        path : str or Path
        mode : {"r", "r+"}
        rank, world_size, run_id : optional
            Position in a distributed run (ranks > 0 open after rank 0 created/opened the cache).

        Raises
        ------
        FileNotFoundError
            No such directory.
        StoreError
            Not an image cache.
        FormatVersionError
            Written by a newer, unknown format version.
        StoreLockedError
            ``"r+"`` and another writer holds the cache.
        """
        import zarr

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No image cache at '{path}'.")
        if mode not in ("r", "r+"):
            raise StoreError(f"The 'mode' parameter of ImageCache.open must be 'r' or 'r+'. Got {mode!r}.")
        if not cls.is_cache(path):
            raise StoreError(f"'{path}' is not an image cache; write one with 'embedkit cache-images'.")
        if safe.is_incomplete(path, lock_relpath=CACHE_LOCK_RELPATH, ledger="done"):
            raise StoreError(f"Image cache '{path}' was never completely created (its creation was interrupted); "
                             "re-run the command that creates it (it starts over) or delete the folder.")
        rank, world_size = check_rank(rank, world_size)
        group = zarr.open_group(path, mode="r", use_consolidated=False)
        version = group.attrs[_KEY].get("format_version")
        if version != FORMAT_VERSION:
            raise FormatVersionError(
                f"Image cache '{path}' has format version {version}; this embedkit reads version {FORMAT_VERSION}. "
                "Upgrade embedkit or rewrite the cache."
            )
        lock = None
        if mode == "r+":
            lock = WriterLock(path, rank=rank, world_size=world_size, run_id=run_id or default_run_id(),
                              relpath=CACHE_LOCK_RELPATH, noun="Image cache")
            try:
                group = zarr.open_group(path, mode="r+", use_consolidated=False)
            except BaseException:
                lock.release()
                raise
        return cls(group, path, mode, lock=lock, rank=rank, world_size=world_size)

    @classmethod
    def open_or_create(cls, path: str | Path, **kwargs: Any) -> ImageCache:
        """Open ``path`` read-write if it exists and is compatible, else create it (the resume entry point).

        Raises
        ------
        ProvenanceMismatchError
            The existing cache has another resolution or preprocessing, or other ids.
        """
        path = Path(path)
        if kwargs.get("overwrite") or _classify(path) != "complete":  # absent, or an interrupted creation
            return cls.create(path, **kwargs)
        cache = cls.open(path, mode="r+", rank=kwargs.get("rank"), world_size=kwargs.get("world_size"),
                         run_id=kwargs.get("run_id"))
        try:
            cache.check_compatible(kwargs.get("provenance") or {})
            ids = [str(i) for i in kwargs.get("ids", [])]
            if len(ids) != cache.n_rows or not np.array_equal(cache.ids, np.asarray(ids, dtype=object)):
                raise ProvenanceMismatchError(
                    f"Image cache '{path}' holds {cache.n_rows} other ids than the {len(ids)} asked for; "
                    "use a new --out."
                )
        except BaseException:
            cache.close()
            raise
        return cache

    def check_compatible(self, provenance: Mapping[str, Any]) -> None:
        """Raise ProvenanceMismatchError if ``provenance`` differs in resolution or preprocessing."""
        mine = self.provenance
        for key in COMPATIBILITY_KEYS:
            if json.dumps(mine.get(key), sort_keys=True) != json.dumps(provenance.get(key), sort_keys=True):
                raise ProvenanceMismatchError(
                    f"Image cache '{self.path}' was written with {key}={_short(mine.get(key))}; "
                    f"refusing {key}={_short(provenance.get(key))}. Use a new --out."
                )

    # ------------------------------------------------------------------ properties
    @property
    def provenance(self) -> dict:
        """The provenance document given at creation."""
        return dict(self._group.attrs["provenance"])

    @property
    def fingerprint(self) -> str:
        """sha256 hex of the provenance document."""
        return str(self._group.attrs["fingerprint"])

    @property
    def images(self) -> Any:
        """The (N, R, R) uint8 zarr array."""
        return self._group["images"]

    @property
    def ids(self) -> np.ndarray:
        """(N,) image ids."""
        return np.asarray(self._group["ids"][:], dtype=object)

    @property
    def filled(self) -> np.ndarray:
        """(N,) bool: the row holds an image."""
        return np.asarray(self._group["filled"][:], dtype=bool)

    @property
    def labels(self) -> np.ndarray | None:
        """(N, K) float32 with NaN = unknown, or None."""
        return np.asarray(self._group["labels"][:], dtype=np.float32) if "labels" in self._group else None

    @property
    def label_names(self) -> list[str]:
        """Names of the K label columns (empty without labels)."""
        return list(self._group["labels"].attrs["label_names"]) if "labels" in self._group else []

    @property
    def split(self) -> np.ndarray | None:
        """(N,) split names or None."""
        return np.asarray(self._group["split"][:], dtype=object) if "split" in self._group else None

    @property
    def metadata_names(self) -> list[str]:
        """Names of the metadata columns present."""
        return sorted(self._group["metadata"].array_keys()) if "metadata" in self._group else []

    def metadata(self, name: str) -> np.ndarray | None:
        """(N,) metadata column ``name`` or None."""
        if name not in self.metadata_names:
            return None
        arr = self._group["metadata"][name]
        values = arr[:]
        return np.asarray(values, dtype=object) if arr.dtype.kind not in "fiub" else np.asarray(values)

    # ------------------------------------------------------------------ units
    @property
    def n_units(self) -> int:
        """Number of work units (shards)."""
        return -(-self.n_rows // self.unit_rows)

    def unit_slice(self, unit: int) -> slice:
        """Rows of work unit ``unit``."""
        if not 0 <= unit < self.n_units:
            raise StoreError(f"Unit {unit} is out of range [0, {self.n_units}).")
        return slice(unit * self.unit_rows, min(self.n_rows, (unit + 1) * self.unit_rows))

    def done_units(self) -> np.ndarray:
        """(n_units,) bool: the ledger."""
        return np.asarray(self._group["done"][:], dtype=bool)

    def pending_units(self, rank: int | None = None, world_size: int | None = None) -> list[int]:
        """Units not yet done that belong to ``rank``: ``u % world_size == rank`` (default: this writer's).

        The assignment is static (not a split of the pending list) so that ranks asking at different moments,
        while others already write, still get disjoint sets.
        """
        rank = self._rank if rank is None else rank
        world_size = self._world_size if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise StoreError(f"Invalid rank {rank} for world size {world_size}.")
        done = self.done_units()
        return [u for u in range(rank, self.n_units, world_size) if not done[u]]

    def write_unit(
        self,
        unit: int,
        features: Mapping[str, np.ndarray],
        ok: np.ndarray | None = None,
        failures: Mapping[int, str] | None = None,
    ) -> None:
        """Write one whole unit: images, then ``filled``/``failure``, then the ledger entry.

        Parameters
        ----------
        unit : int
        features : mapping with key ``"images"`` -> ndarray (rows_in_unit, R, R) uint8
        ok : ndarray (rows_in_unit,) bool, optional
            False rows are left empty (default: all True).
        failures : mapping global row -> reason, optional

        Raises
        ------
        StoreError
            Read-only (or closed) cache, unit owned by another rank, wrong shapes, or rows outside the unit.
        """
        self._require_writable()
        sl = self.unit_slice(unit)
        if self._world_size > 1 and unit % self._world_size != self._rank:
            raise StoreError(f"Unit {unit} belongs to rank {unit % self._world_size}, not rank {self._rank}.")
        rows = sl.stop - sl.start
        images = np.asarray(features["images"])
        if images.shape != (rows, self.resolution, self.resolution) or images.dtype != np.uint8:
            raise StoreError(
                f"Unit {unit} needs images of shape {(rows, self.resolution, self.resolution)} uint8. "
                f"Got {images.shape} {images.dtype}."
            )
        ok = np.ones(rows, bool) if ok is None else np.asarray(ok, dtype=bool)
        reasons = np.full(rows, "", dtype=object)
        for row, why in (failures or {}).items():
            if not sl.start <= int(row) < sl.stop:
                raise StoreError(f"Failure row {row} is outside unit {unit} ({sl.start}..{sl.stop - 1}).")
            reasons[int(row) - sl.start] = str(why).replace("\n", " ")[:500] or "unreadable"
            ok[int(row) - sl.start] = False
        self._group["images"][sl] = np.where(ok[:, None, None], images, 0).astype(np.uint8, copy=False)
        self._group["filled"][sl] = ok
        self._group["failure"][sl] = reasons
        self._group["done"][unit] = True

    def read(self, rows: slice | np.ndarray) -> np.ndarray:
        """Images of ``rows`` as (n, R, R) uint8 (one contiguous slice reads shard by shard)."""
        return np.asarray(self._group["images"][rows], dtype=np.uint8)

    def failures(self) -> dict[str, str]:
        """Image id -> reason, for rows recorded as unreadable."""
        reasons = np.asarray(self._group["failure"][:], dtype=object)
        bad = np.flatnonzero(reasons != "")
        ids = self.ids
        return {str(ids[i]): str(reasons[i]) for i in bad}

    def failure_reasons(self, rows: slice) -> np.ndarray:
        """(n,) reasons for ``rows`` ("" where the image is present)."""
        return np.asarray(self._group["failure"][rows], dtype=object)

    def finalize(self) -> None:
        """Record summary counts (rank 0 / the single writer, once, after every writer is done)."""
        self._require_writable()
        if self._rank != 0:
            raise StoreError(f"Only rank 0 finalizes the image cache; this is rank {self._rank}.")
        info = dict(self._group.attrs[_KEY])
        info.update(
            n_filled=int(self.filled.sum()), n_failed=len(self.failures()),
            complete=bool(self.done_units().all()),
        )
        self._group.attrs[_KEY] = info
        self._info = info

    def _require_writable(self) -> None:
        if self._lock is None or not self._lock.held:
            raise StoreError(f"Image cache '{self.path}' is open read-only (or closed); open it with mode='r+'.")

    def close(self) -> None:
        """Release the writer lock (idempotent); the object stays readable."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImageCache('{self.path}', n_rows={self.n_rows}, resolution={self.resolution})"


def _validate_columns(n: int, labels: Any, label_names: Sequence[str] | None, split: Sequence[str] | None,
                      metadata: Mapping[str, Sequence] | None) -> None:
    """The checks ``_build`` makes, run before the target folder is touched."""
    if labels is not None:
        shape = np.shape(labels)
        if len(shape) != 2 or shape[0] != n:
            raise StoreError(f"'labels' must have shape (N={n}, K). Got {shape}.")
        if label_names is not None and len(label_names) != shape[1]:
            raise StoreError(f"'label_names' has {len(label_names)} names for {shape[1]} label columns.")
    for name, values in (({"split": split} if split is not None else {}) | dict(metadata or {})).items():
        if np.shape(values) != (n,):
            raise StoreError(f"Column '{name}' must have length {n}. Got shape {np.shape(values)}.")


def _classify(path: Path) -> safe.State:
    return safe.classify(path, key=_KEY, lock_relpath=CACHE_LOCK_RELPATH, ledger="done", noun="image cache",
                         foreign_keys={"embedkit_store": "embedding store"})


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
