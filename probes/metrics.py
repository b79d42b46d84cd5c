"""Ranking and threshold metrics for multi-label scores, exact and vectorised over bootstrap resamples.

Conventions
-----------
- ``y_true`` is ``(N, K)`` float with 1 = positive, 0 = negative, NaN = unknown (masked out per label); a 1-D
  ``(N,)`` input is one label and gives scalar results.
- ``scores`` is ``(N, K)`` float, higher = more likely positive (probabilities or logits alike).
- Every metric is computed per label from *grouped ties*: rows are sorted by score, equal scores form one group, and
  the ROC/PR curves step once per distinct score. This is what ``sklearn.metrics`` does, so AUROC and AP agree with
  ``roc_auc_score`` / ``average_precision_score`` to floating-point precision, ties included.
- A resample is a row of non-negative weights ``(N,)`` (the multiplicity of each row in a bootstrap draw), so the
  same code computes the point estimate (weights = 1) and 1,000 resamples (a ``(B, N)`` weight matrix).
- A label with one class (in the data or in a resample) gives NaN; means over labels ignore NaN.
- Threshold rule (``rule``): ``"ge"`` (default) predicts positive when ``score >= threshold`` and takes Youden's
  threshold at the first (highest-threshold) maximum of TPR - FPR over the distinct scores. ``"gt"`` is the
  reference study's rule (``Prediction_vitmed.bootstrapper``): ``thresholds`` of ``sklearn.metrics.roc_curve``
  (``inf`` first, then the distinct scores), ``argmax(tpr - fpr)``, then ``score > threshold`` — so the rows *at*
  the chosen threshold are predicted negative, and a maximum of J <= 0 picks ``inf`` (nothing predicted positive).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from probes.errors import ProbeError

logger = logging.getLogger(__name__)

THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1")
ThresholdMode = Literal["val", "youden-test"]
ThresholdRule = Literal["ge", "gt"]
THRESHOLD_RULES = ("ge", "gt")


class SingleClassWarning(UserWarning):
    """A label has one class only (in the test set or in some resamples); its metric is NaN there."""


def _as_2d(y_true, scores) -> tuple[np.ndarray, np.ndarray, bool]:
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    one_d = y.ndim == 1
    if one_d:
        y, s = y[:, None], s[:, None]
    if y.ndim != 2 or y.shape != s.shape:
        raise ProbeError(f"y_true and scores must both be (N, K) or (N,); got {y.shape} and {s.shape}.")
    if np.isnan(s).any():
        raise ProbeError("scores contain NaN; the head produced no prediction for some rows. Check the features.")
    known = y[~np.isnan(y)]
    if known.size and not np.isin(known, (0.0, 1.0)).all():
        raise ProbeError("y_true must hold 0, 1 or NaN (unknown); found other values.")
    return y, s, one_d


@dataclass(frozen=True)
class _Label:
    """One label's known rows, split into positives (by decreasing score) and negatives (by increasing score).

    ``lt[i]`` / ``le[i]``: number of negatives scoring below / at most positive ``i``; ``ge[i]``: number of positives
    scoring at least positive ``i`` (its whole tie group included, as sklearn's precision-recall steps do).
    """

    pos: np.ndarray  # (P,)
    neg: np.ndarray  # (Nn,)
    lt: np.ndarray  # (P,)
    le: np.ndarray  # (P,)
    ge: np.ndarray  # (P,)
    order: np.ndarray  # (m,) all known rows by decreasing score (for Youden)
    starts: np.ndarray  # (G,) first position of each tie group in ``order``
    group_scores: np.ndarray  # (G,) decreasing


def _prep(y: np.ndarray, s: np.ndarray) -> _Label:
    known = ~np.isnan(y)
    pos = np.flatnonzero(known & (y == 1.0))
    neg = np.flatnonzero(known & (y == 0.0))
    pos = pos[np.argsort(-s[pos], kind="stable")]
    neg = neg[np.argsort(s[neg], kind="stable")]
    sp, sn = s[pos], s[neg]
    order = np.flatnonzero(known)
    order = order[np.argsort(-s[order], kind="stable")]
    so = s[order]
    starts = np.flatnonzero(np.r_[True, so[1:] != so[:-1]]) if so.size else np.zeros(0, dtype=np.intp)
    return _Label(
        pos=pos,
        neg=neg,
        lt=np.searchsorted(sn, sp, "left"),
        le=np.searchsorted(sn, sp, "right"),
        ge=np.searchsorted(-sp, -sp, "right"),
        order=order,
        starts=starts,
        group_scores=so[starts] if so.size else so,
    )


def _auroc_ap(lab: _Label, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights ``(N, B)`` (rows x resamples) -> (B,) AUROC, AP, positive weight, negative weight.

    AUROC is the Mann-Whitney statistic with half credit for ties; AP sums, over positives, the precision at the
    positive's own tie group. Both need only one cumulative sum over the negatives: rows are gathered whole (the
    resample axis is contiguous), which is what makes 1,000 resamples cheap.
    """
    b = wt.shape[1]
    cn = np.zeros((lab.neg.size + 1, b), dtype=wt.dtype)
    np.cumsum(wt[lab.neg], axis=0, out=cn[1:])
    wp = wt[lab.pos]
    cp = np.zeros((lab.pos.size + 1, b), dtype=wt.dtype)
    np.cumsum(wp, axis=0, out=cp[1:])
    p = cp[-1].astype(np.float64)
    n = cn[-1].astype(np.float64)
    clt = cn[lab.lt]
    below = clt + 0.5 * (cn[lab.le] - clt)  # negatives below + half of those tied
    u = np.sum(wp * below, axis=0, dtype=np.float64)
    tp = cp[lab.ge]
    fp = cn[-1][None, :] - clt  # negatives scoring >= the positive
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(wp > 0, tp / (tp + fp), 0)
        ap = np.sum(wp * prec, axis=0, dtype=np.float64) / p
        auc = u / (p * n)
    bad = (p == 0) | (n == 0)
    auc[bad] = np.nan
    ap[bad] = np.nan
    return auc, ap, p, n


def _rates(tp, fp, p, n) -> dict[str, np.ndarray]:
    tp, fp, p, n = (np.asarray(a, dtype=np.float64) for a in (tp, fp, p, n))
    fn, tn = p - tp, n - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = tp / p
        spec = tn / n
        out = {
            "accuracy": (tp + tn) / (p + n),
            "balanced_accuracy": 0.5 * (sens + spec),
            "sensitivity": sens,
            "specificity": spec,
            # sklearn's zero_division default (0 with a warning) is what the reference study reported.
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
        }
    bad = (p == 0) | (n == 0)
    for v in out.values():
        v[bad] = np.nan
    return out


def _group_curves(lab: _Label, wt: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G, B) cumulative true / false positives when predicting ``score >= group score``."""
    ws = wt[lab.order].astype(np.float64)
    tp = np.cumsum(ws * positive[lab.order, None], axis=0)
    fp = np.cumsum(ws, axis=0) - tp
    ends = np.r_[lab.starts[1:], lab.order.size] - 1
    return tp[ends], fp[ends]


def _youden_index(tp: np.ndarray, fp: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(B,) group maximising TPR - FPR (the first, i.e. highest-threshold, maximum)."""
    # (TPR - FPR) * P * N compares integer-valued counts exactly, so tied maxima resolve to the highest threshold.
    p = np.asarray(p, dtype=np.float64)[None, :]
    n = np.asarray(n, dtype=np.float64)[None, :]
    return np.argmax(tp * n - fp * p, axis=0)


def _youden_counts(tp: np.ndarray, fp: np.ndarray, p, n, rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B,) true/false positives at Youden's threshold under ``rule``, and the chosen ROC point's index.

    The index is into ``[inf, group scores...]`` for ``"gt"`` (sklearn's ``roc_curve`` points, (0, 0) first) and
    into the group scores for ``"ge"``. Under ``"gt"`` the counts are those of the point *before* the chosen one:
    ``score > group score`` excludes the group itself.
    """
    if rule == "ge":
        g = _youden_index(tp, fp, p, n)[None, :]
        return np.take_along_axis(tp, g, axis=0)[0], np.take_along_axis(fp, g, axis=0)[0], g[0]
    zero = np.zeros((1, tp.shape[1]))
    tp_e, fp_e = np.concatenate([zero, tp]), np.concatenate([zero, fp])
    # sklearn's J in floating point, tpr - fpr = tp/P - fp/N: exact ties can differ by an ulp there, and the
    # reference took whichever argmax its floats gave.
    with np.errstate(divide="ignore", invalid="ignore"):
        j = tp_e / np.asarray(p, dtype=np.float64)[None, :] - fp_e / np.asarray(n, dtype=np.float64)[None, :]
    g = np.argmax(j, axis=0)
    before = np.maximum(g - 1, 0)[None, :]
    return np.take_along_axis(tp_e, before, axis=0)[0], np.take_along_axis(fp_e, before, axis=0)[0], g


def _check_rule(rule: str) -> None:
    if rule not in THRESHOLD_RULES:
        raise ProbeError(f"The threshold rule must be 'ge' (score >= threshold) or 'gt' (score > threshold, the "
                         f"reference study's). Got {rule!r}.")


# ----------------------------------------------------------------------------------------------- point metrics
def _per_label(y_true, scores, which: int):
    y, s, one_d = _as_2d(y_true, scores)
    ones = np.ones((y.shape[0], 1), dtype=np.float64)
    out = np.array([_auroc_ap(_prep(y[:, k], s[:, k]), ones)[which][0] for k in range(y.shape[1])])
    return float(out[0]) if one_d else out


def auroc(y_true, scores) -> np.ndarray | float:
    """Area under the ROC curve per label (NaN where a label has one known class).

    Parameters
    ----------
    y_true : array (N, K) or (N,)
        1 / 0 / NaN (unknown, masked out for that label).
    scores : array (N, K) or (N,)
        Higher means more likely positive.

    Returns
    -------
    ndarray (K,) or float
        Equal to ``sklearn.metrics.roc_auc_score`` per label, ties included.

    Examples
    --------
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    return _per_label(y_true, scores, 0)


def average_precision(y_true, scores) -> np.ndarray | float:
    """Average precision per label (step-wise, sklearn's definition); NaN where a label has one known class.

    Parameters
    ----------
    y_true : array (N, K) or (N,)
    scores : array (N, K) or (N,)

    Returns
    -------
    ndarray (K,) or float
        Equal to ``sklearn.metrics.average_precision_score`` per label, ties included.
    """
    return _per_label(y_true, scores, 1)


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of one label (unknown rows dropped): ``(fpr, tpr, thresholds)``, each (G + 1,), from (0, 0)."""
    y, s, _ = _as_2d(np.ravel(y_true), np.ravel(scores))
    lab = _prep(y[:, 0], s[:, 0])
    ones = np.ones((y.shape[0], 1))
    tp, fp = _group_curves(lab, ones, y[:, 0] == 1.0)
    p, n = max(lab.pos.size, 1), max(lab.neg.size, 1)
    return np.r_[0.0, fp[:, 0] / n], np.r_[0.0, tp[:, 0] / p], np.r_[np.inf, lab.group_scores]


def youden_thresholds(y_true, scores, *, default: float = 0.5, rule: ThresholdRule = "ge") -> np.ndarray:
    """Per-label threshold maximising Youden's J (TPR - FPR) on the given rows (use validation rows).

    Parameters
    ----------
    y_true : array (N, K)
    scores : array (N, K)
    default : float
        Threshold of a label with one known class (the reference study's 0.5).
    rule : {"ge", "gt"}
        How the threshold will be applied (see the module docstring). ``"gt"`` returns sklearn ``roc_curve``'s
        threshold at ``argmax(tpr - fpr)``, possibly ``inf``.

    Returns
    -------
    ndarray (K,)
        Predict positive when ``score >= threshold`` (``rule="ge"``) or ``score > threshold`` (``rule="gt"``).

    Examples
    --------
    >>> youden_thresholds([[0], [0], [1], [1]], [[0.1], [0.4], [0.35], [0.8]]).tolist()
    [0.35]
    """
    _check_rule(rule)
    y, s, _ = _as_2d(y_true, scores)
    ones = np.ones((y.shape[0], 1))
    out = np.full(y.shape[1], default, dtype=np.float64)
    for k in range(y.shape[1]):
        lab = _prep(y[:, k], s[:, k])
        if lab.pos.size and lab.neg.size:
            tp, fp = _group_curves(lab, ones, y[:, k] == 1.0)
            _, _, g = _youden_counts(tp, fp, np.array([lab.pos.size]), np.array([lab.neg.size]), rule)
            out[k] = lab.group_scores[g[0]] if rule == "ge" else np.r_[np.inf, lab.group_scores][g[0]]
    return out


def threshold_metrics(y_true, scores, thresholds, *, rule: ThresholdRule = "ge") -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, sensitivity, specificity, precision and F1 per label at fixed thresholds.

    Parameters
    ----------
    y_true : array (N, K)
    scores : array (N, K)
    thresholds : array (K,)
    rule : {"ge", "gt"}
        Predict positive when ``score >= threshold`` (default) or ``score > threshold`` (the reference study).

    Returns
    -------
    dict name -> ndarray (K,)
    """
    _check_rule(rule)
    y, s, _ = _as_2d(y_true, scores)
    out = _fixed_threshold_rates(y, s, np.ones((1, y.shape[0]), dtype=np.float32), thresholds, rule=rule)
    return {m: v[0] for m, v in out.items()}


def _fixed_threshold_rates(y, s, w, thresholds, *, rule: str = "ge") -> dict[str, np.ndarray]:
    """(B, K) threshold metrics; all labels and resamples in one matmul of the weights with 0/1 indicators."""
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (y.shape[1],))
    pred = s > thr[None, :] if rule == "gt" else s >= thr[None, :]
    pos, neg = y == 1.0, y == 0.0
    ind = np.concatenate([pos & pred, neg & pred, pos, neg], axis=1).astype(np.float32)
    # Counts are integers below 2**24, so float32 products are exact.
    tp, fp, p, n = np.split(np.asarray(w, dtype=np.float32) @ ind, 4, axis=1)
    return _rates(tp, fp, p, n)


def _positive_rank_sums(a: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(H,) sum of the positives' midranks (1-based, ties averaged) in each column of ``a`` (n, H)."""
    n = a.shape[0]
    order = np.argsort(a, axis=0, kind="stable")
    sa = np.take_along_axis(a, order, axis=0)
    idx = np.arange(n)[:, None]
    first = np.ones(sa.shape, dtype=bool)
    first[1:] = sa[1:] != sa[:-1]
    last = np.ones(sa.shape, dtype=bool)
    last[:-1] = first[1:]
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=0)
    end = np.minimum.accumulate(np.where(last, idx, n - 1)[::-1], axis=0)[::-1]
    return np.sum((0.5 * (start + end) + 1.0) * pos[order], axis=0)


def auroc_many(y_true, scores) -> np.ndarray:
    """AUROC of many score sets at once (e.g. every head of a grid), per label, with midranks for ties.

    Parameters
    ----------
    y_true : array (N, K)
        1 / 0 / NaN.
    scores : array (N, H, K)
        H candidate score sets.

    Returns
    -------
    ndarray (H, K)
        NaN where a label has one known class.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores)
    if s.ndim != 3 or s.shape[0] != y.shape[0] or s.shape[2] != y.shape[1]:
        raise ProbeError(f"scores must be (N, H, K) with y_true (N, K); got {s.shape} and {y.shape}.")
    out = np.full((s.shape[1], y.shape[1]), np.nan)
    for k in range(y.shape[1]):
        known = ~np.isnan(y[:, k])
        pos = y[known, k] == 1.0
        p, n = int(pos.sum()), int((~pos).sum())
        if p == 0 or n == 0:
            continue
        out[:, k] = (_positive_rank_sums(s[known, :, k], pos) - p * (p + 1) / 2) / (p * n)
    return out


def mean_over_labels(values: np.ndarray) -> np.ndarray | float:
    """NaN-ignoring mean over the last axis (labels); NaN where every label is NaN, without a warning."""
    v = np.asarray(values, dtype=np.float64)
    cnt = np.sum(~np.isnan(v), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.nansum(v, axis=-1) / cnt
    return float(m) if np.ndim(m) == 0 else m


# ----------------------------------------------------------------------------------------------- resampled metrics
def resampled_metrics(
    y_true,
    scores,
    weights: np.ndarray,
    *,
    thresholds: np.ndarray | None = None,
    threshold_mode: ThresholdMode = "val",
    rule: ThresholdRule = "ge",
    chunk_elems: int = 8_000_000,
) -> dict[str, np.ndarray]:
    """Every metric on every resample at once.

    Parameters
    ----------
    y_true : array (N, K)
    scores : array (N, K)
    weights : array (B, N)
        Multiplicity of each row in each resample (``BootstrapPlan.counts()``); ``np.ones((1, N))`` is the full set.
    thresholds : array (K,), optional
        Fixed thresholds (``threshold_mode="val"``: chosen on validation). Without them, threshold metrics are
        omitted unless ``threshold_mode="youden-test"``.
    threshold_mode : {"val", "youden-test"}
        ``"youden-test"`` re-picks Youden's threshold on each resample of the test set (the reference study's
        protocol; optimistic, reported for comparability only).
    rule : {"ge", "gt"}
        Threshold rule of both modes: ``"gt"`` is the reference study's (``score > threshold`` at sklearn
        ``roc_curve``'s Youden threshold; see the module docstring), ``"ge"`` the default.
    chunk_elems : int
        Resamples are processed in chunks of about this many (row, resample) cells to bound memory.

    Returns
    -------
    dict name -> ndarray (B, K)
        ``auroc``, ``ap`` and the threshold metrics; NaN where a label has one class in a resample.
    """
    y, s, _ = _as_2d(y_true, scores)
    w = np.asarray(weights)
    if w.ndim != 2 or w.shape[1] != y.shape[0]:
        raise ProbeError(f"weights must be (B, {y.shape[0]}); got {w.shape}.")
    if threshold_mode not in ("val", "youden-test"):
        raise ProbeError(f"threshold_mode must be 'val' or 'youden-test'; got {threshold_mode!r}.")
    _check_rule(rule)
    b_total, k_total = w.shape[0], y.shape[1]
    out = {m: np.full((b_total, k_total), np.nan) for m in ("auroc", "ap")}
    labels = [_prep(y[:, k], s[:, k]) for k in range(k_total)]
    youden = threshold_mode == "youden-test"
    if youden:
        out.update({m: np.full((b_total, k_total), np.nan) for m in THRESHOLD_METRICS})
    elif thresholds is not None:
        out.update(_fixed_threshold_rates(y, s, w, thresholds, rule=rule))
    step = max(1, chunk_elems // max(1, y.shape[0]))
    for b0 in range(0, b_total, step):
        # (N, B) layout: a row gather then copies contiguous resample vectors.
        wt = np.ascontiguousarray(w[b0 : b0 + step].T, dtype=np.float32)
        sl = slice(b0, b0 + wt.shape[1])
        for k, lab in enumerate(labels):
            auc, ap, p, n = _auroc_ap(lab, wt)
            out["auroc"][sl, k] = auc
            out["ap"][sl, k] = ap
            if youden and lab.order.size:
                tp, fp = _group_curves(lab, wt, y[:, k] == 1.0)
                tp_b, fp_b, _ = _youden_counts(tp, fp, p, n, rule)
                for name, v in _rates(tp_b, fp_b, p, n).items():
                    out[name][sl, k] = v
    return out


def single_class_labels(y_true) -> np.ndarray:
    """(K,) bool: labels whose known values hold one class only (or none)."""
    y = np.asarray(y_true, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    pos = np.nansum(y == 1, axis=0)
    neg = np.nansum(y == 0, axis=0)
    return (pos == 0) | (neg == 0)


def warn_single_class(y_true, label_names=None) -> list[str]:
    """Warn (``SingleClassWarning``) about labels with one known class; return the messages."""
    bad = np.flatnonzero(single_class_labels(y_true))
    msgs = []
    for k in bad:
        name = label_names[k] if label_names is not None else str(k)
        msgs.append(f"label '{name}' has one class in the evaluated rows; its metrics are NaN and excluded from means")
    for m in msgs:
        warnings.warn(m, SingleClassWarning, stacklevel=3)
    return msgs


_LAZY = {"bootstrap_indices": "probes.bootstrap", "paired_compare": "probes.bootstrap",
         "BootstrapPlan": "probes.bootstrap", "evaluate": "probes.evaluate", "Evaluation": "probes.evaluate"}


def __getattr__(name: str):
    # The bootstrap and evaluation live in their own modules (they import this one); re-exported here lazily.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'probes.metrics' has no attribute {name!r}")
