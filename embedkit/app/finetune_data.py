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
    split_info: dict
    units: np.ndarray
    patients: np.ndarray | None
    images: Any
    image_rows: np.ndarray
    spec: dict
    store: dict | None
    store_provenance: dict | None
    datasets: np.ndarray | None = None  # per-row source dataset (display names, subgroups)
    meta_path: str | None = None  # the embedding store or image cache holding the rows' sex/age/view metadata
    source_split: np.ndarray | None = None  # the data's own split column (None: it has none; ``split`` was made)


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


def _path_or_none(p) -> str | None:
    return None if p is None else str(p)


def is_store(data: str) -> bool:
    p = Path(data)
    if not p.is_dir() or not (p / "zarr.json").exists():
        return False
    from stores.image_cache import ImageCache

    return not ImageCache.is_cache(p)


def resolve_split(split, *, ids, patients, studies, seed: int, split_unit: str | None, allow_leak: bool,
                  source: str, say: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray, dict]:
    """The probe's split rule, by the probe's own code (:mod:`embedkit.app.probe_data`): the data's split, val
    carved from 10% of the training units when it has none, a unit-level 0.7/0.1/0.2 split when there is no split
    at all (refused without patient ids unless ``split_unit`` accepts a coarser unit); always leakage-audited.

    Returns
    -------
    (split (N,) str, unit key per row (N,) str, metrics.json's ``split`` block)
    """
    from types import SimpleNamespace

    from embedkit.app.probe_data import resolve_split

    stored = None if split is None else np.asarray(split).astype(str)
    # resolve_split reads only ``.split`` of the store it is given; a manifest or image cache offers the same.
    split, units, info = resolve_split(SimpleNamespace(split=stored), source, ids=ids, patients=patients,
                                        studies=studies, seed=seed, split_unit=split_unit,  # type: ignore[arg-type]
                                        allow_leak=allow_leak, say=say)
    return np.asarray(split).astype(str), np.asarray(units).astype(str), info


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
                    split_seed: int, log: Callable[[str], None], split_unit: str | None = None,
                    allow_leak: bool = False, require_labels: bool = True) -> TrainData:
    """Resolve DATA (store, image cache, manifest or ``ADAPTER:ROOT``) into :class:`TrainData`.

    The split is settled by :func:`resolve_split` (the probe's code), so a finetune and a probe of one store have
    the same train/val/test rows and the same bootstrap units.

    ``require_labels=False`` (scoring new images) accepts data without labels: ``y`` is then (N, 0) and
    ``label_names`` empty.

    Raises
    ------
    DataError
        No labels (unless ``require_labels`` is False), store ids missing from its images, an unreadable source, or no patient ids where a split must
        be made or carved (without ``split_unit``).
    LeakageError
        A patient or study in two splits (without ``allow_leak``).
    """
    # Ids read as the probe reads them: str, '' for missing, None when the data has none at all.
    from embedkit.app.probe_data import present_ids as _ids

    store_info = store_prov = None
    if is_store(data):
        from stores import EmbeddingStore

        with EmbeddingStore.open(data, "r") as st:
            ids = np.asarray(st.ids).astype(str)
            y = None if st.labels is None else np.asarray(st.labels, dtype=np.float32)
            names, split = list(st.label_names), st.split
            patients, studies = _ids(st.metadata("patient_id")), _ids(st.metadata("study_id"))
            datasets = _ids(st.metadata("dataset"))
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
        patients, studies = _ids(src.metadata.get("patient_id")), _ids(src.metadata.get("study_id"))
        datasets = _ids(src.metadata.get("dataset"))
        filled = np.asarray(ImageCache.open(src.cache_path).filled, dtype=bool)
        image_rows = np.arange(len(ids), dtype=np.int64)
        spec = dict(src.spec)
    if y is None or not names:
        if require_labels:
            raise DataError(f"'{data}' has no labels; finetuning needs label columns.")
        y, names = np.zeros((len(ids), 0), dtype=np.float32), []
    source_split = None if split is None else np.asarray(split).astype(str)
    split, keys, split_info = resolve_split(split, ids=ids, patients=patients, studies=studies, seed=split_seed,
                                            split_unit=split_unit, allow_leak=allow_leak, source=str(data), say=log)
    split = np.where(filled, split, "")
    if limit is not None and store_info is not None:
        split = np.where(np.arange(len(ids)) < int(limit), split, "")
    images = _images_of(src)
    if not np.array_equal(image_rows, np.arange(len(ids))):
        images = RowMapped(images, image_rows)
    return TrainData(ids=ids, y=np.asarray(y, dtype=np.float32), label_names=names, split=split,
                     split_info=split_info, units=keys, patients=patients, images=images,
                     image_rows=image_rows, spec=spec, store=store_info, store_provenance=store_prov,
                     datasets=datasets, source_split=source_split,
                     meta_path=store_info["path"] if store_info else _path_or_none(src.cache_path))
