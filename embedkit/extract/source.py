"""Where the images come from: a manifest (CSV or ``ADAPTER:ROOT``) or an image cache written by ``cache-images``.

Either way the engine sees the same thing: ids, labels, split and metadata for the store, a dataset spec for the
provenance, and a factory of batch datasets for the reader.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import DataError, ExtractionError

logger = logging.getLogger(__name__)

#: Preset parameters that only ``to_tensor`` uses; a cache holds ``to_uint8`` output, so they may differ.
TENSOR_ONLY_PARAMS = ("mean", "std")


@dataclass
class Source:
    """Rows to extract, with everything the store copies alongside the features.

    Attributes
    ----------
    kind : {"manifest", "cache"}
    data : str
        The DATA argument as given.
    ids : ndarray (N,) of str
    labels : ndarray (N, K) float32 or None
    label_names : list of str
    split : ndarray (N,) of str or None
    metadata : dict of name -> sequence (N,)
    spec : dict
        Dataset block of the provenance.
    paths : ndarray (N,) of str or None
        Image files (manifest sources).
    cache_path : Path or None
        Image cache directory (cache sources).
    cache_provenance : dict or None
    """

    kind: str
    data: str
    ids: np.ndarray
    labels: np.ndarray | None
    label_names: list[str]
    split: np.ndarray | None
    metadata: dict[str, Any]
    spec: dict
    paths: np.ndarray | None = None
    cache_path: Path | None = None
    cache_provenance: dict | None = None

    @property
    def n_rows(self) -> int:
        """Number of rows N."""
        return len(self.ids)


def open_source(
    data: str,
    *,
    labels: str | Sequence[str] = "full",
    uncertain: str = "zeros",
    views: str = "frontal",
    split: str | None = None,
    limit: int | None = None,
) -> Source:
    """Resolve DATA into a :class:`Source`.

    Parameters
    ----------
    data : str
        Manifest CSV, ``ADAPTER:ROOT``, or an image cache directory.
    labels, uncertain, views, split
        Manifest policies (see :func:`embedkit.data.load_manifest`); fixed at cache time for an image cache.
    limit : int, optional
        Keep the first ``limit`` rows.

    Returns
    -------
    Source

    Raises
    ------
    DataError
        The manifest cannot be read, or ``limit`` < 1.
    ExtractionError
        Label/split policies were given for an image cache (they were fixed when it was written).
    """
    if limit is not None and int(limit) < 1:
        raise DataError(f"The 'limit' parameter of extract must be an int >= 1. Got {limit!r}.")
    if Path(data).is_dir() and _is_cache(data):
        if (labels, uncertain, views, split) != ("full", "zeros", "frontal", None):
            raise ExtractionError(
                f"Label, view and split policies were fixed when '{data}' was written; pass them to "
                "'embedkit cache-images' instead, or extract from the manifest."
            )
        return _cache_source(data, limit)
    from embedkit.data import load_manifest

    m = load_manifest(data, labels=labels, uncertain=uncertain, views=views, split=split)
    n = len(m.ids) if limit is None else min(len(m.ids), int(limit))
    meta = {k: list(v)[:n] for k, v in (m.metadata() or {}).items()}
    spec = dict(m.spec())
    if limit is not None:
        spec["limit"] = int(limit)
    return Source(
        kind="manifest",
        data=data,
        ids=np.asarray([str(i) for i in m.ids[:n]], dtype=object),
        labels=None if m.labels is None else np.asarray(m.labels, dtype=np.float32)[:n],
        label_names=list(m.label_names),
        split=None if m.split is None else np.asarray(m.split, dtype=object)[:n],
        metadata=meta,
        spec=spec,
        paths=np.asarray([str(p) for p in m.paths[:n]], dtype=object),
    )


def _is_cache(data: str) -> bool:
    """True if ``data`` names an image cache directory."""
    from stores.image_cache import ImageCache

    return ImageCache.is_cache(data)


def _cache_source(data: str, limit: int | None) -> Source:
    from stores.image_cache import ImageCache

    cache = ImageCache.open(data)
    n = cache.n_rows if limit is None else min(cache.n_rows, int(limit))
    if not cache.done_units()[: -(-n // cache.unit_rows)].all():
        raise ExtractionError(
            f"Image cache '{data}' is incomplete; re-run the 'embedkit cache-images' command that wrote it to finish it."
        )
    prov = cache.provenance
    spec = dict(prov.get("dataset") or {})
    spec.update(image_cache=str(Path(data).resolve()), image_cache_fingerprint=cache.fingerprint)
    if limit is not None:
        spec["limit"] = int(limit)
    meta = {}
    for name in cache.metadata_names:
        values = cache.metadata(name)
        meta[name] = list(values[:n]) if values is not None else None
    labels = cache.labels
    split = cache.split
    return Source(
        kind="cache",
        data=data,
        ids=cache.ids[:n],
        labels=None if labels is None else labels[:n],
        label_names=cache.label_names,
        split=None if split is None else split[:n],
        metadata={k: v for k, v in meta.items() if v is not None},
        spec=spec,
        cache_path=Path(data),
        cache_provenance=prov,
    )


def uint8_params(params: dict) -> dict:
    """Preset parameters that shape the uint8 image (everything but the to_tensor normalisation)."""
    return {k: v for k, v in params.items() if k not in TENSOR_ONLY_PARAMS}


def check_cache_matches(source: Source, *, resolution: int, preprocess: dict) -> None:
    """Refuse to feed a model from a cache written with another resolution or preprocessing.

    Raises
    ------
    ExtractionError
        One line naming both settings.
    """
    if source.kind != "cache" or source.cache_provenance is None:
        return
    prov = source.cache_provenance
    have_res = prov.get("resolution")
    have = uint8_params(prov.get("preprocess") or {})
    want = uint8_params(preprocess)
    if have_res != resolution:
        raise ExtractionError(
            f"Image cache '{source.data}' holds {have_res} px images; this extract asks --res {resolution}. "
            f"Use --res {have_res} or write a new cache."
        )
    if json.dumps(have, sort_keys=True, default=str) != json.dumps(want, sort_keys=True, default=str):
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise ExtractionError(
            f"Image cache '{source.data}' was written with other preprocessing ({', '.join(diff)}: "
            f"{[have.get(k) for k in diff]} vs {[want.get(k) for k in diff]}); match --preprocess/--resize or write a new cache."
        )
