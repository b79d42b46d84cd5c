"""Layout helpers of the unit-ledger artefacts: argument validation, group creation, format checks (FORMAT.md)."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stores._provenance import fingerprint
from stores._zarrio import fast_pipeline
from stores.errors import FormatVersionError, StoreError

FORMAT_VERSION = 2
#: Versions this code opens (version 1: see FORMAT.md, "Version 1").
READABLE_VERSIONS = (1, 2)
DOC_KEY = "embedkit_store"
CACHE_KEY = "embedkit_image_cache"
#: One vocabulary of array names (version 2, both kinds).
NAMES = {"filled": "filled", "failures": "failures", "ledger": "ledger", "meta": "meta"}
#: The version-1 image cache named three of them differently.
_V1_CACHE_NAMES = {"filled": "filled", "failures": "failure", "ledger": "done", "meta": "metadata"}
DTYPES = ("float16", "float32")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_STATIC_CHUNK_ROWS = 65536  # write-once arrays (ids, split, metadata, labels): written by the creator only


def check_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        return 0, 1
    world_size = 1 if world_size is None else int(world_size)
    rank = 0 if rank is None else int(rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise StoreError(f"rank must lie in 0..world_size-1 and world_size >= 1. Got rank={rank}, "
                         f"world_size={world_size}.")
    return rank, world_size


def array_names(kind: str, version: int) -> dict[str, str]:
    """The ledger arrays' names of an artefact of ``kind`` written in format ``version``."""
    return dict(_V1_CACHE_NAMES if kind == "image_cache" and version == 1 else NAMES)


def check_doc(path: Path, attrs: Mapping, *, key: str = DOC_KEY, kind: str = "embeddings",
              noun: str = "embedding store", title: str = "Store") -> int:
    """Check the layout document under ``key`` and return its format version.

    Raises
    ------
    StoreError
        No such document, or another kind of artefact.
    FormatVersionError
        A version this code does not read.
    """
    doc = attrs.get(key)
    if not isinstance(doc, Mapping):
        raise StoreError(f"'{path}' is a zarr group but not an {noun} (no '{key}' attribute).")
    version = doc.get("format_version")
    if version not in READABLE_VERSIONS:
        raise FormatVersionError(
            f"{title} '{path}' has format_version {version!r}, but this embedkit reads format_version "
            f"{' or '.join(map(str, READABLE_VERSIONS))} only; upgrade embedkit (pip install -U embedkit) or "
            "write it again.")
    if doc.get("kind", kind) != kind:  # the version-1 image cache had no "kind"
        raise StoreError(f"'{path}' is a '{doc.get('kind')}' artefact, not an {noun}.")
    return int(version)


def as_str_array(values: Sequence, what: str) -> np.ndarray:
    arr = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
    return arr


def read_str(arr: zarr.Array, sl: slice | None = None) -> np.ndarray:
    data = arr[:] if sl is None else arr[sl]
    return np.asarray(data, dtype=object)


def validate_create(n: int, ids: np.ndarray, views: Mapping[str, int], dtype: str, labels: Any,
                     label_names: Sequence[str] | None, split: Sequence[str] | None,
                     metadata: Mapping[str, Sequence] | None) -> dict:
    if n < 1:
        raise StoreError("A store needs at least one row; 'ids' is empty.")
    if len(set(ids.tolist())) != n:
        raise StoreError("The 'ids' must be unique; found duplicates.")
    if not views:
        raise StoreError("The 'views' parameter must name at least one view, e.g. {'cls': 768}.")
    for v, d in views.items():
        if not _NAME_RE.match(v) or "+" in v:
            raise StoreError(f"View name {v!r} must use letters, digits, '_', '-', '.' only.")
        if int(d) < 1:
            raise StoreError(f"View '{v}' must have a dimension >= 1. Got {d}.")
    if dtype not in DTYPES:
        raise StoreError(f"The 'dtype' parameter must be one of {list(DTYPES)}. Got {dtype!r}.")
    return validate_columns(n, labels, label_names, split, metadata)


def validate_columns(n: int, labels: Any, label_names: Sequence[str] | None, split: Sequence[str] | None,
                     metadata: Mapping[str, Sequence] | None) -> dict:
    """Check the per-row columns every artefact may carry; return them normalised (``spec`` of :func:`build_columns`).

    Raises
    ------
    StoreError
        A column of the wrong length or shape, duplicate label names, a bad metadata name.
    """
    spec: dict = {"labels": None, "label_names": [], "split": None, "metadata": {}}
    if labels is not None:
        lab = np.asarray(labels, dtype=np.float32)
        if lab.ndim != 2 or lab.shape[0] != n:
            raise StoreError(f"'labels' must have shape ({n}, K). Got {lab.shape}.")
        names = list(label_names) if label_names is not None else [f"label_{k}" for k in range(lab.shape[1])]
        if len(names) != lab.shape[1] or len(set(names)) != len(names):
            raise StoreError(f"'label_names' must be {lab.shape[1]} unique names. Got {len(names)}.")
        spec["labels"], spec["label_names"] = lab, [str(x) for x in names]
    if split is not None:
        s = as_str_array(split, "split")
        if len(s) != n:
            raise StoreError(f"'split' must have {n} entries. Got {len(s)}.")
        spec["split"] = s
    for name, values in (metadata or {}).items():
        if not _NAME_RE.match(name):
            raise StoreError(f"Metadata name {name!r} must use letters, digits, '_', '-', '.' only.")
        values = list(values)
        if len(values) != n:
            raise StoreError(f"Metadata '{name}' must have {n} entries. Got {len(values)}.")
        spec["metadata"][name] = _metadata_array(values)
    return spec


def _metadata_array(values: list) -> np.ndarray:
    def numeric(v: Any) -> bool:
        return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))

    if all(numeric(v) for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float32)
    values = ["" if isinstance(v, float) and v != v else v for v in values]  # NaN = unknown, as None
    return as_str_array(values, "metadata")


def create_root(path: Path, key: str, doc: dict, prov: dict, ids: np.ndarray) -> zarr.Group:
    """Create the group (attrs: layout document, provenance, fingerprint) and its ``ids`` array."""
    fp = fingerprint(prov, ids)
    root = zarr.create_group(store=str(path), zarr_format=3, attributes={key: doc, "provenance": prov,
                                                                          "fingerprint": fp})
    n = len(ids)
    root.create_array("ids", shape=(n,), dtype=str, chunks=(min(n, _STATIC_CHUNK_ROWS),),
                      dimension_names=["row"])[:] = ids
    return root


def build_columns(root: zarr.Group, n: int, spec: dict) -> None:
    """Create the write-once per-row columns: ``labels`` + ``label``, ``split``, ``meta/<name>``."""
    static = min(n, _STATIC_CHUNK_ROWS)
    if spec["labels"] is not None:
        k = spec["labels"].shape[1]
        root.create_array("labels", shape=(n, k), dtype="float32", chunks=(static, max(k, 1)), fill_value=np.nan,
                          dimension_names=["row", "label"],
                          attributes={"label_names": spec["label_names"]})[:] = spec["labels"]
        root.create_array("label", shape=(k,), dtype=str, chunks=(max(k, 1),),
                          dimension_names=["label"])[:] = np.asarray(spec["label_names"], dtype=object)
    if spec["split"] is not None:
        root.create_array("split", shape=(n,), dtype=str, chunks=(static,), dimension_names=["row"])[:] = spec["split"]
    if spec["metadata"]:
        meta_group = root.create_group(NAMES["meta"])
        for name, values in spec["metadata"].items():
            kw = {"fill_value": np.nan} if values.dtype.kind == "f" else {}
            meta_group.create_array(name, shape=(n,), dtype=values.dtype if values.dtype.kind == "f" else str,
                                    chunks=(static,), dimension_names=["row"], **kw)[:] = values


def build_ledger(root: zarr.Group, n: int, unit_rows: int, n_units: int, unit_arrays: Sequence[str]) -> None:
    """Create ``filled``, ``failures``, ``checksums`` and, last, ``ledger`` (one chunk per unit each).

    The ledger is created last: an artefact whose ledger exists was completely created (see stores/_safe.py).
    """
    root.create_array(NAMES["filled"], shape=(n,), dtype="bool", chunks=(unit_rows,), fill_value=False,
                      compressors=None, dimension_names=["row"], config={"write_empty_chunks": False})
    root.create_array(NAMES["failures"], shape=(n,), dtype=str, chunks=(unit_rows,), fill_value="",
                      dimension_names=["row"], config={"write_empty_chunks": False})
    # Per unit and unit array: crc32c and size of the unit's chunk (shard) file as written, for verify().
    k = len(unit_arrays)
    root.create_array("checksums", shape=(n_units, k, 2), dtype="int64", chunks=(1, k, 2),
                      fill_value=-1, compressors=None, dimension_names=["unit", "array", "field"],
                      attributes={"arrays": list(unit_arrays), "fields": ["crc32c", "nbytes"],
                                  "of": "each unit array's chunk (shard) file of the unit, as written"},
                      config={"write_empty_chunks": False})
    root.create_array(NAMES["ledger"], shape=(n_units,), dtype="uint8", chunks=(1,), fill_value=0,
                      compressors=None, dimension_names=["unit"], config={"write_empty_chunks": False})


def build_group(path: Path, doc: dict, prov: dict, ids: np.ndarray, spec: dict) -> None:
    """Create every array of a new embedding store (called once, by the creator, under the writer lock)."""
    n = doc["n_rows"]
    root = create_root(path, DOC_KEY, doc, prov, ids)
    feats = root.create_group("features")
    definitions = prov.get("views") if isinstance(prov.get("views"), dict) else {}
    with fast_pipeline():
        for view, dim in doc["views"].items():
            meta = definitions.get(view)
            feats.create_array(
                view, shape=(n, int(dim)), dtype=doc["dtype"], chunks=(doc["rows_per_chunk"], int(dim)),
                shards=(doc["rows_per_shard"], int(dim)) if doc["rows_per_shard"] else None,
                compressors=None, filters=None, fill_value=np.nan, dimension_names=["row", f"feature_{view}"],
                config={"write_empty_chunks": True},
                attributes={"view": view, **({"definition": meta.get("definition")}
                                             if isinstance(meta, dict) and meta.get("definition") else {})})
    build_columns(root, n, spec)
    build_ledger(root, n, doc["unit_rows"], doc["n_units"], [f"features/{v}" for v in doc["views"]])
