"""The finetuning loop on a small torch module: loss masking, pos_weight, NaN stop, checkpoints, resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.finetune import (FinetuneError, TrainConfig, batch_bounds, epoch_order, fit, load_checkpoint,
                             masked_bce_sum, positive_weights, save_checkpoint)


def _prepare(u8, *, train, keys=None):
    return u8.float().div(255).unsqueeze(1)


def _data(n=40, r=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, r, r), dtype=np.uint8)
    y = np.stack([(images.reshape(n, -1).mean(1) > 127.5), rng.integers(0, 2, n)], 1).astype(np.float32)
    y[::7, 1] = np.nan
    return images, y


def _model(r=8, k=2):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(r * r, k))


def test_masked_bce_ignores_nan_and_matches_torch():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    pw = torch.tensor([2.0, 3.0])
    s, n = masked_bce_sum(logits, y, pw)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=pw, reduction="none")(logits, y.nan_to_num(0))
    assert n == 3 and torch.isclose(s, ref[0, 0] + ref[1, 0] + ref[1, 1])
    assert torch.isfinite(s)


def test_positive_weights_over_known_labels():
    y = np.array([[1, 0], [0, np.nan], [0, 1], [np.nan, 1]], dtype=np.float32)
    np.testing.assert_allclose(positive_weights(y), [2.0, 0.5])


def test_order_and_batches_are_pure_functions():
    assert np.array_equal(epoch_order(10, seed=1, epoch=2), epoch_order(10, seed=1, epoch=2))
    assert not np.array_equal(epoch_order(10, seed=1, epoch=2), epoch_order(10, seed=1, epoch=3))
    assert batch_bounds(10, 4, drop_last=True) == [(0, 4), (4, 8)]
    assert batch_bounds(10, 4, drop_last=False)[-1] == (8, 10)


def test_fit_learns_and_selects_on_validation(tmp_path):
    images, y = _data()
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.05, seed=0)
    res = fit(_model(), images, y, train_rows=np.arange(30), val_rows=np.arange(30, 40), prepare=_prepare,
              config=cfg, device=torch.device("cpu"))
    losses = [e["val_loss"] for e in res.log]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    assert res.log[-1]["train_loss"] < res.log[0]["train_loss"]


def test_nan_loss_stops_with_the_step():
    images, y = _data()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e30, seed=0)
    model = _model()
    with torch.no_grad():
        model[1].weight.fill_(float("inf"))
    with pytest.raises(FinetuneError, match=r"epoch 1, step 1"):
        fit(model, images, y, train_rows=np.arange(30), val_rows=np.arange(30, 40), prepare=_prepare, config=cfg,
            device=torch.device("cpu"))


def test_checkpoint_resume_is_bitwise(tmp_path):
    images, y = _data()
    kw = dict(train_rows=np.arange(30), val_rows=np.arange(30, 40), prepare=_prepare, device=torch.device("cpu"))
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.01, seed=3, accumulate=2, checkpoint_every=1)
    ref = fit(_model(), images, y, config=cfg, **kw)
    ck = tmp_path / "ck.pt"

    class Stop(Exception):
        pass

    def stop_at(ev):
        if ev["event"] == "step" and ev["global_step"] == 6:
            raise Stop

    with pytest.raises(Stop):
        fit(_model(), images, y, config=cfg, checkpoint=str(ck), fingerprint="a", progress=stop_at, **kw)
    state = load_checkpoint(ck)
    assert state["epoch"] == 1 and state["micro"] == 2  # mid-epoch 2, after step 5
    got = fit(_model(), images, y, config=cfg, checkpoint=str(ck), fingerprint="a", **kw)
    assert got.resumed_at == {"epoch": 1, "micro_batch": 2, "global_step": 5}
    for k in ref.best_state:
        assert torch.equal(ref.best_state[k], got.best_state[k])
    assert [e["val_loss"] for e in got.log] == [e["val_loss"] for e in ref.log]
    with pytest.raises(FinetuneError, match="another configuration"):
        fit(_model(), images, y, config=cfg, checkpoint=str(ck), fingerprint="b", **kw)


def test_checkpoint_is_weights_only_and_atomic(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"model": {"w": torch.ones(2)}, "rng": torch.get_rng_state(), "log": [{"a": 1.0}]})
    assert load_checkpoint(p)["log"] == [{"a": 1.0}]
    assert not list(tmp_path.glob(".tmp-*"))
    p.write_bytes(b"garbage")
    with pytest.raises(Exception, match="cannot be read"):
        load_checkpoint(p)


def test_config_checks():
    with pytest.raises(Exception, match="'batch_size' parameter of finetune"):
        TrainConfig(batch_size=0)
    with pytest.raises(Exception, match="'select' parameter"):
        TrainConfig(select="test-auroc")
