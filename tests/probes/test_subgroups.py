"""Subgroup metrics: counts partition the test set, values match scikit-learn, CIs come from the run's plan."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from probes.bootstrap import bootstrap_indices
from probes.errors import ProbeError
from probes.evaluate import evaluate
from probes.subgroups import SUBGROUP_COLUMNS, age_band_labels, age_bands, subgroup_axes, subgroup_metrics, subgroup_rows

LABELS = ["a", "b"]


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < [0.3, 0.5]).astype(float)
    y[rng.random((n, 2)) < 0.05] = np.nan
    s = np.where(np.isnan(y), 0, y) * 0.8 + rng.normal(size=(n, 2))
    meta = {"sex": rng.choice(["M", "F", "female", ""], n), "age": rng.choice([25, 45.5, 70, 88, None, "x"], n),
            "view": rng.choice(["PA", "AP", "LL"], n), "dataset": np.array(["nih"] * n)}
    return y, s, meta


def test_counts_sum_to_test_set_and_auroc_matches_sklearn():
    y, s, meta = _data()
    axes = subgroup_axes(**meta)
    plan = bootstrap_indices(len(y), 200, seed=1)
    doc = subgroup_metrics(y, s, axes, label_names=LABELS, plan=plan)
    assert set(doc["axes"]) == {"sex", "age", "view", "dataset"}
    for axis, groups in doc["axes"].items():
        assert sum(g["n"] for g in groups.values()) == len(y), axis
        for label_idx, label in enumerate(LABELS):
            known = ~np.isnan(y[:, label_idx])
            assert sum(g["per_label"][label]["positives"] for g in groups.values()) == int((y[known, label_idx] == 1).sum())
    assert set(doc["axes"]["sex"]) == {"F", "M", "unknown"}
    assert set(doc["axes"]["age"]) == {"0-39", "40-59", "60-79", "80+", "unknown"}
    # one subgroup against scikit-learn on the same rows
    rows = axes["view"] == "AP"
    k = 1
    keep = rows & ~np.isnan(y[:, k])
    got = doc["axes"]["view"]["AP"]["per_label"]["b"]
    assert got["auroc"] == pytest.approx(roc_auc_score(y[keep, k], s[keep, k]), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(y[keep, k], s[keep, k]), abs=1e-7)
    assert got["auroc_ci_low"] < got["auroc"] < got["auroc_ci_high"]
    mean = doc["axes"]["view"]["AP"]["mean"]
    assert mean["auroc"] == pytest.approx(np.mean([g["auroc"] for g in doc["axes"]["view"]["AP"]["per_label"].values()]))


def test_single_group_equals_overall_evaluation():
    y, s, _ = _data(seed=2)
    plan = bootstrap_indices(len(y), 100, seed=0)
    doc = subgroup_metrics(y, s, {"dataset": np.array(["x"] * len(y))}, label_names=LABELS, plan=plan)
    ev = evaluate(y, s, plan=plan, label_names=LABELS).to_dict()
    for label in LABELS:
        got, want = doc["axes"]["dataset"]["x"]["per_label"][label], ev["per_label"][label]["auroc"]
        assert got["auroc"] == pytest.approx(want["value"])
        assert got["auroc_ci_low"] == pytest.approx(want["ci_low"]) and got["auroc_ci_high"] == pytest.approx(want["ci_high"])
    assert doc["axes"]["dataset"]["x"]["mean"]["auroc_ci_low"] == pytest.approx(ev["means"]["auroc"]["ci_low"])


def test_small_groups_flagged_and_single_class_is_nan():
    y = np.array([[1.0], [0.0], [1.0], [0.0]] * 10)
    s = np.linspace(0, 1, 40)[:, None]
    sex = np.array(["M"] * 36 + ["F"] * 4)
    view = np.array(["PA"] * 38 + ["AP"] * 2)
    y[38:] = 1.0  # the AP group has positives only
    doc = subgroup_metrics(y, s, subgroup_axes(sex=sex, view=view), label_names=["a"])
    assert doc["axes"]["sex"]["M"]["per_label"]["a"]["small"] is False
    assert doc["axes"]["sex"]["F"]["per_label"]["a"]["small"] is True and doc["axes"]["sex"]["F"]["mean"]["small"]
    assert np.isnan(doc["axes"]["view"]["AP"]["per_label"]["a"]["auroc"])
    rows = subgroup_rows(doc)
    assert all(set(r) <= set(SUBGROUP_COLUMNS) for r in rows)
    ap_row = next(r for r in rows if r["group"] == "AP" and r["label"] == "a")
    assert ap_row["auroc"] is None  # NaN -> blank cell
    assert sum(r["n"] for r in rows if r["axis"] == "sex" and r["label"] == "macro_avg") == 40


def test_age_bands_and_errors():
    assert age_band_labels((0, 40, 60, 80)) == ["0-39", "40-59", "60-79", "80+"]
    assert age_bands([0, 39.9, 40, 79, 80, 120, None, "?"]).tolist() == [
        "0-39", "0-39", "40-59", "60-79", "80+", "80+", "unknown", "unknown"]
    with pytest.raises(ProbeError, match="increasing"):
        age_bands([1], (40, 20))
    with pytest.raises(ProbeError, match="plan"):
        subgroup_metrics(np.zeros((3, 1)), np.zeros((3, 1)), {}, label_names=["a"], plan=bootstrap_indices(4, 2))
    assert subgroup_axes(sex=["", None]) == {}  # an all-unknown axis is left out
