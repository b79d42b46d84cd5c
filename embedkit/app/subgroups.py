"""Subgroup metrics of a run: the store's sex / age / view / dataset metadata meets :mod:`probes.subgroups`.

:func:`add_subgroups` works on any finished run directory (probe, finetune or predict): it reads the run's test ids,
labels (``test_labels.csv``), scores (``predictions.csv``) and bootstrap plan, looks the rows up in the store, and
writes ``subgroups.csv`` plus a ``subgroups`` block in ``metrics.json`` (rewritten atomically). The study calls it on
every cell and ``probe`` after writing each run; ``finetune`` can call it the same way.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["add_subgroups", "store_axes", "write_subgroups"]


def store_axes(st, ids: Sequence[str], *, age_bands: Sequence[float]) -> dict[str, np.ndarray]:
    """Subgroup levels of the store rows ``ids`` (in that order) from the store's per-row metadata.

    Parameters
    ----------
    st : stores.EmbeddingStore
    ids : sequence (T,) of str
    age_bands : sequence of float
        Lower bounds of the age bands (``0, 40, 60, 80``).

    Returns
    -------
    dict axis -> ndarray (T,) of str
        ``sex``, ``age``, ``view``, ``dataset`` where the store has that metadata.
    """
    from probes.subgroups import subgroup_axes

    all_ids = np.asarray(st.ids).astype(str)
    pos = {i: r for r, i in enumerate(all_ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise DataError(f"{len(missing)} test ids (first: {missing[0]!r}) are not rows of store '{st.path}'; "
                        "pass the store the run was evaluated on.")
    rows = np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))
    names = set(st.metadata_names)

    def col(name: str):
        return np.asarray(st.metadata(name), dtype=object)[rows] if name in names else None

    return subgroup_axes(sex=col("sex"), age=col("age"), view=col("view"), dataset=col("dataset"), bands=age_bands)


def write_subgroups(path: Path, doc: dict) -> None:
    """``subgroups.csv`` (columns :data:`probes.subgroups.SUBGROUP_COLUMNS`) from a subgroup document."""
    from probes.report import write_csv
    from probes.subgroups import SUBGROUP_COLUMNS, subgroup_rows

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_csv(tmp, SUBGROUP_COLUMNS, subgroup_rows(doc))
    os.replace(tmp, path)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _plan_for(run_dir: Path, metrics: dict, test_ids: list[str]):
    """The run's bootstrap plan, if its file is still where the run says (absolute, or beside the run)."""
    from probes.bootstrap import ids_hash, load_plan

    where = (metrics.get("pairing") or {}).get("plan_path")
    if not where:
        return None
    for cand in (Path(where), run_dir.parent / ".embedkit-bootstrap" / Path(where).name):
        if cand.exists():
            plan = load_plan(cand)
            if plan.ids_sha256 == ids_hash(test_ids):
                return plan
    return None


def add_subgroups(run_dir: str | Path, *, store: str | Path | None = None,
                  age_bands: Sequence[float] = (0, 40, 60, 80), min_count: int = 10) -> dict | None:
    """Compute subgroup metrics of a finished run and write them beside it.

    Parameters
    ----------
    run_dir : str or Path
        A run directory with ``metrics.json``, ``test_labels.csv`` and ``predictions.csv``.
    store : str or Path, optional
        The embedding store or image cache holding the test rows' metadata (default: the store recorded in
        ``metrics.json``, else an image cache ``run_dir/images`` such as a finetune of images writes).
    age_bands : sequence of float
        Lower bounds of the age bands.
    min_count : int
        Fewer positives or negatives than this flags a (group, label) as small.

    Returns
    -------
    dict or None
        The ``subgroups`` block (also in ``metrics.json``); None when no store with metadata is known.

    Raises
    ------
    DataError
        The run's test ids are not in the store.
    """
    from probes.report import to_json
    from probes.subgroups import subgroup_metrics
    from stores import EmbeddingStore
    from stores.image_cache import ImageCache

    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.json"
    metrics = json.loads(mpath.read_text())
    store = store or (metrics.get("store") or {}).get("path") or (run_dir / "images")
    if not store or not Path(store).exists():
        logger.info("%s: no store with metadata known; subgroups skipped", run_dir)
        return None
    labels = list(metrics["labels"])
    test = _read_csv(run_dir / "test_labels.csv")
    ids = [r["id"] for r in test]
    y = np.array([[float(r[k]) if r[k] != "" else np.nan for k in labels] for r in test], dtype=np.float64)
    preds = {r["id"]: r for r in _read_csv(run_dir / "predictions.csv")}
    s = np.array([[float(preds[i][k]) for k in labels] for i in ids], dtype=np.float64)
    st = ImageCache.open(store) if ImageCache.is_cache(store) else EmbeddingStore.open(store, "r")
    try:
        axes = store_axes(st, ids, age_bands=age_bands)
    finally:
        st.close()
    plan = _plan_for(run_dir, metrics, ids)
    doc = subgroup_metrics(y.reshape(len(ids), len(labels)), s.reshape(len(ids), len(labels)), axes,
                           label_names=labels, plan=plan, min_count=min_count)
    doc["age_bands"] = [float(b) for b in age_bands]
    write_subgroups(run_dir / "subgroups.csv", doc)
    metrics["subgroups"] = doc
    tmp = mpath.with_name(f".metrics.json.tmp-{os.getpid()}")
    tmp.write_text(to_json(metrics) + "\n")
    os.replace(tmp, mpath)
    return doc
