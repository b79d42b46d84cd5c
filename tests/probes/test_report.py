"""Runs on arrays end to end: run_probe -> write_run -> load_run -> compare_runs (pairing enforced)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from probes.bootstrap import plan_for_test_set
from probes.errors import PairingError, ProbeError
from probes.report import PER_LABEL_COLUMNS, compare_runs, display_names, load_run, to_json, write_run
from probes.runner import canonical_test_rows, run_probe
from probes.synthetic import make_multilabel_features

# Display names come from the caller (embedkit's application layer); probes never parse model or dataset names.
INFO = {"dataset": "chexpert", "adapter": "chexpert", "initialization": "dinov3", "backbone": "vitb",
        "image_size": 512}


def _split(groups, seed):
    """A patient-level split made by hand (probes receive splits; embedkit.data.splits makes them)."""
    uniq, codes = np.unique(groups, return_inverse=True)
    which = np.random.default_rng(seed).choice(np.array(["train", "train", "train", "train", "train", "train",
                                                         "train", "val", "test", "test"]), size=uniq.size)
    return which[codes]


@pytest.fixture(scope="module")
def arrays():
    x, y = make_multilabel_features(1200, 32, 3, rank=6, signal=2.0, seed=1)
    ids = np.array([f"id{i:05d}" for i in range(1200)])[::-1].copy()  # store order != sorted order
    groups = np.repeat(np.arange(600), 2).astype(str)
    split = _split(groups, 0)
    return x, y, ids, groups, split


def _run(tmp_path, arrays, name, *, head="sklearn", noise=0.0, n_boot=100, boot_seed=0, split=None, y=None,
         kind=None):
    x, y0, ids, groups, s0 = arrays
    y = y0 if y is None else y
    split = s0 if split is None else split
    xx = x + noise * np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    rows = canonical_test_rows(ids, split)
    plan, path = plan_for_test_set(tmp_path / ".embedkit-bootstrap", ids[rows], n_boot=n_boot, seed=boot_seed)
    res = run_probe(xx, y, split=split, ids=ids, head=head, label_names=["a", "b", "c"], groups=groups, plan=plan)
    meta = {"head": head, "features": "cls", "store": {"path": "x", "fingerprint": "f" * 64},
            "provenance": INFO, **({"kind": kind} if kind else {})}
    write_run(tmp_path / name, res, ids=ids, split=split, y=y, meta=meta, plan=plan, plan_path=path)
    return res


def test_run_files_and_schema(tmp_path, arrays):
    res = _run(tmp_path, arrays, "run")
    d = tmp_path / "run"
    assert {p.name for p in d.iterdir()} == {"metrics.json", "per_label.csv", "predictions.csv", "head.safetensors",
                                             "roc.png", "bootstrap.npz", "test_labels.csv"}
    m = json.loads((d / "metrics.json").read_text())
    assert m["mean_auroc"]["ci_low"] < m["mean_auroc"]["value"] < m["mean_auroc"]["ci_high"]
    assert m["pairing"]["test_ids_sha256"] and m["chosen"]["C"] > 0
    rows = list(csv.DictReader(open(d / "per_label.csv")))
    assert tuple(rows[0]) == PER_LABEL_COLUMNS and [r["label"] for r in rows] == ["a", "b", "c", "macro_avg"]
    assert rows[0]["initialization"] == "dinov3" and 50 < float(rows[-1]["AUROC_mean"]) <= 100
    # Point estimates and bootstrap means are separate, documented columns.
    assert float(rows[-1]["AUROC_point"]) == pytest.approx(100 * m["test"]["means"]["auroc"]["value"], abs=1e-3)
    assert float(rows[-1]["AUROC_mean"]) == pytest.approx(100 * m["test"]["means"]["auroc"]["boot_mean"], abs=1e-3)
    assert "bootstrap" in m["columns"]["per_label.csv"]["AUROC_mean"]
    assert "point estimate" in m["columns"]["per_label.csv"]["AUROC_point"]
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
    _run(tmp_path, arrays, "othersplit", split=_split(groups, 5))
    with pytest.raises(PairingError, match="different test sets"):
        compare_runs([load_run(tmp_path / "good"), load_run(tmp_path / "othersplit")])


def test_compare_refuses_same_ids_with_other_labels_naming_the_first_difference(tmp_path, arrays):
    x, y, ids, groups, split = arrays
    _run(tmp_path, arrays, "good")
    flipped = y.copy()
    row = canonical_test_rows(ids, split)[3]
    flipped[row, 1] = 1.0 - flipped[row, 1] if not np.isnan(flipped[row, 1]) else 1.0
    _run(tmp_path, arrays, "relabelled", y=flipped)
    with pytest.raises(PairingError, match=f"different test labels: label 'b' of test id '{ids[row]}'"):
        compare_runs([load_run(tmp_path / "good"), load_run(tmp_path / "relabelled")])


def test_reference_is_matched_by_resolved_path_and_leaf_names_get_parents(tmp_path, arrays):
    _run(tmp_path / "runA", arrays, "frac1-seed0")
    _run(tmp_path / "runB", arrays, "frac1-seed0", noise=3.0)
    a, b = tmp_path / "runA" / "frac1-seed0", tmp_path / "runB" / "frac1-seed0"
    other_spelling = tmp_path / "runB" / ".." / "runA" / "frac1-seed0"
    result = compare_runs([load_run(a), load_run(b)], reference=load_run(other_spelling))
    assert [r["run"] for r in result["runs"]] == ["runA/frac1-seed0", "runB/frac1-seed0"]
    assert result["reference"] == "runA/frac1-seed0"
    assert [r["is_reference"] for r in result["runs"]] == [True, False]
    assert result["runs"][1]["delta"] < 0 and all(r["run"] != result["reference"] for r in result["per_label"])
    assert display_names([a, b, tmp_path / "x"])[2] == "x"


def test_runs_of_another_kind_compare_and_json_is_strict(tmp_path, arrays):
    _run(tmp_path, arrays, "probe")
    _run(tmp_path, arrays, "ft", kind="finetune", noise=1.0)
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert m["schema"] == "embedkit.finetune/1" and m["kind"] == "finetune"
    result = compare_runs([load_run(tmp_path / "probe"), load_run(tmp_path / "ft")])
    assert result["runs"][1]["kind"] == "finetune" and result["runs"][1]["p_two_sided"] is not None
    assert to_json({"a": float("nan"), "b": [np.float32(np.inf)], "c": np.int64(2)}, indent=None) == \
        '{"a": null, "b": [null], "c": 2}'


def _hand_holm(p):
    """Holm's step-down by hand: sort, multiply the i-th smallest by (m - i), running max, cap at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, p[i] * (len(p) - rank)))
        out[i] = running
    return out


def test_compare_adjusts_run_and_label_p_values_as_two_holm_families(tmp_path, arrays):
    _run(tmp_path, arrays, "ref")
    _run(tmp_path, arrays, "n1", noise=0.6)
    _run(tmp_path, arrays, "n2", noise=1.2)
    _run(tmp_path, arrays, "n3", noise=3.0)
    runs = [load_run(tmp_path / n) for n in ("ref", "n1", "n2", "n3")]
    result = compare_runs(runs)
    assert result["adjust"] == "holm"
    others = [r for r in result["runs"] if not r["is_reference"]]
    raw = [r["p_two_sided"] for r in others]
    assert len(set(raw)) > 1 and max(raw) > 0  # a family whose adjustment is not trivial
    assert [r["p_adjusted"] for r in others] == pytest.approx(_hand_holm(raw))
    assert all(r["adjust"] == "holm" and r["n_boot"] == 100 for r in others)
    ref_row = result["runs"][0]
    assert ref_row["is_reference"] and ref_row["p_adjusted"] is None and ref_row["adjust"] is None
    # The per-label p-values (3 runs x 3 labels) are one family of nine.
    labels = result["per_label"]
    assert len(labels) == 9
    assert [r["p_adjusted"] for r in labels] == pytest.approx(_hand_holm([r["p_two_sided"] for r in labels]))
    assert all(a["p_adjusted"] >= a["p_two_sided"] for a in labels)
    # 'none' leaves them equal; 'bh' never exceeds Holm.
    plain = compare_runs(runs, adjust="none")
    assert all(r["p_adjusted"] == r["p_two_sided"] for r in plain["runs"][1:] + plain["per_label"])
    bh = compare_runs(runs, adjust="bh")
    assert all(b["p_adjusted"] <= h["p_adjusted"] + 1e-12 for b, h in zip(bh["per_label"], labels))
    with pytest.raises(ProbeError, match="'adjust' parameter of compare must be one of holm, bh, none"):
        compare_runs(runs, adjust="bonferroni")
