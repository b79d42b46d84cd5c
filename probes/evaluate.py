"""Test-set evaluation: point metrics, bootstrap distributions and percentile CIs, per label and averaged.

The protocol follows the reference study (1,000 resamples, 95% percentile CI, label with one class -> NaN and
excluded from means) with one deliberate difference by default: threshold metrics use per-label thresholds chosen by
Youden's J on the *validation* split, so the test set never picks its own thresholds. The reference behaviour
(Youden re-picked on each test resample) is ``threshold_mode="youden-test"``.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from probes.bootstrap import BootstrapPlan
from probes.errors import ProbeError
from probes.metrics import (
    THRESHOLD_METRICS,
    SingleClassWarning,
    ThresholdMode,
    ThresholdRule,
    mean_over_labels,
    resampled_metrics,
    single_class_labels,
    youden_thresholds,
)

logger = logging.getLogger(__name__)

METRICS = ("auroc", "ap", *THRESHOLD_METRICS)


@dataclass(frozen=True)
class Evaluation:
    """Everything measured on one test set.

    Attributes
    ----------
    label_names : list[str] (K)
    point : dict name -> ndarray (K,)
        Metrics on the full test set (``auroc``, ``ap`` and the threshold metrics when thresholds were given).
    boot : dict name -> ndarray (B, K)
        The same metrics on every resample (empty without a plan).
    thresholds : ndarray (K,) or None
        The thresholds used for the point threshold metrics.
    threshold_mode : str
    ci : float
    plan : dict or None
        ``BootstrapPlan.describe()``.
    warnings : list[str]
    """

    label_names: list[str]
    point: dict[str, np.ndarray]
    boot: dict[str, np.ndarray]
    thresholds: np.ndarray | None
    threshold_mode: str
    ci: float
    plan: dict | None
    warnings: list[str] = field(default_factory=list)

    def interval(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(boot mean, sd, ci low, ci high) per label (K,) of metric ``name``; NaN without resamples."""
        k = len(self.label_names)
        if name not in self.boot:
            nan = np.full(k, np.nan)
            return nan, nan, nan, nan
        return _summarise(self.boot[name], self.ci)

    def mean_interval(self, name: str) -> tuple[float, float, float, float, float]:
        """(point, boot mean, sd, ci low, ci high) of the mean over labels of metric ``name``."""
        point = mean_over_labels(self.point[name]) if name in self.point else float("nan")
        if name not in self.boot:
            return point, float("nan"), float("nan"), float("nan"), float("nan")
        per_resample = mean_over_labels(self.boot[name])[:, None]
        m, sd, lo, hi = (float(v[0]) for v in _summarise(per_resample, self.ci))
        return point, m, sd, lo, hi

    def mean_boot(self, name: str = "auroc") -> np.ndarray:
        """(B,) mean over labels of metric ``name`` per resample."""
        return mean_over_labels(self.boot[name])

    def to_dict(self) -> dict:
        """JSON-able summary: means with CIs, and per label every metric with its CI and threshold."""
        out: dict = {"threshold_mode": self.threshold_mode, "ci": self.ci, "bootstrap": self.plan,
                     "warnings": list(self.warnings), "means": {}, "per_label": {}}
        for name in METRICS:
            if name in self.point:
                p, m, sd, lo, hi = self.mean_interval(name)
                out["means"][name] = {"value": p, "boot_mean": m, "sd": sd, "ci_low": lo, "ci_high": hi}
        for k, label in enumerate(self.label_names):
            row: dict = {"threshold": None if self.thresholds is None else float(self.thresholds[k])}
            for name in METRICS:
                if name in self.point:
                    m, sd, lo, hi = (v[k] for v in self.interval(name))
                    row[name] = {"value": float(self.point[name][k]), "boot_mean": float(m), "sd": float(sd),
                                 "ci_low": float(lo), "ci_high": float(hi)}
            out["per_label"][label] = row
        return out


def _summarise(values: np.ndarray, ci: float) -> tuple[np.ndarray, ...]:
    """(B, K) -> per column (mean, sd, low, high) ignoring NaN resamples; NaN for an all-NaN column."""
    k = values.shape[1]
    mean, sd, lo, hi = (np.full(k, np.nan) for _ in range(4))
    q = [50 * (1 - ci), 50 * (1 + ci)]
    for j in range(k):
        col = values[:, j][~np.isnan(values[:, j])]
        if col.size:
            mean[j], sd[j] = col.mean(), col.std(ddof=1) if col.size > 1 else 0.0
            lo[j], hi[j] = np.percentile(col, q)
    return mean, sd, lo, hi


def evaluate(
    y_true,
    scores,
    *,
    plan: BootstrapPlan | None = None,
    thresholds: np.ndarray | None = None,
    threshold_mode: ThresholdMode = "val",
    label_names: Sequence[str] | None = None,
    ci: float = 0.95,
    youden_rule: ThresholdRule = "ge",
) -> Evaluation:
    """Evaluate scores on a test set, with bootstrap CIs.

    Parameters
    ----------
    y_true : array (N, K)
        1 / 0 / NaN (unknown).
    scores : array (N, K)
    plan : BootstrapPlan, optional
        Resamples of these N rows (same order); without it only point metrics are computed.
    thresholds : array (K,), optional
        Per-label thresholds chosen on validation (``youden_thresholds(y_val, s_val)``).
    threshold_mode : {"val", "youden-test"}
        See the module docstring.
    label_names : sequence of str (K), optional
    ci : float
        Percentile-interval coverage (0.95).
    youden_rule : {"ge", "gt"}
        ``score >= threshold`` (default) or the reference study's strict ``score > threshold``.

    Returns
    -------
    Evaluation

    Warns
    -----
    SingleClassWarning
        For each label with one class in the test set (NaN, excluded from means) or in some resamples.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2:
        raise ProbeError(f"y_true must be (N, K); got shape {y.shape}.")
    names = list(label_names) if label_names is not None else [str(k) for k in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ProbeError(f"{len(names)} label names for {y.shape[1]} label columns.")
    if not 0 < ci < 1:
        raise ProbeError(f"ci must be in (0, 1); got {ci}.")
    if plan is not None and plan.n != y.shape[0]:
        raise ProbeError(f"bootstrap plan is for {plan.n} rows, the test set has {y.shape[0]}. "
                         "Use the test set's plan.")
    msgs: list[str] = []
    for k in np.flatnonzero(single_class_labels(y)):
        msgs.append(f"label '{names[k]}' has one class in the test set; its metrics are NaN and excluded from means")
    if threshold_mode == "youden-test":
        point_thr = youden_thresholds(y, s, rule=youden_rule)
    else:
        point_thr = thresholds
    point = resampled_metrics(y, s, np.ones((1, y.shape[0]), dtype=np.float32), thresholds=point_thr,
                              rule=youden_rule)
    point = {k: v[0] for k, v in point.items()}
    boot: dict[str, np.ndarray] = {}
    if plan is not None:
        counts = plan.counts()
        boot = resampled_metrics(y, s, counts, thresholds=thresholds, threshold_mode=threshold_mode,
                                 rule=youden_rule)
        nan_frac = np.isnan(boot["auroc"]).mean(axis=0)
        for k in np.flatnonzero((nan_frac > 0) & ~np.isnan(point["auroc"])):
            msgs.append(f"label '{names[k]}' has one class in {int(round(nan_frac[k] * plan.n_boot))} of "
                        f"{plan.n_boot} resamples; those resamples skip it")
    for m in msgs:
        warnings.warn(m, SingleClassWarning, stacklevel=2)
    return Evaluation(names, point, boot, None if point_thr is None else np.asarray(point_thr, dtype=np.float64),
                      threshold_mode, ci, None if plan is None else plan.describe(), msgs)
