"""Metric parity with scikit-learn (ties, unknown labels), threshold metrics, resampled metrics."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from probes.evaluate import evaluate
from probes.metrics import (
    SingleClassWarning,
    auroc,
    auroc_many,
    average_precision,
    mean_over_labels,
    resampled_metrics,
    roc_curve,
    threshold_metrics,
    youden_thresholds,
)


def _random_problem(rng, n, k, *, ties: bool, missing: float = 0.1):
    y = (rng.random((n, k)) < rng.uniform(0.1, 0.6)).astype(float)
    s = rng.integers(0, 4, (n, k)).astype(float) if ties else rng.normal(size=(n, k)) + y
    y[rng.random((n, k)) < missing] = np.nan
    return y, s


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_ap_match_sklearn_with_ties_and_unknowns(ties):
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        y, s = _random_problem(rng, int(rng.integers(3, 80)), 3, ties=ties)
        a, p = auroc(y, s), average_precision(y, s)
        for k in range(3):
            m = ~np.isnan(y[:, k])
            if np.unique(y[m, k]).size < 2:
                assert np.isnan(a[k]) and np.isnan(p[k])
                continue
            assert a[k] == pytest.approx(skm.roc_auc_score(y[m, k], s[m, k]), abs=1e-12)
            assert p[k] == pytest.approx(skm.average_precision_score(y[m, k], s[m, k]), abs=1e-12)
            checked += 1
    assert checked > 300


def test_one_dimensional_input_and_docstring_example():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert average_precision([0, 1, 1], [0.5, 0.5, 0.5]) == pytest.approx(2 / 3)


def test_youden_threshold_maximises_j_on_sklearn_roc():
    rng = np.random.default_rng(1)
    for ties in (False, True):
        y, s = _random_problem(rng, 200, 4, ties=ties, missing=0.0)
        thr = youden_thresholds(y, s)
        for k in range(4):
            fpr, tpr, _ = skm.roc_curve(y[:, k], s[:, k])
            pred = s[:, k] >= thr[k]
            j = pred[y[:, k] == 1].mean() - pred[y[:, k] == 0].mean()
            assert j == pytest.approx(np.max(tpr - fpr), abs=1e-12)


def test_threshold_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    y, s = _random_problem(rng, 300, 3, ties=False, missing=0.0)
    thr = np.array([0.0, 0.5, 1.0])
    got = threshold_metrics(y, s, thr)
    for k in range(3):
        pred = (s[:, k] >= thr[k]).astype(int)
        yt = y[:, k]
        assert got["accuracy"][k] == pytest.approx(skm.accuracy_score(yt, pred))
        assert got["balanced_accuracy"][k] == pytest.approx(skm.balanced_accuracy_score(yt, pred))
        assert got["sensitivity"][k] == pytest.approx(skm.recall_score(yt, pred))
        assert got["specificity"][k] == pytest.approx(skm.recall_score(yt, pred, pos_label=0))
        assert got["precision"][k] == pytest.approx(skm.precision_score(yt, pred, zero_division=0))
        assert got["f1"][k] == pytest.approx(skm.f1_score(yt, pred, zero_division=0))


def test_resampled_metrics_equal_metrics_of_the_resampled_rows():
    rng = np.random.default_rng(3)
    y, s = _random_problem(rng, 120, 3, ties=True)
    idx = rng.integers(0, 120, (6, 120))
    w = np.stack([np.bincount(r, minlength=120) for r in idx])
    thr = np.array([1.0, 2.0, 0.5])
    got = resampled_metrics(y, s, w, thresholds=thr, chunk_elems=250)  # several chunks
    yd = resampled_metrics(y, s, w, threshold_mode="youden-test")
    for b in range(6):
        yb, sb = y[idx[b]], s[idx[b]]
        np.testing.assert_allclose(got["auroc"][b], auroc(yb, sb), atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(got["ap"][b], average_precision(yb, sb), atol=1e-6, equal_nan=True)
        for name, v in threshold_metrics(yb, sb, thr).items():
            np.testing.assert_allclose(got[name][b], v, atol=1e-9, equal_nan=True)
        for name, v in threshold_metrics(yb, sb, youden_thresholds(yb, sb)).items():
            np.testing.assert_allclose(yd[name][b], v, atol=1e-9, equal_nan=True)


def test_auroc_many_matches_auroc_per_head():
    rng = np.random.default_rng(4)
    y = (rng.random((300, 3)) < 0.3).astype(float)
    s = np.round(rng.normal(size=(300, 5, 3)) + y[:, None, :], 1)
    y[rng.random((300, 3)) < 0.1] = np.nan
    many = auroc_many(y, s)
    for h in range(5):
        np.testing.assert_allclose(many[h], auroc(y, s[:, h]), atol=1e-12)


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(5)
    y, s = _random_problem(rng, 100, 1, ties=True, missing=0.0)
    fpr, tpr, thr = roc_curve(y[:, 0], s[:, 0])
    f2, t2, _ = skm.roc_curve(y[:, 0], s[:, 0], drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)


def test_single_class_label_is_nan_excluded_from_means_and_warned():
    rng = np.random.default_rng(6)
    y = (rng.random((200, 3)) < 0.4).astype(float)
    s = y + rng.normal(size=(200, 3))
    y[:, 1] = 0.0  # no positive in the test set
    with pytest.warns(SingleClassWarning, match="'b' has one class in the test set"):
        ev = evaluate(y, s, label_names=["a", "b", "c"])
    assert np.isnan(ev.point["auroc"][1])
    assert ev.mean_interval("auroc")[0] == pytest.approx(np.mean(ev.point["auroc"][[0, 2]]))
    assert np.isnan(mean_over_labels(np.array([np.nan, np.nan])))


def test_rare_label_missing_from_some_resamples_is_skipped_there():
    from probes.bootstrap import bootstrap_indices

    rng = np.random.default_rng(7)
    y = (rng.random((100, 2)) < 0.4).astype(float)
    y[:, 1] = 0.0
    y[0, 1] = 1.0  # one positive: absent from ~37% of resamples
    s = y + rng.normal(size=(100, 2))
    with pytest.warns(SingleClassWarning, match="resamples"):
        ev = evaluate(y, s, plan=bootstrap_indices(100, 200, seed=0))
    nan = np.isnan(ev.boot["auroc"][:, 1])
    assert 0.2 < nan.mean() < 0.55
    # Means per resample use the labels available in that resample.
    np.testing.assert_allclose(ev.mean_boot()[nan], ev.boot["auroc"][nan, 0])


def test_bad_inputs_raise_typed_errors():
    from probes.errors import ProbeError

    with pytest.raises(ProbeError):
        auroc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ProbeError, match="NaN"):
        auroc([0, 1], [np.nan, 0.1])
    with pytest.raises(ProbeError, match="0, 1 or NaN"):
        auroc([0, 2], [0.2, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(auroc([1, 1], [0.2, 0.1]))


# ------------------------------------------------------------------------- the reference study's strict '>' rule
def _reference_youden_rates(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """Prediction_vitmed.bootstrapper for one label, statement by statement (epsilon-free rates)."""
    fpr, tpr, thresholds = skm.roc_curve(y, s, pos_label=1)
    optimal_threshold = thresholds[np.argmax(tpr - fpr)]
    pred = (s > optimal_threshold).astype(np.int32)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    return {"sensitivity": sens, "specificity": spec, "accuracy": (tp + tn) / (tp + tn + fp + fn),
            "balanced_accuracy": (sens + spec) / 2, "precision": tp / (tp + fp) if tp + fp else 0.0,
            "f1": 2 * tp / (2 * tp + fn + fp)}


def test_strict_rule_by_hand():
    # Scores 0.9 (pos), 0.7 (pos), 0.7 (neg), 0.4 (neg), 0.2 (neg); P = 2, N = 3. sklearn's ROC points at
    # thresholds [inf, .9, .7, .4, .2] have J = 0, 1/2, 2/3, 1/3, 0 -> the threshold is 0.7 under both rules.
    y = np.array([1, 1, 0, 0, 0], dtype=float)[:, None]
    s = np.array([0.9, 0.7, 0.7, 0.4, 0.2])[:, None]
    assert youden_thresholds(y, s, rule="gt")[0] == 0.7 and youden_thresholds(y, s)[0] == 0.7
    # '>=' predicts rows 0-2 positive: TP 2, FP 1. '>' leaves out the tied 0.7 rows: TP 1, FP 0.
    ge = threshold_metrics(y, s, [0.7])
    gt = threshold_metrics(y, s, [0.7], rule="gt")
    assert ge["sensitivity"][0] == 1.0 and ge["specificity"][0] == pytest.approx(2 / 3)
    assert gt["sensitivity"][0] == 0.5 and gt["specificity"][0] == 1.0 and gt["precision"][0] == 1.0
    w = np.ones((1, 5))
    strict = resampled_metrics(y, s, w, threshold_mode="youden-test", rule="gt")
    default = resampled_metrics(y, s, w, threshold_mode="youden-test")
    assert strict["sensitivity"][0, 0] == 0.5 and strict["precision"][0, 0] == 1.0
    assert default["sensitivity"][0, 0] == 1.0 and default["precision"][0, 0] == pytest.approx(2 / 3)


def test_strict_rule_picks_inf_when_no_threshold_beats_chance():
    # Every J <= 0: sklearn's argmax is the (0, 0) point at threshold inf; nothing is predicted positive.
    y = np.array([[0.0], [1.0], [0.0], [1.0]])
    s = np.array([[0.9], [0.1], [0.8], [0.2]])
    assert youden_thresholds(y, s, rule="gt")[0] == np.inf
    out = resampled_metrics(y, s, np.ones((1, 4)), threshold_mode="youden-test", rule="gt")
    assert out["sensitivity"][0, 0] == 0.0 and out["specificity"][0, 0] == 1.0


@pytest.mark.parametrize("ties", [False, True])
def test_strict_youden_on_resamples_equals_the_reference_code(ties):
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(20):
        n = int(rng.integers(8, 60))
        y, s = _random_problem(rng, n, 3, ties=ties, missing=0.0)
        idx = rng.integers(0, n, (5, n))
        w = np.stack([np.bincount(r, minlength=n) for r in idx])
        got = resampled_metrics(y, s, w, threshold_mode="youden-test", rule="gt")
        for b in range(5):
            for k in range(3):
                yb, sb = y[idx[b], k], s[idx[b], k]
                if np.unique(yb).size < 2:
                    continue
                for name, v in _reference_youden_rates(yb, sb).items():
                    assert got[name][b, k] == pytest.approx(v, abs=1e-12), (name, b, k)
                checked += 1
    assert checked > 200


def test_unknown_threshold_rule_is_refused():
    from probes.errors import ProbeError

    with pytest.raises(ProbeError, match="'ge'.*'gt'"):
        youden_thresholds([[0.0], [1.0]], [[0.1], [0.9]], rule=">")
