"""Probe protocols: the registry, the paper recipe's values, and that every head option reaches a real head."""
from __future__ import annotations

import json

import numpy as np
import pytest

from embedkit.errors import DataError
from embedkit.protocols import PROTOCOLS, get_protocol, list_protocols
from probes.heads import make_probe
from probes.synthetic import make_multilabel_features


def test_registry_lists_paper_and_modern_and_refuses_unknown_names():
    assert list_protocols()[:2] == ["paper", "modern"]
    with pytest.raises(DataError, match="Unknown protocol 'papr'. Did you mean 'paper'.*paper, modern"):
        get_protocol("papr")


def test_paper_protocol_is_the_reference_recipe():
    p = get_protocol("paper")
    assert (p.preset, p.features, p.head, p.threshold_mode, p.youden_rule, p.n_bootstrap) == (
        "paper", "mean_tokens", "mlp", "youden-test", "gt", 1000)
    o = p.head_options
    assert (o["lr"], o["batch_size"], o["drop_last"], o["select"], o["patience"]) == (1e-5, 30, True, "val_loss", None)
    assert (o["weight_decay"], o["hidden"], o["dropout"], o["epochs"]) == (0.0, 512, 0.3, 100)
    with pytest.raises(TypeError):
        p.head_options["lr"] = 1.0  # read-only: a protocol cannot drift at run time


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_protocol_builds_its_head_and_records_strict_json(name):
    p = get_protocol(name)
    opts = dict(p.head_options)
    if "epochs" in opts:
        opts["epochs"] = 2  # the recipe, on a budget
    if "lr" in opts:
        opts["lr"] = 1e-3
    x, y = make_multilabel_features(300, 8, 2, rank=2, signal=2.0, seed=0, missing=0.0)
    probe = make_probe(p.head, seed=0, **opts).fit(x[:200], y[:200], x[200:], y[200:])
    assert probe.predict_proba(x[200:]).shape == (100, 2)
    doc = json.loads(json.dumps(p.params(), allow_nan=False))
    assert doc["name"] == name and doc["head_options"] == dict(p.head_options)


def test_paper_mlp_is_the_dinonet_architecture():
    opts = get_protocol("paper").head_options
    x, y = make_multilabel_features(120, 8, 3, rank=2, signal=2.0, seed=0, missing=0.0)
    probe = make_probe("mlp", **{**opts, "epochs": 1}).fit(x[:90], y[:90], x[90:], y[90:])
    layers = [type(m).__name__ for m in probe.model_]
    assert layers == ["LayerNorm", "Linear", "GELU", "LayerNorm", "Dropout", "Linear"]
    assert probe.model_[1].out_features == 512 and probe.model_[4].p == 0.3
    assert np.isfinite(probe.best_val_loss_)
