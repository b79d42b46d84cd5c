"""Where finetuning's images, labels and splits come from: an embedding store (its provenance names the images;
its ids, labels and split are the probe's), an image cache, or a manifest / ``ADAPTER:ROOT`` (cached once into the
run directory, resumably, so every epoch reads uint8 arrays instead of decoding files)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from embedkit.errors import DataError

logger = logging.getLogger(__name__)

#: Images of a cache smaller than this are read into memory once (random batch reads from RAM).
IN_MEMORY_BYTES = 2 << 30


@dataclass
class TrainData:
    """Rows for finetuning; ``split`` '' marks rows that take no part (unfilled store rows, rows past --limit)."""

    ids: np.ndarray
    y: np.ndarray
    label_names: list[str]
    split: np.ndarray
    split_source: str
    split_unit: str
    units: np.ndarray
    patients: np.ndarray | None
    images: Any
    image_rows: np.ndarray
    spec: dict
    store: dict | None
    store_provenance: dict | None


class CachedImages:
    """An image cache's (N, R, R) uint8 array, opened lazily (picklable into spawned loader workers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._arr = None

    def _array(self):
        if self._arr is None:
            from stores.image_cache import ImageCache

            self._arr = ImageCache.open(self.path).images
        return self._arr

    @property
    def oindex(self):
        return self._array().oindex

    def __len__(self) -> int:
        return int(self._array().shape[0])

    def __getstate__(self) -> dict:
        return {"path": self.path, "_arr": None}


class RowMapped:
    """``images[i]`` = ``base[rows[i]]``: a run's rows mapped onto the cache rows holding their images."""

    def __init__(self, base, rows: np.ndarray) -> None:
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)

    def __getitem__(self, idx):
        from probes.finetune import take_images

        return take_images(self.base, self.rows[np.asarray(idx, dtype=np.int64)])

    def __len__(self) -> int:
        return len(self.rows)


def is_store(data: str) -> bool:
    p = Path(data)
    if not p.is_dir() or not (p / "zarr.json").exists():
        return False
    from stores.image_cache import ImageCache

    return not ImageCache.is_cache(p)


def resolve_split(split, *, ids, patients, studies, seed: int) -> tuple[np.ndarray, str, str, np.ndarray]:
    """The split the probe uses: the data's own, val carved from 10% of train units when missing, or a made
    unit-level 0.7/0.1/0.2 split when there is none. Returns (split, source, unit, unit keys)."""
    from embedkit.data.splits import carve_val, patient_split, split_units

    keys, unit = split_units(patients, studies, ids)
    keys = np.asarray(keys).astype(str)
    if split is None or not np.isin(np.asarray(split).astype(str), ("train", "test")).any():
        return (np.asarray(patient_split(keys, seed=seed, fractions=(0.7, 0.1, 0.2))).astype(str),
                f"made: {unit}-level, seed {seed}, fractions 0.7/0.1/0.2", unit, keys)
    split = np.asarray(split).astype(str)
    if not (split == "val").any():
        return (np.asarray(carve_val(split, keys, seed=seed, fraction=0.1)).astype(str),
                f"data; val carved from 10% of train {unit}s (seed {seed})", unit, keys)
    return split, "data", unit, keys


def _meta(reader, name: str):
    v = reader.metadata(name)
    return None if v is None else np.asarray(v).astype(object)


def _open_cache_for(path: Path, *, res: int, preprocess: dict):
    from embedkit.extract.source import check_cache_matches, open_source

    src = open_source(str(path))
    check_cache_matches(src, resolution=res, preprocess=preprocess)
    return src


def _images_of(src) -> Any:
    from stores.image_cache import ImageCache

    cache = ImageCache.open(src.cache_path)
    n, r = cache.n_rows, cache.provenance.get("resolution", 0)
    if n * int(r) ** 2 <= IN_MEMORY_BYTES:
        return np.asarray(cache.images[:], dtype=np.uint8)
    return CachedImages(src.cache_path)


def _build_cache(data: str, cache_dir: Path, *, res: int, preset: str, limit, policies: dict, log) -> Any:
    from embedkit.extract.run import run_cache_images

    log(f"caching the images of {data} at {res} px ({preset} preset) into {cache_dir} (once; resumable)")
    run_cache_images(data, cache_dir, res=res, preprocess=preset, limit=limit, **policies)  # type: ignore[arg-type]
    from embedkit.extract.source import open_source

    return open_source(str(cache_dir))


def load_train_data(data: str, *, res: int, preset: str, preprocess: dict, run_dir: Path, limit: int | None,
                    split_seed: int, log: Callable[[str], None]) -> TrainData:
    """Resolve DATA (store, image cache, manifest or ``ADAPTER:ROOT``) into :class:`TrainData`.

    Raises
    ------
    DataError
        No labels, store ids missing from its images, or an unreadable source.
    """
    store_info = store_prov = None
    if is_store(data):
        from stores import EmbeddingStore

        with EmbeddingStore.open(data, "r") as st:
            ids = np.asarray(st.ids).astype(str)
            y = None if st.labels is None else np.asarray(st.labels, dtype=np.float32)
            names, split = list(st.label_names), st.split
            patients, studies = _meta(st, "patient_id"), _meta(st, "study_id")
            filled = np.asarray(st.filled, dtype=bool)
            store_prov = st.provenance
            store_info = {"path": str(Path(data).resolve()), "fingerprint": st.fingerprint, "n_rows": st.n_rows}
        ds = dict(store_prov.get("dataset") or {})
        cache = ds.get("image_cache")
        if cache and Path(cache).is_dir():
            try:
                src = _open_cache_for(Path(cache), res=res, preprocess=preprocess)
            except Exception as exc:  # noqa: BLE001 - another resolution/preset: rebuild from the manifest below
                log(f"the store's image cache does not fit this run ({str(exc).splitlines()[0]}); re-caching")
                src = None
        else:
            src = None
        if src is None:
            source = ds.get("data") or ds.get("spec")
            if not source:
                raise DataError(f"Store '{data}' does not record where its images are (no dataset.data in its "
                                "provenance); pass the manifest or image cache as --data instead.")
            policies = {k: ds[k] for k in ("labels", "uncertain", "views") if ds.get(k) is not None}
            src = _build_cache(str(source), run_dir / "images", res=res, preset=preset, limit=ds.get("limit"),
                               policies=policies, log=log)
        where = {str(i): k for k, i in enumerate(np.asarray(src.ids).astype(str))}
        missing = [i for i in ids[filled] if i not in where]
        if missing:
            raise DataError(f"{len(missing)} store rows (e.g. {missing[0]!r}) are not in the images at "
                            f"'{src.data}'; the store and its source disagree.")
        image_rows = np.array([where.get(i, 0) for i in ids], dtype=np.int64)
        spec = dict(ds, store=store_info["path"])
    else:
        from stores.image_cache import ImageCache

        if Path(data).is_dir() and ImageCache.is_cache(data):
            src = _open_cache_for(Path(data), res=res, preprocess=preprocess)
        else:
            src = _build_cache(data, run_dir / "images", res=res, preset=preset, limit=limit, policies={}, log=log)
        ids = np.asarray(src.ids).astype(str)
        y, names, split = src.labels, list(src.label_names), src.split
        patients = None if "patient_id" not in src.metadata else np.asarray(src.metadata["patient_id"], object)
        studies = None if "study_id" not in src.metadata else np.asarray(src.metadata["study_id"], object)
        filled = np.asarray(ImageCache.open(src.cache_path).filled, dtype=bool)
        image_rows = np.arange(len(ids), dtype=np.int64)
        spec = dict(src.spec)
    if y is None or not names:
        raise DataError(f"'{data}' has no labels; finetuning needs label columns.")
    split, source, unit, keys = resolve_split(split, ids=ids, patients=patients, studies=studies, seed=split_seed)
    split = np.where(filled, split, "")
    if limit is not None and store_info is not None:
        split = np.where(np.arange(len(ids)) < int(limit), split, "")
    images = _images_of(src)
    if not np.array_equal(image_rows, np.arange(len(ids))):
        images = RowMapped(images, image_rows)
    return TrainData(ids=ids, y=np.asarray(y, dtype=np.float32), label_names=names, split=split,
                     split_source=source, split_unit=unit, units=keys,
                     patients=None if patients is None else np.asarray(patients).astype(str), images=images,
                     image_rows=image_rows, spec=spec, store=store_info, store_provenance=store_prov)
