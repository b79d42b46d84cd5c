"""Runs on arrays end to end: run_probe -> write_run -> load_run -> compare_runs (pairing enforced)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from probes.bootstrap import plan_for_test_set
from probes.errors import PairingError, ProbeError
from probes.report import PER_LABEL_COLUMNS, compare_runs, describe_provenance, load_run, write_run
from probes.runner import canonical_test_rows, run_probe
from probes.splits import patient_split
from probes.synthetic import make_multilabel_features

PROV = {"backbone": {"name": "dinov3-vitb16", "source": "transformers"}, "resolution": 512,
        "dataset": {"spec": "chexpert:/data/chexpert"}}


@pytest.fixture(scope="module")
def arrays():
    x, y = make_multilabel_features(1200, 32, 3, rank=6, signal=2.0, seed=1)
    ids = np.array([f"id{i:05d}" for i in range(1200)])[::-1].copy()  # store order != sorted order
    groups = np.repeat(np.arange(600), 2).astype(str)
    split = patient_split(1200, groups=groups, seed=0)
    return x, y, ids, groups, split


def _run(tmp_path, arrays, name, *, head="sklearn", noise=0.0, n_boot=100, boot_seed=0, split=None):
    x, y, ids, groups, s0 = arrays
    split = s0 if split is None else split
    xx = x + noise * np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    rows = canonical_test_rows(ids, split)
    plan, path = plan_for_test_set(tmp_path / ".embedkit-bootstrap", ids[rows], n_boot=n_boot, seed=boot_seed)
    res = run_probe(xx, y, split=split, ids=ids, head=head, label_names=["a", "b", "c"], groups=groups, plan=plan)
    meta = {"head": head, "features": "cls", "store": {"path": "x", "fingerprint": "f" * 64},
            "provenance": describe_provenance(PROV)}
    write_run(tmp_path / name, res, ids=ids, split=split, y=y, meta=meta, plan=plan, plan_path=path)
    return res


def test_describe_provenance_maps_to_reference_schema():
    assert describe_provenance(PROV) == {"dataset": "chexpert", "initialization": "dinov3", "backbone": "vitb",
                                         "image_size": 512, "backbone_name": "dinov3-vitb16"}
    conv = describe_provenance({"backbone": {"name": "dinov3-convnext-base"}, "resolution": 224})
    assert (conv["initialization"], conv["backbone"]) == ("dinov3", "convnext")
    assert describe_provenance({"backbone": {"name": "dinov2-vits14"}})["backbone"] == "vits"


def test_run_files_and_schema(tmp_path, arrays):
    res = _run(tmp_path, arrays, "run")
    d = tmp_path / "run"
    assert {p.name for p in d.iterdir()} == {"metrics.json", "per_label.csv", "predictions.csv", "head.safetensors",
                                             "roc.png", "bootstrap.npz"}
    m = json.loads((d / "metrics.json").read_text())
    assert m["mean_auroc"]["ci_low"] < m["mean_auroc"]["value"] < m["mean_auroc"]["ci_high"]
    assert m["pairing"]["test_ids_sha256"] and m["chosen"]["C"] > 0
    rows = list(csv.DictReader(open(d / "per_label.csv")))
    assert tuple(rows[0]) == PER_LABEL_COLUMNS and [r["label"] for r in rows] == ["a", "b", "c", "macro_avg"]
    assert rows[0]["initialization"] == "dinov3" and 50 < float(rows[-1]["AUROC_mean"]) <= 100
    # Test rows are evaluated in id order: predictions line up with the store's ids and splits.
    x, y, ids, _, split = arrays
    assert np.array_equal(ids[res.test_rows], np.sort(ids[split == "test"]))
    with open(d / "predictions.csv") as f:
        header = f.readline().strip().split(",")
    assert header == ["id", "split", "a", "b", "c"]
    from safetensors.numpy import load_file

    assert load_file(str(d / "head.safetensors"))["coef"].shape == (32, 3)
    with pytest.raises(ProbeError, match="already holds a finished run"):
        _run(tmp_path, arrays, "run")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_compare_pairs_runs_and_refuses_other_test_sets(tmp_path, arrays):
    _run(tmp_path, arrays, "good")
    _run(tmp_path, arrays, "noisy", noise=3.0)
    result = compare_runs([load_run(tmp_path / "noisy"), load_run(tmp_path / "good")],
                          reference=load_run(tmp_path / "good"))
    noisy = [r for r in result["runs"] if r["run"] == "noisy"][0]
    assert noisy["delta"] < 0 and noisy["delta_ci_high"] < 0 and noisy["p_ref_le_run"] < 0.05
    assert len(result["per_label"]) == 3
    # Same test set but another bootstrap seed: resamples differ -> refused.
    _run(tmp_path, arrays, "otherboot", boot_seed=1)
    with pytest.raises(PairingError, match="bootstrap"):
        compare_runs([load_run(tmp_path / "good"), load_run(tmp_path / "otherboot")])
    # Another test set -> refused.
    x, y, ids, groups, _ = arrays
    _run(tmp_path, arrays, "othersplit", split=patient_split(1200, groups=groups, seed=5))
    with pytest.raises(PairingError, match="different test sets"):
        compare_runs([load_run(tmp_path / "good"), load_run(tmp_path / "othersplit")])
