"""Heads on synthetic features: linear-grid parity with scikit-learn, determinism, mlp / knn sanity, splits."""
from __future__ import annotations

import numpy as np
import pytest

from probes.errors import ProbeError
from probes.heads import make_probe
from probes.metrics import auroc, mean_over_labels
from probes.splits import carve_val, check_no_leak, patient_split, subsample_train
from probes.synthetic import make_multilabel_features


@pytest.fixture(scope="module")
def data():
    x, y = make_multilabel_features(5000, 64, 5, rank=8, signal=2.0, seed=0, missing=0.05)
    return (x[:3000], y[:3000]), (x[3000:4000], y[3000:4000]), (x[4000:], y[4000:])


def _test_auroc(probe, test):
    return mean_over_labels(auroc(test[1], probe.predict_proba(test[0])))


def test_linear_grid_matches_best_sklearn_logistic_regression(data):
    from probes.logistic import DEFAULT_CS

    train, val, test = data
    grid = make_probe("linear", seed=0).fit(*train, *val)
    assert grid.best_params_["n_heads"] >= 40
    # The reference: the best test AUROC over sklearn's whole C sweep (an upper bound for any selection rule).
    fits = [make_probe("sklearn", Cs=(c,)).fit(*train, *val) for c in DEFAULT_CS]
    sk_test = [_test_auroc(p, test) for p in fits]
    got = _test_auroc(grid, test)
    assert got >= max(sk_test) - 0.005, (got, max(sk_test))
    # sklearn's own selection on validation lands close to its best too.
    chosen = int(np.argmax([p.best_val_auroc_ for p in fits]))
    assert sk_test[chosen] >= max(sk_test) - 0.005


def test_linear_grid_is_deterministic_and_seed_sensitive(data):
    train, val, _ = data
    opts = dict(lrs=(1e-3, 1e-2), weight_decays=(0.0, 1e-3), max_epochs=3)
    a = make_probe("linear", seed=1, **opts).fit(*train, *val)
    b = make_probe("linear", seed=1, **opts).fit(*train, *val)
    c = make_probe("linear", seed=2, **opts).fit(*train, *val)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.best_params_ == b.best_params_
    assert not np.array_equal(a.coef_, c.coef_)
    assert len(a.results_) == 4 and {"lr", "weight_decay", "val_auroc", "best_epoch"} <= set(a.results_[0])


def test_grid_heads_train_as_if_alone(data):
    # Summed losses over independent heads: a head trained inside the grid equals the same head trained alone.
    train, val, _ = data
    together = make_probe("linear", lrs=(1e-3, 1e-2), weight_decays=(0.0,), max_epochs=2, patience=5).fit(*train, *val)
    alone = make_probe("linear", lrs=(1e-2,), weight_decays=(0.0,), max_epochs=2, patience=5).fit(*train, *val)
    r_together = [r for r in together.results_ if r["lr"] == 1e-2][0]
    assert r_together["val_auroc"] == pytest.approx(alone.results_[0]["val_auroc"], abs=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "knn"])
def test_mlp_and_knn_beat_chance(data, kind):
    train, val, test = data
    opts = {"max_epochs": 4, "lrs": (1e-3,), "batch_size": 256} if kind == "mlp" else {}
    p = make_probe(kind, **opts).fit(*train, *val)
    assert _test_auroc(p, test) > 0.75
    assert np.isfinite(p.best_val_auroc_) and p.best_params_
    probs = p.predict_proba(test[0])
    assert probs.shape == test[1].shape and (probs >= 0).all() and (probs <= 1).all()
    assert p.state_dict()


def test_knn_selects_k_on_validation(data):
    train, val, _ = data
    p = make_probe("knn", ks=(1, 50)).fit(*train, *val)
    assert p.k_ == 50 and [r["k"] for r in p.results_] == [1, 50]


def test_unknown_head_and_empty_val_are_refused(data):
    train, val, _ = data
    with pytest.raises(ProbeError, match="Unknown head"):
        make_probe("svm")
    with pytest.raises(ProbeError, match="no rows"):
        make_probe("sklearn").fit(*train, val[0][:0], val[1][:0])
    y1 = val[1].copy()
    y1[:] = 0.0
    with pytest.raises(ProbeError, match="validation"):
        make_probe("knn").fit(*train, val[0], y1)


def test_patient_split_and_subsampling_keep_patients_whole():
    groups = np.repeat([f"p{i}" for i in range(100)], 3)
    split = patient_split(300, groups=groups, seed=0)
    check_no_leak(split, groups)
    assert set(split) == {"train", "val", "test"}
    assert abs((split == "train").mean() - 0.7) < 0.05
    assert np.array_equal(split, patient_split(300, groups=groups, seed=0))
    keep = subsample_train(split, fraction=0.1, groups=groups, seed=0)
    kept_patients = np.unique(groups[keep])
    assert kept_patients.size == round(0.1 * np.unique(groups[split == "train"]).size)
    assert keep[np.isin(groups, kept_patients) & (split == "train")].all()
    assert not np.array_equal(keep, subsample_train(split, fraction=0.1, groups=groups, seed=1))
    carved = carve_val(np.where(split == "val", "train", split), groups=groups, seed=0)
    check_no_leak(carved, groups)
    assert (carved == "val").any()
    leaky = split.copy()
    leaky[0] = "test" if leaky[1] != "test" else "train"
    with pytest.raises(ProbeError, match="more than one split"):
        check_no_leak(leaky, groups)


@pytest.mark.gpu
def test_linear_grid_on_cuda_matches_cpu(data):
    train, val, test = data
    opts = dict(lrs=(1e-3, 1e-2), weight_decays=(0.0, 1e-2), max_epochs=3, seed=0)
    cpu = make_probe("linear", device="cpu", **opts).fit(*train, *val)
    gpu = make_probe("linear", device="cuda", **opts).fit(*train, *val)
    assert gpu.best_params_["lr"] == cpu.best_params_["lr"]
    assert abs(_test_auroc(gpu, test) - _test_auroc(cpu, test)) < 2e-3
    mlp = make_probe("mlp", device="cuda", max_epochs=3, lrs=(1e-3,)).fit(*train, *val)
    assert _test_auroc(mlp, test) > 0.75
    # float16 features go to the device once in float16 and are converted per batch.
    half = make_probe("linear", device="cuda", **opts).fit(train[0].astype(np.float16), train[1],
                                                           val[0].astype(np.float16), val[1])
    assert half.best_params_["lr"] == gpu.best_params_["lr"]
    assert abs(_test_auroc(half, (test[0].astype(np.float16), test[1])) - _test_auroc(gpu, test)) < 1e-3
