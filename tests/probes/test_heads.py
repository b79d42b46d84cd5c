"""Heads on synthetic features: linear-grid parity with scikit-learn, determinism, mlp / knn sanity, splits."""
from __future__ import annotations

import numpy as np
import pytest

from probes.errors import ProbeError
from probes.heads import make_probe
from probes.knn import KNNProbe
from probes.logistic import LogisticSweepProbe
from probes.metrics import auroc, mean_over_labels
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


# --------------------------------------------------------------------------- head options (probe --lr/...)
@pytest.fixture(scope="module")
def small():
    x, y = make_multilabel_features(400, 16, 3, rank=4, signal=2.0, seed=1, missing=0.0)
    return (x[:239], y[:239]), (x[300:], y[300:])  # 239 training rows: not a multiple of 30


def test_mlp_takes_the_cli_head_options_and_selects_on_val_loss(small):
    train, val = small
    p = make_probe("mlp", seed=0, lr=1e-3, batch_size=30, epochs=6, drop_last=True, select="val_loss",
                   patience=None).fit(*train, *val)
    # Fixed budget: every epoch ran; the kept epoch is the one of lowest validation loss.
    assert [h["epoch"] for h in p.history_] == [1, 2, 3, 4, 5, 6]
    losses = [h["val_loss"] for h in p.history_]
    assert p.best_params_["epoch"] == int(np.argmin(losses)) + 1
    assert p.best_val_loss_ == pytest.approx(min(losses))
    assert p.best_params_["lr"] == 1e-3 and p.best_params_["batch_size"] == 30
    assert p.best_params_["select"] == "val_loss" and p.best_params_["drop_last"] is True
    # The returned model is that epoch's: its validation loss is the recorded one.
    import torch

    from probes.mlp import masked_bce

    logits = torch.from_numpy(p.decision_function(val[0]))
    loss = float(masked_bce(logits, torch.from_numpy(val[1].astype(np.float32)), torch.from_numpy(p.pos_weight_)))
    assert loss == pytest.approx(p.best_val_loss_, rel=1e-5)


def test_mlp_val_auroc_selection_is_the_default(small):
    train, val = small
    p = make_probe("mlp", seed=0, lr=1e-3, epochs=4, patience=None).fit(*train, *val)
    scores = [h["val_auroc"] for h in p.history_]
    assert p.best_params_["select"] == "val_auroc" and p.best_val_auroc_ == pytest.approx(max(scores))


def test_mlp_drop_last_skips_the_incomplete_batch(small):
    train, val = small
    opts = dict(seed=0, lr=1e-3, batch_size=30, epochs=2, patience=None)

    def weights(x, y, drop_last):
        p = make_probe("mlp", drop_last=drop_last, **opts).fit(x, y, *val)
        return p.state_dict()["5.weight"]

    # 239 rows: the last batch has 29 rows, so dropping it changes the training...
    assert not np.array_equal(weights(*train, True), weights(*train, False))
    # ...while with 240 rows there is no incomplete batch and both are identical.
    x240, y240 = np.concatenate([train[0], val[0][:1]]), np.concatenate([train[1], val[1][:1]])
    np.testing.assert_array_equal(weights(x240, y240, True), weights(x240, y240, False))
    with pytest.raises(ProbeError, match="drop_last.*batch"):
        make_probe("mlp", drop_last=True, batch_size=500).fit(*train, *val)


@pytest.mark.parametrize("opts, match", [
    (dict(lr=0.0), "lr > 0"), (dict(epochs=0), "epochs >= 1"), (dict(select="val_f1"), "val_auroc, val_loss"),
    (dict(lr=1e-3, lrs=(1e-3,)), "either 'lr' or 'lrs'"), (dict(patience=0), "patience"),
    (dict(momentum=0.9), "unknown mlp option"),
])
def test_mlp_refuses_bad_options(opts, match):
    with pytest.raises(ProbeError, match=match):
        make_probe("mlp", **opts)


@pytest.mark.parametrize("kind, accepted", [("knn", "ks, temperature"), ("sklearn", "Cs, max_iter")])
@pytest.mark.parametrize("option", ["lr", "batch_size", "epochs", "drop_last", "select"])
def test_heads_without_a_training_loop_name_the_option_that_does_not_apply(kind, accepted, option):
    with pytest.raises(ProbeError, match=f"The '{option}' option does not apply to the {kind} head.*{accepted}"):
        make_probe(kind, **{option: 1})
    with pytest.raises(ProbeError, match=f"'{option}' option does not apply"):
        (KNNProbe if kind == "knn" else LogisticSweepProbe)(**{option: 1})


def test_unknown_option_of_knn_is_named():
    with pytest.raises(ProbeError, match="The 'k' option does not apply to the knn head. Options of knn: ks"):
        make_probe("knn", k=5)
