"""Multiple-comparison adjustment of p-values, and how a bootstrap p-value is shown.

- ``holm`` (default): Holm's step-down method, which controls the family-wise error rate under any dependence
  (statsmodels ``multipletests(method="holm")``; note statsmodels' own default is Holm-Sidak).
- ``bh``: Benjamini-Hochberg step-up, which controls the false discovery rate for independent or positively
  dependent tests (statsmodels ``"fdr_bh"``, scipy ``false_discovery_control(method="bh")``).
- ``none``: the p-values unchanged.

NaN p-values (a comparison that could not be made) stay NaN and do not count in the family size.

A bootstrap p-value is a fraction of ``n_boot`` replicates, so it cannot resolve anything below ``1 / n_boot``:
:func:`format_p` shows such values as ``<0.001`` (for 1,000 replicates) instead of a misleading ``0``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from probes.errors import ProbeError

Adjust = Literal["holm", "bh", "none"]
ADJUST_METHODS = ("holm", "bh", "none")


def adjust_pvalues(p, method: Adjust = "holm") -> np.ndarray:
    """Adjust a family of p-values for multiple comparisons.

    Parameters
    ----------
    p : array-like (M,)
        Raw p-values in [0, 1]; NaN entries are ignored (left NaN, not counted in M).
    method : {"holm", "bh", "none"}

    Returns
    -------
    ndarray (M,) float64
        Adjusted p-values, capped at 1, in the input order.

    Raises
    ------
    ProbeError
        Unknown method, or a p-value outside [0, 1].

    Examples
    --------
    >>> adjust_pvalues([0.01, 0.04, 0.03], "holm").round(4).tolist()
    [0.03, 0.06, 0.06]
    >>> adjust_pvalues([0.01, 0.04, 0.03], "bh").round(4).tolist()
    [0.03, 0.04, 0.04]
    """
    if method not in ADJUST_METHODS:
        raise ProbeError(f"The 'adjust' parameter must be one of {', '.join(ADJUST_METHODS)}. Got {method!r}.")
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.ravel()
    out = np.full(arr.shape, np.nan)
    ok = ~np.isnan(arr)
    q = arr[ok]
    if q.size and ((q < 0) | (q > 1)).any():
        raise ProbeError(f"p-values must lie in [0, 1]; got {q[(q < 0) | (q > 1)][:3].tolist()}.")
    m = q.size
    if m == 0 or method == "none":
        out[ok] = q
        return out.reshape(np.shape(p)) if np.ndim(p) else out
    order = np.argsort(q, kind="stable")
    sorted_p = q[order]
    if method == "holm":
        # p_(i) * (m - i + 1), made monotone non-decreasing from the smallest up.
        adj = np.maximum.accumulate(sorted_p * (m - np.arange(m)))
    else:
        # p_(i) * m / i, made monotone non-increasing from the largest down.
        adj = np.minimum.accumulate((sorted_p * m / np.arange(1, m + 1))[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out.reshape(np.shape(p)) if np.ndim(p) else out


def p_floor(n_boot: int) -> float:
    """The smallest p-value a bootstrap of ``n_boot`` replicates resolves: ``1 / n_boot``."""
    if n_boot < 1:
        raise ProbeError(f"n_boot must be >= 1; got {n_boot}.")
    return 1.0 / n_boot


def format_p(p: float | None, n_boot: int | None = None, *, digits: int = 3) -> str:
    """Text of a p-value: ``<0.001`` below the bootstrap's resolution, else rounded; ``-`` for a missing one.

    Parameters
    ----------
    p : float or None
    n_boot : int, optional
        Bootstrap replicates the p-value came from; below ``1 / n_boot`` the value is shown as ``<1/n_boot``.
        Without it (an asymptotic test), values below ``10**-digits`` are shown as ``<0.001``.
    digits : int
        Decimals of the shown value.

    Examples
    --------
    >>> format_p(0.0, 1000), format_p(0.0004, 1000), format_p(0.0123, 1000), format_p(0.0, 200), format_p(None)
    ('<0.001', '<0.001', '0.012', '<0.005', '-')
    """
    if p is None or not np.isfinite(p):
        return "-"
    floor = p_floor(n_boot) if n_boot else 10.0 ** -digits
    floor = max(floor, 10.0 ** -digits)
    if p < floor:
        return f"<{floor:.{digits}f}".rstrip("0").rstrip(".") if floor < 1 else "<1"
    if p >= 1:
        return "1"
    return f"{p:.{digits}f}"
