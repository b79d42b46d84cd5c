"""The image cache: preprocessed uint8 radiographs (N, R, R) in one Zarr v3 group, written once, read many times.

Layout (``cache.zarr/``, format version 2; see ``stores/FORMAT.md``)::

    zarr.json          attrs: {"embedkit_image_cache": {format_version, kind, n_rows, resolution, unit_rows, ...},
                               "provenance": {...}, "fingerprint": "<sha256 of provenance (no timestamps) + ids>"}
    images             (N, R, R) uint8; chunks of ``images_per_chunk`` images, one shard per work unit
    ids, labels + label, split, meta/<name>     as in the embedding store
    filled, failures, checksums, ledger         the unit ledger (``stores._ledger``), as in the embedding store
    ledger/writer.lock, ledger/creating.json    the writer lock and the creation marker

The lock, rank ownership, ledger, failures, checksums, durability (every unit fsync'd, a done unit cleared before
it is rewritten), verification and finalisation are :class:`stores._ledger.UnitLedger`'s, shared with the
embedding store. Labels, split and metadata are copied from the manifest so that a cache can stand in for it.
Caches written in format version 1 (``failure``, ``done``, ``metadata/``) open read-only.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stores import _provenance as prov_mod
from stores._layout import (CACHE_KEY, FORMAT_VERSION, as_str_array, build_columns, build_ledger, check_rank,
                            create_root, validate_columns)
from stores._ledger import UnitLedger
from stores.errors import ProvenanceMismatchError, StoreError

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "ImageCache"]

#: Provenance keys that must agree before rows are appended to an existing cache.
COMPATIBILITY_KEYS = ("resolution", "preprocess")


class ImageCache(UnitLedger):
    """Preprocessed uint8 images with a per-unit completion ledger.

    Use :meth:`create`, :meth:`open` or :meth:`open_or_create`; the constructor is internal.

    Examples
    --------
    >>> cache = ImageCache.create(tmp / "c.zarr", ids=["a", "b"], resolution=4,
    ...                           provenance={"resolution": 4, "preprocess": {}})  # doctest: +SKIP
    >>> cache.write_unit(0, {"images": np.zeros((2, 4, 4), np.uint8)})  # doctest: +SKIP
    """

    KEY, KIND, NOUN, TITLE = CACHE_KEY, "image_cache", "image cache", "Image cache"
    FOREIGN = {"embedkit_store": "embedding store"}
    V1_WRITABLE = False  # version 1 had other array names, no checksums and no fsync: re-create to resume

    def __init__(self, path: Path, root: zarr.Group, **kwargs: Any) -> None:
        super().__init__(path, root, **kwargs)
        #: Side R of the square images, and images per zarr chunk inside a unit's shard.
        self.resolution, self.images_per_chunk = int(self._doc["resolution"]), int(self._doc["images_per_chunk"])
        self._group = root  # kept: callers read ``cache._group["filled"]`` (both versions name it so)

    def _open_unit_arrays(self, root: zarr.Group) -> dict[str, zarr.Array]:
        return {"images": root["images"]}

    @property
    def mode(self) -> str:
        """``"r+"`` while this object holds the writer lock, else ``"r"``."""
        return "r+" if self._lock is not None and self._lock.held else "r"

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | Path, *, ids: Sequence[str], resolution: int, provenance: Mapping[str, Any],
               labels: np.ndarray | None = None, label_names: Sequence[str] | None = None,
               split: Sequence[str] | None = None, metadata: Mapping[str, Sequence] | None = None,
               unit_rows: int = 256, images_per_chunk: int = 1, compress: bool = True, overwrite: bool = False,
               rank: int | None = None, world_size: int | None = None, run_id: str | None = None,
               durable: bool = True) -> ImageCache:
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
            Numeric columns become float32 (NaN = unknown), others strings (``''`` = unknown).
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
        durable : bool
            fsync every unit before its ledger entry (off only for benchmarks/scratch).

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
        ids_arr = as_str_array(ids, "ids")
        n = len(ids_arr)
        if n < 1:
            raise StoreError("An image cache needs at least one id. Got an empty dataset.")
        if len(set(ids_arr.tolist())) != n:
            raise StoreError("Image ids must be unique; deduplicate the manifest's 'id' column.")
        if int(resolution) < 1:
            raise StoreError(f"The 'resolution' of an image cache must be an int >= 1. Got {resolution!r}.")
        if images_per_chunk < 1 or unit_rows < 1 or unit_rows % images_per_chunk:
            raise StoreError(
                f"'unit_rows' ({unit_rows}) must be a positive multiple of 'images_per_chunk' ({images_per_chunk}).")
        rank, world_size = check_rank(rank, world_size)
        if rank != 0:
            raise StoreError(f"Only rank 0 creates an image cache; rank {rank} must open '{path}' after a barrier.")
        spec = validate_columns(n, labels, label_names, split, metadata)  # before anything is touched
        prov = prov_mod.normalize(json.loads(json.dumps(dict(provenance), default=str)))
        r = int(resolution)
        unit = int(min(unit_rows, max(images_per_chunk, -(-n // images_per_chunk) * images_per_chunk)))
        doc = {"format_version": FORMAT_VERSION, "kind": "image_cache", "n_rows": n, "resolution": r,
               "unit_rows": unit, "n_units": -(-n // unit), "images_per_chunk": int(images_per_chunk),
               "compressed": bool(compress), "label_names": spec["label_names"],
               "metadata": sorted(spec["metadata"]), "has_split": split is not None, "summary": None}

        def build(p: Path) -> None:
            from zarr.codecs import ZstdCodec

            root = create_root(p, CACHE_KEY, doc, prov, ids_arr)
            root.create_array("images", shape=(n, r, r), dtype="uint8", chunks=(int(images_per_chunk), r, r),
                              shards=(unit, r, r), compressors=[ZstdCodec(level=1)] if compress else None,
                              fill_value=0, dimension_names=["row", "y", "x"])
            build_columns(root, n, spec)
            build_ledger(root, n, unit, doc["n_units"], ["images"])

        return cls._create(path, overwrite=overwrite, world_size=world_size, run_id=run_id, durable=durable,
                           build=build)

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
        return CACHE_KEY in (doc.get("attributes") or {})

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", *, rank: int | None = None, world_size: int | None = None,
             run_id: str | None = None, durable: bool = True) -> ImageCache:
        """Open an existing cache; ``"r+"`` takes the writer lock (shared among the ranks of one run).

        Parameters
        ----------
        path : str or Path
        mode : {"r", "r+"}
        rank, world_size, run_id : optional
            Position in a distributed run (ranks > 0 open after rank 0 created/opened the cache).
        durable : bool
            fsync every unit before its ledger entry.

        Raises
        ------
        FileNotFoundError
            No such directory.
        StoreError
            Not an image cache, or ``"r+"`` on a version-1 cache (re-create it to resume).
        FormatVersionError
            Written by a newer, unknown format version.
        StoreLockedError
            ``"r+"`` and another writer holds the cache.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No image cache at '{path}'.")
        if mode in ("r", "r+") and not cls.is_cache(path):
            raise StoreError(f"'{path}' is not an image cache; write one with 'embedkit cache-images'.")
        return cls._open(path, mode, rank=rank, world_size=world_size, run_id=run_id, durable=durable)

    def _check_resume(self, kwargs: Mapping[str, Any]) -> None:
        self.check_compatible(kwargs.get("provenance") or {})

    def check_compatible(self, provenance: Mapping[str, Any]) -> None:
        """Raise ProvenanceMismatchError if ``provenance`` differs in resolution or preprocessing."""
        mine = self.provenance
        for key in COMPATIBILITY_KEYS:
            if json.dumps(mine.get(key), sort_keys=True) != json.dumps(provenance.get(key), sort_keys=True):
                raise ProvenanceMismatchError(
                    f"Image cache '{self.path}' was written with {key}={_short(mine.get(key))}; "
                    f"refusing {key}={_short(provenance.get(key))}. Use a new --out.")

    # ------------------------------------------------------------------ data
    @property
    def images(self) -> Any:
        """The (N, R, R) uint8 zarr array."""
        return self._units["images"]

    def _check_unit(self, sl: slice, data: Mapping[str, np.ndarray]) -> None:
        rows = sl.stop - sl.start
        if set(data) != {"images"}:
            raise StoreError(f"An image cache unit is {{'images': array}}. Got keys {sorted(data)}.")
        images = np.asarray(data["images"])
        want = (rows, self.resolution, self.resolution)
        if images.shape != want or images.dtype != np.uint8:
            raise StoreError(f"Unit rows {sl.start}..{sl.stop - 1} need images of shape {want} uint8. "
                             f"Got {images.shape} {images.dtype}.")

    def _unit_block(self, name: str, sl: slice, data: Mapping[str, np.ndarray], ok: np.ndarray) -> np.ndarray:
        return np.where(ok[:, None, None], np.asarray(data[name]), 0).astype(np.uint8, copy=False)

    def expected_arrays(self) -> dict[str, tuple[tuple[int, ...], str | None]]:
        """Array path -> (shape, dtype or None) that :meth:`verify` checks."""
        out = super().expected_arrays()
        out["images"] = ((self.n_rows, self.resolution, self.resolution), "uint8")
        return out

    def read(self, rows: slice | np.ndarray) -> np.ndarray:
        """Images of ``rows`` as (n, R, R) uint8 (one contiguous slice reads shard by shard)."""
        return np.asarray(self.images[rows], dtype=np.uint8)

    def __repr__(self) -> str:
        return f"ImageCache('{self.path}', n_rows={self.n_rows}, resolution={self.resolution}, {self.mode})"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
