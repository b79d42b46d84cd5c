"""The linear grid's own machinery: head options, successive halving, the bfloat16 matmuls, the grid AUROC."""
from __future__ import annotations

import numpy as np
import pytest

from probes.errors import ProbeError
from probes.heads import make_probe
from probes.linear import LinearGridProbe, _auroc_heads
from probes.metrics import auroc, auroc_many, mean_over_labels
from probes.synthetic import make_multilabel_features


@pytest.fixture(scope="module")
def data():
    x, y = make_multilabel_features(4000, 48, 4, rank=6, signal=2.0, seed=3, missing=0.05)
    return (x[:2400], y[:2400]), (x[2400:3200], y[2400:3200]), (x[3200:], y[3200:])


def _test_auroc(probe, test):
    return mean_over_labels(auroc(test[1], probe.predict_proba(test[0])))


def test_grid_auroc_equals_the_reference_with_and_without_ties():
    rng = np.random.default_rng(0)
    m, h, k = 300, 3, 4
    y = (rng.random((m, k)) < 0.3).astype(np.float32)
    y[rng.random((m, k)) < 0.1] = np.nan
    y[:, 3] = 0.0  # one class only: NaN, as in auroc_many
    z = (rng.standard_normal((m, h * k)) + np.repeat(np.nan_to_num(y), h, axis=0).reshape(m, -1)).astype(np.float32)
    ref = auroc_many(y, z.reshape(m, h, k))
    np.testing.assert_allclose(_auroc_heads(y, z, h, k), ref, rtol=0, atol=1e-12, equal_nan=True)
    tied = z.copy()
    tied[:, k:] = np.round(z[:, k:], 1)  # heads 1 and 2 tie often (the midrank rule decides), head 0 never
    got = _auroc_heads(y, tied, h, k)
    np.testing.assert_allclose(got, auroc_many(y, tied.reshape(m, h, k)), rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(got[:, 3]).all() and np.isfinite(got[:, :3]).all()


def test_lr_epochs_and_batch_size_options_reach_the_grid(data):
    train, val, _ = data
    p = make_probe("linear", seed=0, lr=3e-3, epochs=2, batch_size=128).fit(*train, *val)
    assert {r["lr"] for r in p.results_} == {3e-3}
    assert len(p.results_) == len(p.config.weight_decays) == p.n_heads
    assert p.best_params_["lr"] == 3e-3 and p.best_params_["batch_size"] == 128
    assert p.best_params_["epochs_run"] <= 2 and p.config.max_epochs == 2
    full = make_probe("linear", seed=0, lr=3e-3, epochs=3, patience=3).fit(*train, *val)
    assert full.best_params_["epochs_run"] == 3  # patience >= epochs: every epoch runs


@pytest.mark.parametrize("bad, match", [
    ({"keep_fraction": 0.0}, "keep_fraction"), ({"keep_fraction": 1.5}, "keep_fraction"),
    ({"compute_dtype": "fp8"}, "compute_dtype"), ({"lr": 0.0}, "learning rates"), ({"batch_size": 0}, "batch_size"),
    ({"epochs": 0}, "max_epochs"), ({"min_heads": 0}, "min_heads"), ({"momentum": 0.9}, "unknown linear-grid option"),
    ({"lr": 1e-3, "lrs": (1e-3,)}, "either 'lr' or 'lrs'"),
])
def test_bad_options_are_refused(bad, match):
    with pytest.raises(ProbeError, match=match):
        make_probe("linear", **bad)


def test_halving_stops_the_lower_half_and_leaves_the_kept_heads_untouched(data):
    train, val, test = data
    opts = dict(seed=0, max_epochs=5, patience=5, compute_dtype="float32")
    halved = make_probe("linear", **opts).fit(*train, *val)
    full = make_probe("linear", keep_fraction=1.0, **opts).fit(*train, *val)
    assert [e["heads"] for e in halved.history_] == [40, 20, 10, 5, 4]
    assert [e["heads"] for e in full.history_] == [40] * 5
    trained = np.array([r["epochs_trained"] for r in halved.results_])
    assert sorted(np.bincount(trained, minlength=6)[1:].tolist()) == sorted([20, 10, 5, 1, 4])
    assert all(r["epochs_trained"] == 5 for r in full.results_)
    # Heads do not interact: a head that kept training is the same head as in the full grid.
    for rh, rf in zip(halved.results_, full.results_):
        if rh["epochs_trained"] == 5:
            assert rh["val_auroc"] == pytest.approx(rf["val_auroc"], abs=1e-6)
            assert rh["best_epoch"] == rf["best_epoch"]
    # The survivors are the heads ranked best on validation: the chosen head is among them, and test AUROC holds.
    chosen = [r["val_auroc"] for r in halved.results_].index(halved.best_val_auroc_)
    assert halved.results_[chosen]["epochs_trained"] == 5
    assert halved.best_val_auroc_ == pytest.approx(full.best_val_auroc_, abs=2e-3)
    assert abs(_test_auroc(halved, test) - _test_auroc(full, test)) < 3e-3


def test_bfloat16_matmuls_match_float32(data):
    train, val, test = data
    f32 = make_probe("linear", seed=0, compute_dtype="float32", max_epochs=6).fit(*train, *val)
    bf16 = make_probe("linear", seed=0, compute_dtype="bfloat16", max_epochs=6).fit(*train, *val)
    assert f32.best_params_["compute_dtype"] == "float32" and bf16.best_params_["compute_dtype"] == "bfloat16"
    assert abs(_test_auroc(bf16, test) - _test_auroc(f32, test)) < 2e-3
    assert bf16.coef_.dtype == np.float32 and np.isfinite(bf16.coef_).all()
    auto = LinearGridProbe(max_epochs=1).fit(*train, *val)
    assert auto.best_params_["compute_dtype"] in ("float32", "bfloat16")
