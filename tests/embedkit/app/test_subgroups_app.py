"""add_subgroups on finished runs: a probe run's store, and an image cache (what a finetune of images holds)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from embedkit.app.probe import probe
from embedkit.app.subgroups import add_subgroups


def _cache_with_demographics(path, ids):
    """An image cache with the store's ids and sex / age / view per row (tiny blank images: metadata only)."""
    from stores.image_cache import ImageCache

    n = len(ids)
    cache = ImageCache.create(path, ids=ids, resolution=8, provenance={"dataset": {"spec": "test"}},
                              metadata={"sex": [("F", "M")[i % 2] for i in range(n)],
                                        "age": [float(20 + i % 70) for i in range(n)],
                                        "view": [("PA", "AP", "")[i % 3] for i in range(n)]}, unit_rows=n)
    cache.close()
    return path


def test_probe_without_subgroups_then_add_them_from_an_image_cache(tmp_path, store):
    res = probe(store, tmp_path / "run", head="sklearn", n_boot=30, subgroups=False)
    run = tmp_path / "run"
    assert "subgroups" not in res.runs[0] and not (run / "subgroups.csv").exists()
    from stores import EmbeddingStore

    with EmbeddingStore.open(store, "r") as st:
        ids = [str(i) for i in st.ids]
    cache = _cache_with_demographics(tmp_path / "images.zarr", ids)
    block = add_subgroups(run, store=cache, age_bands=(0, 50))
    m = json.loads((run / "metrics.json").read_text())
    assert m["subgroups"]["axes"].keys() == block["axes"].keys()
    assert m["subgroups"]["axes"]["sex"]["F"]["n"] == block["axes"]["sex"]["F"]["n"] > 0
    assert set(block["axes"]) == {"sex", "age", "view"} and block["age_bands"] == [0.0, 50.0]
    assert set(block["axes"]["age"]) == {"0-49", "50+"}
    assert set(block["axes"]["view"]) == {"PA", "AP", "unknown"}
    for axis, groups in block["axes"].items():
        assert sum(g["n"] for g in groups.values()) == m["n"]["test"], axis
    rows = list(csv.DictReader(open(run / "subgroups.csv")))
    assert len(rows) == sum(len(g) for g in block["axes"].values()) * 4  # 3 labels + macro_avg per group


def test_probe_refuses_bad_age_bands_before_training(tmp_path, store):
    from probes.errors import ProbeError

    with pytest.raises(ProbeError, match="age bands must be increasing"):
        probe(store, tmp_path / "bad", head="sklearn", n_boot=30, age_bands=(40, 10))
    assert not (tmp_path / "bad").exists()


def test_probe_run_has_subgroups_from_its_store_dataset_column(tmp_path, store):
    res = probe(store, tmp_path / "run", head="sklearn", n_boot=30)
    sub = res.runs[0]["subgroups"]
    assert list(sub["axes"]) == ["dataset"] and sub["axes"]["dataset"]["vindr"]["n"] == res.runs[0]["n"]["test"]
    assert np.isfinite(sub["axes"]["dataset"]["vindr"]["mean"]["auroc"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["subgroups"]["axes"].keys() == {"dataset"}
