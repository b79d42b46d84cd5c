"""The probe-head registry: one :class:`HeadSpec` per head (``linear``, ``mlp``, ``knn``, ``sklearn``).

Adding a head is one ``register_head`` call here; :func:`make_probe`, option checks, help texts and the tests that
fit every head on a tiny problem all read the registry.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

from probes.errors import ProbeError

if TYPE_CHECKING:  # pragma: no cover - annotations only: importing the registry stays cheap (CLI help texts)
    import numpy as np


class Probe(Protocol):
    """What every head offers after ``fit``.

    A head's ``fit`` may also take a keyword ``progress`` (a :data:`ProgressFn`): :func:`probes.runner.run_probe`
    passes it to heads whose ``fit`` accepts it and to no other; :class:`FitProgress` writes its events.
    """

    kind: str
    best_params_: dict
    best_val_auroc_: float
    results_: list[dict]
    history_: list[dict]

    def fit(self, x_train, y_train, x_val, y_val) -> Probe: ...

    def predict_proba(self, x) -> np.ndarray: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...


#: ``progress(event)``: receives a head's training events (a plain callable: ``probes`` never prints).
ProgressFn = Callable[[dict], None]


class FitProgress:
    """Training events of a gradient-trained head for an optional :data:`ProgressFn`; a no-op without one.

    Each event is a dict: ``event`` (``"step"`` after an optimiser step, ``"epoch"`` after an epoch's validation,
    ``"end"`` from :meth:`finish`), ``epoch``/``epochs`` (1-based, within the current training run; not on ``end``),
    ``step``/``steps`` (step events),
    ``done``/``total`` (steps of the whole fit: a sweep of ``runs`` runs of ``epochs`` epochs of ``steps`` steps;
    a run that stops early jumps ``done`` to its end, so ``total`` stays exact), and the head's figures on epoch
    events (``loss``, ``val_auroc``, ``val_loss``, ``lr``, ...).

    Parameters
    ----------
    progress : ProgressFn or None
    epochs : int
        Epoch budget of one run.
    steps : int
        Optimiser steps per epoch.
    runs : int
        Runs trained one after another (the mlp head's learning rates); 1 for a grid trained together.

    Examples
    --------
    >>> seen = []
    >>> rep = FitProgress(seen.append, epochs=2, steps=3)
    >>> rep.step(1, 3); rep.epoch(2, last=True, val_auroc=0.8)
    >>> [(e["event"], e["done"], e["total"]) for e in seen]
    [('step', 3, 6), ('epoch', 6, 6)]
    """

    def __init__(self, progress: ProgressFn | None, *, epochs: int, steps: int, runs: int = 1) -> None:
        self.progress, self.epochs, self.steps, self.runs = progress, int(epochs), max(int(steps), 1), int(runs)
        self.total = self.runs * self.epochs * self.steps

    def step(self, epoch: int, step: int, *, run: int = 0) -> None:
        """After optimiser step ``step`` (1-based) of ``epoch`` (1-based) of run ``run`` (0-based)."""
        if self.progress is not None:
            done = ((run * self.epochs) + epoch - 1) * self.steps + step
            self.progress({"event": "step", "epoch": epoch, "epochs": self.epochs, "step": step,
                           "steps": self.steps, "done": done, "total": self.total})

    def epoch(self, epoch: int, *, run: int = 0, last: bool = False, **figures: Any) -> None:
        """After ``epoch``'s validation; ``last``: the run stops here (early stopping or its budget's end)."""
        if self.progress is not None:
            done = ((run + 1) * self.epochs if last else run * self.epochs + epoch) * self.steps
            self.progress({"event": "epoch", "epoch": epoch, "epochs": self.epochs, "done": done,
                           "total": self.total, **figures})

    def finish(self) -> None:
        """After the fit, for heads that learn only later that an epoch was their last: an ``"end"`` event with
        ``done == total``."""
        if self.progress is not None:
            self.progress({"event": "end", "done": self.total, "total": self.total})


#: Options of a gradient-trained head's loop (``probe --lr/--batch-size/--epochs`` and protocol recipes).
TRAINING_OPTIONS = ("lr", "batch_size", "epochs", "drop_last", "select")


@dataclass(frozen=True)
class HeadSpec:
    """One probe head: what ``make_probe(name)`` builds, what it accepts, and the line help texts show.

    Attributes
    ----------
    name : str
        The ``--head`` value.
    module, cls : str
        Where the class lives (imported on first use: torch and scikit-learn stay unloaded until needed).
    description : str
        One line for help texts.
    options : tuple of str or None
        The options it accepts besides ``seed``/``device``; None: the fields of its config dataclass ``config``
        (checked by the class itself).
    config : str or None
        Name of the config dataclass in ``module`` (gradient-trained heads).
    devices : tuple of str
        Devices it runs on.
    shorthands : tuple of str
        Short options the class maps onto config fields (``lr`` -> ``lrs``, ``epochs`` -> ``max_epochs``).
    why_no_training : str
        For a head without a training loop: why ``lr``/``epochs``/... do not apply (said when one is passed).
    """

    name: str
    module: str
    cls: str
    description: str
    options: tuple[str, ...] | None = None
    config: str | None = None
    devices: tuple[str, ...] = ("cpu",)
    shorthands: tuple[str, ...] = ()
    why_no_training: str = ""

    def load(self) -> type:
        """The head's class."""
        return getattr(importlib.import_module(self.module), self.cls)

    def accepted_options(self) -> tuple[str, ...]:
        """Every option name ``make_probe`` takes for this head (besides ``seed``/``device``)."""
        if self.options is not None:
            return self.options
        cfg = getattr(importlib.import_module(self.module), self.config)
        names = [f.name for f in dataclasses.fields(cfg) if f.name not in ("seed", "device")]
        return tuple(names + [t for t in self.shorthands if t not in names])


_REGISTRY: dict[str, HeadSpec] = {}


def register_head(spec: HeadSpec) -> HeadSpec:
    """Add a head to the registry (its name must be new); returns ``spec``."""
    if spec.name in _REGISTRY:
        raise ProbeError(f"A head named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def list_heads() -> list[HeadSpec]:
    """The registered heads, in registration order."""
    return list(_REGISTRY.values())


def head_spec(name: str) -> HeadSpec:
    """The spec of head ``name``.

    Raises
    ------
    ProbeError
        Unknown head (the message lists the registered ones).
    """
    if name not in _REGISTRY:
        raise ProbeError(f"Unknown head {name!r}. Choose one of {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def head_help() -> str:
    """``name: description`` of every registered head, for ``--head`` help texts.

    Examples
    --------
    >>> head_help().split(";")[0]
    'linear: a grid of linear heads (learning rates x weight decays) trained together, best on validation'
    """
    return "; ".join(f"{h.name}: {h.description}" for h in _REGISTRY.values())


register_head(HeadSpec(
    name="linear", module="probes.linear", cls="LinearGridProbe", config="LinearGridConfig", devices=("cpu", "cuda"),
    shorthands=("lr", "epochs"),
    description="a grid of linear heads (learning rates x weight decays) trained together, best on validation"))
register_head(HeadSpec(
    name="mlp", module="probes.mlp", cls="MLPProbe", config="MLPConfig", devices=("cpu", "cuda"),
    shorthands=("lr", "epochs"),
    description="a one-hidden-layer MLP (the reference study's recipe options), best epoch on validation"))
register_head(HeadSpec(
    name="knn", module="probes.knn", cls="KNNProbe", options=("ks", "temperature", "query_batch"),
    description="temperature-weighted cosine k-NN votes (T = 0.07), k chosen on validation",
    why_no_training="it has no training loop (it stores the training rows and votes)"))
register_head(HeadSpec(
    name="sklearn", module="probes.logistic", cls="LogisticSweepProbe",
    options=("Cs", "max_iter", "pos_weight", "n_jobs"),
    description="scikit-learn LogisticRegression per label over a C sweep (float32 reference, small stores only)",
    why_no_training="scikit-learn's LogisticRegression solver (lbfgs) trains on all rows at once, to convergence"))

#: The names of the heads registered above (``list_heads()`` also sees heads registered later).
HEADS = tuple(_REGISTRY)
HeadKind = Literal["linear", "mlp", "knn", "sklearn"]


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
    spec = head_spec(kind)
    if spec.options is None:
        return  # gradient-trained heads check their own options (their config dataclasses)
    accepted = spec.options
    for name in options:
        if name in accepted:
            continue
        why = f": {spec.why_no_training}" if name in TRAINING_OPTIONS and spec.why_no_training else ""
        raise ProbeError(f"The {name!r} option does not apply to the {kind} head{why}. "
                         f"Options of {kind}: {', '.join(accepted)}.")


def make_probe(kind: str, *, seed: int = 0, device: str = "cpu", **options: Any) -> Probe:
    """Build an unfitted head.

    Parameters
    ----------
    kind : str
        A registered head (:func:`list_heads`): ``linear``, ``mlp``, ``knn``, ``sklearn``.
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
    spec = head_spec(kind)
    check_options(kind, options)
    return spec.load()(seed=seed, device=device, **options)
