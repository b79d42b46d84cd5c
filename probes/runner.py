"""One probe run on arrays: split handling, label-fraction subsampling, fit, thresholds on val, test evaluation.

The test split is touched exactly once, after the head and its thresholds are fixed: selection (grid head, epoch,
C, k) and Youden thresholds use the validation split only.

Scale: the features are used in the dtype they come in (a float16 store stays float16). The linear, mlp and knn
heads convert bounded chunks to float32 only when they use them; the train and val subsets are views when their rows
are contiguous and compact copies in the input dtype otherwise. The sklearn head is the reference implementation: it
makes float32 standardised copies of train and val and fits lbfgs per label, fine for 10^4-10^5 x 10^3 features but
not meant for 800k x 4096 (use ``linear``).
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from probes.bootstrap import BootstrapPlan, ids_hash
from probes.errors import ProbeError
from probes.evaluate import Evaluation, evaluate
from probes.heads import Probe, ProgressFn, make_probe
from probes.metrics import ThresholdMode, ThresholdRule, youden_thresholds
from probes.splits import subsample_train

logger = logging.getLogger(__name__)


def _take_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` without a copy when ``rows`` is one ascending contiguous run (a view), else a copy in x's dtype."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and (rows.size == 1 or np.all(np.diff(rows) == 1)):
        return x[int(rows[0]) : int(rows[-1]) + 1]
    return x[rows]


def _takes_progress(probe: Probe) -> bool:
    """Whether the head's ``fit`` accepts ``progress=`` (heads may; the others are fitted without it)."""
    try:
        return "progress" in inspect.signature(probe.fit).parameters
    except (TypeError, ValueError):
        return False


def canonical_test_rows(ids: Sequence[str], split: np.ndarray) -> np.ndarray:
    """Indices of the test rows sorted by id: the order bootstrap plans refer to, whatever the store's row order."""
    ids = np.asarray(ids).astype(str)
    rows = np.flatnonzero(np.asarray(split).astype(str) == "test")
    return rows[np.argsort(ids[rows], kind="stable")]


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """Everything one run produced.

    Attributes
    ----------
    head : Probe (fitted)
    label_names : list[str] (K)
    label_fraction : float
    seed : int
    n_train, n_val, n_test : int
    test_rows : ndarray (T,) indices of the test rows in canonical (id-sorted) order
    scores : ndarray (N, K) probabilities for every row
    thresholds : ndarray (K,) chosen on validation (Youden's J)
    evaluation : Evaluation (test split)
    timings : dict[str, float] seconds per stage
    """

    head: Probe
    label_names: list[str]
    label_fraction: float
    seed: int
    n_train: int
    n_val: int
    n_test: int
    test_rows: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray
    evaluation: Evaluation
    timings: dict = field(default_factory=dict)


def run_probe(
    x,
    y,
    *,
    split: np.ndarray,
    ids: Sequence[str],
    head: str = "linear",
    label_names: Sequence[str] | None = None,
    groups: Sequence | None = None,
    label_fraction: float = 1.0,
    seed: int = 0,
    plan: BootstrapPlan | None = None,
    threshold_mode: ThresholdMode = "val",
    youden_rule: ThresholdRule = "ge",
    device: str = "cpu",
    head_options: dict | None = None,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Fit a head on the train split, select and threshold on val, evaluate on test.

    Parameters
    ----------
    x : array (N, D) float
        Features of every row, float16 or float32 (kept in its dtype; see the module docstring on memory).
    y : array (N, K) float
        Labels, NaN = unknown.
    split : array (N,) of str
        ``"train"``, ``"val"``, ``"test"`` (other values are ignored rows). All three must be non-empty.
    ids : sequence (N,) of str
    head : {"linear", "mlp", "knn", "sklearn"}
        ``sklearn`` is the float32 reference (not for 800k x 4096 matrices).
    label_names : sequence (K,), optional
    groups : sequence (N,), optional
        Split unit of each row (patient, or a connected patient/study component): label-fraction subsampling keeps
        whole units.
    label_fraction : float in (0, 1]
        Fraction of training patients used.
    seed : int
        Seeds the head and the subsample.
    plan : BootstrapPlan, optional
        Resamples of the canonical test rows; its ``ids_sha256`` must match them.
    threshold_mode : {"val", "youden-test"}
    youden_rule : {"ge", "gt"}
        ``score >= threshold`` (default) or the reference study's strict ``score > threshold``, for the validation
        thresholds and the test metrics alike.
    device : str
    head_options : dict, optional
        Passed to ``make_probe``.
    progress : callable(dict), optional
        Receives the head's training events (:class:`probes.heads.FitProgress`) when its ``fit`` takes a
        ``progress`` keyword (mlp); other heads train without reporting.

    Returns
    -------
    RunResult
    """
    t_all = time.perf_counter()
    y = np.asarray(y, dtype=np.float32)
    split = np.asarray(split).astype(str)
    n = y.shape[0]
    if split.shape != (n,) or len(ids) != n or np.shape(x)[0] != n:
        raise ProbeError(f"features, labels, split and ids must have the same number of rows; got "
                         f"{np.shape(x)[0]}, {n}, {split.shape[0]}, {len(ids)}.")
    names = list(label_names) if label_names is not None else [str(k) for k in range(y.shape[1])]
    train = subsample_train(split, fraction=label_fraction, groups=groups, seed=seed)
    val = split == "val"
    test_rows = canonical_test_rows(ids, split)
    for name, count in (("train", train.sum()), ("val", val.sum()), ("test", test_rows.size)):
        if count == 0:
            raise ProbeError(f"the {name} split is empty. Check the store's split array or --label-fraction.")
    if plan is not None and plan.ids_sha256 and plan.ids_sha256 != ids_hash(np.asarray(ids).astype(str)[test_rows]):
        raise ProbeError("the bootstrap plan was made for another test set. Use the plan of this test set.")
    tr, va = np.flatnonzero(train), np.flatnonzero(val)
    x = np.asarray(x)
    timings = {}
    t0 = time.perf_counter()
    probe = make_probe(head, seed=seed, device=device, **(head_options or {}))
    report = {"progress": progress} if progress is not None and _takes_progress(probe) else {}
    probe.fit(_take_rows(x, tr), y[tr], _take_rows(x, va), y[va], **report)
    timings["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = probe.predict_proba(x)
    timings["predict_s"] = time.perf_counter() - t0
    thresholds = youden_thresholds(y[va], scores[va], rule=youden_rule)
    t0 = time.perf_counter()
    ev = evaluate(y[test_rows], scores[test_rows], plan=plan, thresholds=thresholds, threshold_mode=threshold_mode,
                  label_names=names, youden_rule=youden_rule)
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    return RunResult(head=probe, label_names=names, label_fraction=label_fraction, seed=seed, n_train=int(tr.size),
                     n_val=int(va.size), n_test=int(test_rows.size), test_rows=test_rows, scores=scores,
                     thresholds=thresholds, evaluation=ev, timings=timings)
