"""One place that maps a head name to its class: ``linear``, ``mlp``, ``knn``, ``sklearn``."""
from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np

from probes.errors import ProbeError

HeadKind = Literal["linear", "mlp", "knn", "sklearn"]
HEADS = ("linear", "mlp", "knn", "sklearn")


class Probe(Protocol):
    """What every head offers after ``fit``."""

    kind: str
    best_params_: dict
    best_val_auroc_: float
    results_: list[dict]
    history_: list[dict]

    def fit(self, x_train, y_train, x_val, y_val) -> Probe: ...

    def predict_proba(self, x) -> np.ndarray: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...


def make_probe(kind: str, *, seed: int = 0, device: str = "cpu", **options: Any) -> Probe:
    """Build an unfitted head.

    Parameters
    ----------
    kind : {"linear", "mlp", "knn", "sklearn"}
    seed : int
    device : str
        ``"cpu"``, ``"cuda"`` (linear and mlp; knn and sklearn run on CPU).
    **options
        Head-specific options (``LinearGridConfig``, ``MLPConfig``, ``KNNProbe`` or ``LogisticSweepProbe`` fields).
    """
    if kind == "linear":
        from probes.linear import LinearGridProbe

        return LinearGridProbe(seed=seed, device=device, **options)
    if kind == "mlp":
        from probes.mlp import MLPProbe

        return MLPProbe(seed=seed, device=device, **options)
    if kind == "knn":
        from probes.knn import KNNProbe

        return KNNProbe(seed=seed, **options)
    if kind == "sklearn":
        from probes.logistic import LogisticSweepProbe

        return LogisticSweepProbe(seed=seed, **options)
    raise ProbeError(f"Unknown head {kind!r}. Choose one of {', '.join(HEADS)}.")
