"""Probe protocols: named recipes of preprocessing, feature view, head, head options and threshold rule.

A protocol is what ``embedkit probe --protocol NAME`` starts from; explicit options override its fields and the
overrides are recorded. Every field goes into metrics.json (``ProbeProtocol.params()``), so two runs share a
protocol exactly when those dicts are equal.

``paper`` — the reference study's frozen-feature protocol (arXiv 2510.07191, github.com/tayebiarasteh/vit-med):

- preprocessing: the ``paper`` preset (bit-exact reference steps; ``embedkit.data.presets``);
- features: ``mean_tokens``, ``last_hidden_state.mean(1)`` over CLS + registers + patches of the last layer;
- head: ``mlp``, the study's DinoNet LayerNorm(D) -> Linear(D, 512) -> GELU -> LayerNorm(512) -> Dropout(0.3) ->
  Linear(512, K); AdamW, weight decay 0, lr 1e-5, batch 30 with ``drop_last``, BCE with per-label
  ``pos_weight = neg/pos``, a fixed budget of 100 epochs (the published config's ``num_epochs``; no early
  stopping), and the checkpoint of the epoch with the lowest validation loss;
- thresholds: Youden's threshold re-picked on each test resample (``youden-test``) with the reference's strict
  rule ``score > threshold`` at ``sklearn.metrics.roc_curve``'s ``argmax(tpr - fpr)`` (``youden_rule="gt"``);
  1,000 bootstrap resamples.

Not reproduced on purpose: the reference's random flip/rotation of every image (test images too) during feature
extraction — embedkit never augments at extraction.

``modern`` — embedkit's defaults: ``model`` preset, the CLS token, the linear-probe grid selected on validation
AUROC, thresholds chosen on validation with ``score >= threshold``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from embedkit.errors import DataError

__all__ = ["PROTOCOLS", "ProbeProtocol", "get_protocol", "list_protocols"]


@dataclass(frozen=True)
class ProbeProtocol:
    """One named probe recipe.

    Attributes
    ----------
    name : str
    preset : {"model", "paper"}
        Preprocessing preset the store should have been extracted with.
    features : str
        Feature view (or ``+`` concatenation) of the store.
    head : {"linear", "mlp", "knn", "sklearn"}
    head_options : Mapping[str, Any]
        Passed to ``probes.heads.make_probe(head, seed=..., device=..., **head_options)``; read-only.
    threshold_mode : {"val", "youden-test"}
        How threshold metrics pick their threshold (``probes.metrics.resampled_metrics``).
    youden_rule : {"ge", "gt"}
        ``score >= threshold`` or the reference's strict ``score > threshold``.
    n_bootstrap : int
        Test-set bootstrap resamples.
    description : str
        One line for help texts and metrics.json.
    """

    name: str
    preset: Literal["model", "paper"]
    features: str
    head: str
    head_options: Mapping[str, Any] = field(default_factory=dict)
    threshold_mode: Literal["val", "youden-test"] = "val"
    youden_rule: Literal["ge", "gt"] = "ge"
    n_bootstrap: int = 1000
    description: str = ""

    def __post_init__(self) -> None:
        # A frozen dataclass with a dict field is still mutable through the dict: freeze it too.
        object.__setattr__(self, "head_options", MappingProxyType(dict(self.head_options)))

    def params(self) -> dict[str, Any]:
        """Every field as plain JSON-able values (for metrics.json and run comparison)."""
        return {"name": self.name, "preset": self.preset, "features": self.features, "head": self.head,
                "head_options": dict(self.head_options), "threshold_mode": self.threshold_mode,
                "youden_rule": self.youden_rule, "n_bootstrap": self.n_bootstrap, "description": self.description}


PAPER_MLP_OPTIONS: dict[str, Any] = {
    "lr": 1e-5, "batch_size": 30, "epochs": 100, "drop_last": True, "select": "val_loss", "patience": None,
    "weight_decay": 0.0, "hidden": 512, "dropout": 0.3, "pos_weight": True,
}

PROTOCOLS: dict[str, ProbeProtocol] = {
    p.name: p
    for p in (
        ProbeProtocol(
            name="paper", preset="paper", features="mean_tokens", head="mlp", head_options=PAPER_MLP_OPTIONS,
            threshold_mode="youden-test", youden_rule="gt", n_bootstrap=1000,
            description="the reference study (arXiv 2510.07191): paper preset, mean_tokens, its MLP recipe "
                        "(AdamW lr 1e-5, batch 30, drop_last, 100 epochs, best validation loss), strict Youden",
        ),
        ProbeProtocol(
            name="modern", preset="model", features="cls", head="linear", head_options={},
            threshold_mode="val", youden_rule="ge", n_bootstrap=1000,
            description="embedkit's defaults: model preset, CLS token, linear-probe grid selected on validation "
                        "AUROC, thresholds chosen on validation",
        ),
    )
}


def list_protocols() -> list[str]:
    """Names of the registered protocols, in registration order."""
    return list(PROTOCOLS)


def get_protocol(name: str) -> ProbeProtocol:
    """The protocol called ``name``.

    Parameters
    ----------
    name : str
        ``"paper"`` or ``"modern"``.

    Returns
    -------
    ProbeProtocol

    Raises
    ------
    DataError
        For an unknown name; the message lists the known ones.

    Examples
    --------
    >>> get_protocol("paper").head_options["batch_size"]
    30
    """
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(PROTOCOLS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"Unknown protocol {name!r}.{hint} Choose one of {', '.join(PROTOCOLS)}.") from None
