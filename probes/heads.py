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


#: Options of a gradient-trained head's loop (``probe --lr/--batch-size/--epochs`` and protocol recipes).
TRAINING_OPTIONS = ("lr", "batch_size", "epochs", "drop_last", "select")
#: What the heads without a training loop accept (besides ``seed``/``device``).
_OPTIONS = {
    "knn": ("ks", "temperature", "query_batch"),
    "sklearn": ("Cs", "max_iter", "pos_weight", "n_jobs"),
}
_WHY = {"knn": "it has no training loop (it stores the training rows and votes)",
        "sklearn": "scikit-learn's LogisticRegression solver (lbfgs) trains on all rows at once, to convergence"}


def check_options(kind: str, options: dict[str, Any]) -> None:
    """Refuse options that do not apply to head ``kind``, naming the option and what the head accepts.

    Parameters
    ----------
    kind : {"linear", "mlp", "knn", "sklearn"}
    options : dict
        Head options (as passed to :func:`make_probe`).

    Raises
    ------
    ProbeError
        ``The 'lr' option does not apply to the knn head: it has no training loop (...). Options of knn: ...``
    """
    accepted = _OPTIONS.get(kind)
    if accepted is None:
        return  # linear and mlp check their own options (their config dataclasses)
    for name in options:
        if name in accepted:
            continue
        why = f": {_WHY[kind]}" if name in TRAINING_OPTIONS else ""
        raise ProbeError(f"The {name!r} option does not apply to the {kind} head{why}. "
                         f"Options of {kind}: {', '.join(accepted)}.")


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
        The training options ``lr``, ``batch_size``, ``epochs`` (linear, mlp), ``drop_last`` and ``select``
        (mlp) apply to the gradient-trained heads only.

    Raises
    ------
    ProbeError
        Unknown head, or an option the head does not take (named in the message).

    Examples
    --------
    >>> make_probe("mlp", lr=1e-5, batch_size=30, epochs=100, drop_last=True, select="val_loss").kind
    'mlp'
    """
    if kind not in HEADS:
        raise ProbeError(f"Unknown head {kind!r}. Choose one of {', '.join(HEADS)}.")
    check_options(kind, options)
    if kind == "linear":
        from probes.linear import LinearGridProbe

        return LinearGridProbe(seed=seed, device=device, **options)
    if kind == "mlp":
        from probes.mlp import MLPProbe

        return MLPProbe(seed=seed, device=device, **options)
    if kind == "knn":
        from probes.knn import KNNProbe

        return KNNProbe(seed=seed, **options)
    from probes.logistic import LogisticSweepProbe

    return LogisticSweepProbe(seed=seed, **options)
