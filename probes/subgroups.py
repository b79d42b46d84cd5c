"""Subgroup metrics: AUROC and AP per sex, age band, view and source dataset, with bootstrap CIs.

Resampling: a subgroup is scored *inside the run's own bootstrap replicates* -- each replicate's row multiplicities
(``BootstrapPlan.counts()``) restricted to the subgroup's rows -- rather than by a fresh per-subgroup resample. The
subgroup's replicate size therefore varies, and every subgroup estimate is paired with the overall one (the same
patients drawn in the same replicate), as Glocker et al. evaluate all groups within each replicate
(github.com/biomedia-mira/cxr-foundation-bias).

Levels: missing values form an ``unknown`` level (never a band); ages fall in ``[lo, hi)`` bands written
``"40-59"`` (integer bounds) and the last band is open (``"80+"``). A (group, label) with fewer than ``min_count``
positives or negatives is flagged ``small`` -- its estimate is kept but unstable (Hanley & McNeil: the AUROC's SE
depends on both counts); a group with one class gives NaN. Values are fractions (0-1), not percent.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from probes.bootstrap import BootstrapPlan
from probes.errors import ProbeError
from probes.metrics import mean_over_labels, resampled_metrics

logger = logging.getLogger(__name__)

AXES = ("sex", "age", "view", "dataset")
DEFAULT_AGE_BANDS = (0, 40, 60, 80)
MIN_COUNT = 10
UNKNOWN = "unknown"
SUBGROUP_COLUMNS = ("axis", "group", "label", "n", "positives", "negatives", "auroc", "auroc_ci_low",
                    "auroc_ci_high", "ap", "ap_ci_low", "ap_ci_high", "small")
SUBGROUP_NOTES = {
    "axis / group": "sex (F, M, unknown), age band ([lo, hi) years; last band open), view, source dataset",
    "n": "test rows in the group (each row counted once; the groups of one axis sum to the test set)",
    "positives / negatives": "rows with label 1 / 0 (unknown labels excluded); blank on the macro_avg row",
    "auroc / ap": "point estimate on the group's rows (fraction, 0-1); macro_avg = mean over labels",
    "*_ci_low / *_ci_high": "2.5th / 97.5th percentile over the run's bootstrap replicates restricted to the group",
    "small": f"fewer than the minimum count (default {MIN_COUNT}) of positives or negatives for this label (on "
             "macro_avg: for any label); the estimate is unstable",
}


def _text(values) -> np.ndarray:
    """(N,) str with missing / blank / NaN as ``unknown``."""
    out = []
    for v in np.asarray(values, dtype=object):
        s = "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()
        out.append(s if s and s.lower() not in ("nan", "none", "unknown") else UNKNOWN)
    return np.asarray(out, dtype=object).astype(str)


def age_band_labels(bands: Sequence[float]) -> list[str]:
    """Names of the bands ``[b0, b1), [b1, b2) ... [bK, inf)``.

    >>> age_band_labels((0, 40, 60, 80))
    ['0-39', '40-59', '60-79', '80+']
    """
    b = [float(x) for x in bands]
    if len(b) < 1 or any(hi <= lo for lo, hi in zip(b, b[1:])) or b[0] < 0:
        raise ProbeError(f"age bands must be increasing numbers >= 0, e.g. 0,40,60,80. Got {list(bands)!r}.")

    def f(x: float) -> str:
        return f"{x:g}"

    names = [f"{f(lo)}-{f(hi - 1)}" if lo.is_integer() and hi.is_integer() else f"{f(lo)}-<{f(hi)}"
             for lo, hi in zip(b, b[1:])]
    return names + [f"{f(b[-1])}+"]


def age_bands(ages, bands: Sequence[float] = DEFAULT_AGE_BANDS) -> np.ndarray:
    """(N,) band name of each age; missing, non-numeric or below the first bound -> ``unknown``.

    >>> age_bands([39, 40, 85, None, -1]).tolist()
    ['0-39', '40-59', '80+', 'unknown', 'unknown']
    """
    names = age_band_labels(bands)
    edges = np.asarray([float(x) for x in bands])
    out = []
    for v in np.asarray(ages, dtype=object):
        try:
            a = float(v)
        except (TypeError, ValueError):
            a = float("nan")
        out.append(UNKNOWN if not np.isfinite(a) or a < edges[0] else names[int(np.searchsorted(edges, a, "right")) - 1])
    return np.asarray(out, dtype=object).astype(str)


def normalise_sex(values) -> np.ndarray:
    """(N,) ``F`` / ``M`` / ``unknown`` from M/F, male/female (any case), else unknown.

    >>> normalise_sex(["M", "female", "", "O"]).tolist()
    ['M', 'F', 'unknown', 'unknown']
    """
    table = {"m": "M", "male": "M", "f": "F", "female": "F"}
    return np.asarray([table.get(v.lower(), UNKNOWN) for v in _text(values)], dtype=object).astype(str)


def subgroup_axes(*, sex=None, age=None, view=None, dataset=None,
                  bands: Sequence[float] = DEFAULT_AGE_BANDS) -> dict[str, np.ndarray]:
    """The level of every row on each axis that has data; an axis given as None (or all-unknown) is left out.

    Parameters
    ----------
    sex, age, view, dataset : array (N,), optional
        Per-row metadata of the test rows (display values: ``PA``, ``nih`` ... are kept as given).
    bands : sequence of float
        Lower bounds of the age bands.

    Returns
    -------
    dict axis -> ndarray (N,) of str
    """
    raw = {"sex": None if sex is None else normalise_sex(sex),
           "age": None if age is None else age_bands(age, bands),
           "view": None if view is None else _text(view),
           "dataset": None if dataset is None else _text(dataset)}
    lengths = {len(v) for v in raw.values() if v is not None}
    if len(lengths) > 1:
        raise ProbeError(f"subgroup metadata arrays must all have one entry per test row; got lengths {lengths}.")
    return {k: v for k, v in raw.items() if v is not None and (v != UNKNOWN).any()}


def _interval(boot: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """(B, K) -> per column percentile CI ignoring NaN replicates (NaN for an all-NaN column)."""
    lo = np.full(boot.shape[1], np.nan)
    hi = np.full(boot.shape[1], np.nan)
    for j in range(boot.shape[1]):
        col = boot[:, j][~np.isnan(boot[:, j])]
        if col.size:
            lo[j], hi[j] = np.percentile(col, [50 * (1 - ci), 50 * (1 + ci)])
    return lo, hi


def subgroup_metrics(
    y_true,
    scores,
    axes: Mapping[str, np.ndarray],
    *,
    label_names: Sequence[str],
    plan: BootstrapPlan | None = None,
    min_count: int = MIN_COUNT,
    ci: float = 0.95,
) -> dict:
    """AUROC and AP per subgroup, per label and averaged over labels, with bootstrap CIs.

    Parameters
    ----------
    y_true : array (N, K)
        Test labels, 1 / 0 / NaN (unknown).
    scores : array (N, K)
        Test scores, aligned with ``y_true`` (the plan's row order).
    axes : mapping axis -> array (N,) of str
        Level of each row per axis (:func:`subgroup_axes`).
    label_names : sequence of str (K)
    plan : BootstrapPlan, optional
        The run's plan over these N rows; its replicates restricted to each group give the CIs.
    min_count : int
        Fewer positives or negatives than this flags the (group, label) as ``small``.
    ci : float
        Percentile-interval coverage.

    Returns
    -------
    dict
        ``{"method": ..., "min_count": ..., "axes": {axis: {group: {"n", "per_label": {label: {...}},
        "mean": {...}}}}}``; each metric entry has ``auroc``, ``auroc_ci_low``, ``auroc_ci_high``, ``ap`` ...,
        ``positives``, ``negatives``, ``small``. Strict-JSON-ready after NaN -> null.

    Raises
    ------
    ProbeError
        Misaligned shapes or a plan for another number of rows.

    Examples
    --------
    >>> y = np.array([[1.], [0.], [1.], [0.]]); s = np.array([[.9], [.1], [.4], [.6]])
    >>> d = subgroup_metrics(y, s, {"sex": np.array(["F", "F", "M", "M"])}, label_names=["a"])
    >>> d["axes"]["sex"]["F"]["per_label"]["a"]["auroc"], d["axes"]["sex"]["M"]["n"]
    (1.0, 2)
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    names = list(label_names)
    if y.ndim != 2 or y.shape != s.shape or y.shape[1] != len(names):
        raise ProbeError(f"y_true and scores must be (N, K) with K = {len(names)} labels; got {y.shape}, {s.shape}.")
    if plan is not None and plan.n != y.shape[0]:
        raise ProbeError(f"bootstrap plan is for {plan.n} rows, the test set has {y.shape[0]}.")
    counts = plan.counts() if plan is not None else None
    doc: dict = {"method": "the run's bootstrap replicates restricted to each group's rows (paired with overall)",
                 "n_boot": 0 if plan is None else plan.n_boot, "ci": ci, "min_count": int(min_count), "axes": {}}
    for axis, levels in axes.items():
        lv = np.asarray(levels).astype(str)
        if lv.shape != (y.shape[0],):
            raise ProbeError(f"axis '{axis}' has {lv.shape} levels for {y.shape[0]} test rows.")
        groups: dict = {}
        for g in sorted(set(lv.tolist()), key=lambda v: (v == UNKNOWN, v)):
            m = lv == g
            ys, ss = y[m], s[m]
            point = resampled_metrics(ys, ss, np.ones((1, ys.shape[0]), dtype=np.float32))
            boot = resampled_metrics(ys, ss, counts[:, m]) if counts is not None else None
            pos = np.sum(ys == 1.0, axis=0)
            neg = np.sum(ys == 0.0, axis=0)
            small = (pos < min_count) | (neg < min_count)
            per_label = {}
            bounds = {k: _interval(boot[k], ci) if boot is not None else (np.full(len(names), np.nan),) * 2
                      for k in ("auroc", "ap")}
            for j, label in enumerate(names):
                per_label[label] = {"positives": int(pos[j]), "negatives": int(neg[j]), "small": bool(small[j])}
                for k in ("auroc", "ap"):
                    per_label[label].update({k: float(point[k][0, j]), f"{k}_ci_low": float(bounds[k][0][j]),
                                             f"{k}_ci_high": float(bounds[k][1][j])})
            mean = {"small": bool(small.any())}
            for k in ("auroc", "ap"):
                lo = hi = float("nan")
                if boot is not None:
                    lo_, hi_ = _interval(np.asarray(mean_over_labels(boot[k]))[:, None], ci)
                    lo, hi = float(lo_[0]), float(hi_[0])
                mean.update({k: float(mean_over_labels(point[k][0])), f"{k}_ci_low": lo, f"{k}_ci_high": hi})
            groups[g] = {"n": int(m.sum()), "per_label": per_label, "mean": mean}
        doc["axes"][axis] = groups
    return doc


def subgroup_rows(doc: dict) -> list[dict]:
    """Rows of ``subgroups.csv`` (columns :data:`SUBGROUP_COLUMNS`) from :func:`subgroup_metrics`' document."""
    rows = []
    for axis, groups in doc["axes"].items():
        for g, entry in groups.items():
            for label, v in entry["per_label"].items():
                rows.append({"axis": axis, "group": g, "label": label, "n": entry["n"], **v})
            rows.append({"axis": axis, "group": g, "label": "macro_avg", "n": entry["n"], "positives": None,
                         "negatives": None, **entry["mean"]})
    # NaN (one class in the group) is written as a blank cell.
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in rows]
