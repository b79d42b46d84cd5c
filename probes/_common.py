"""Pieces shared by the heads: input checks, train-set standardisation, BCE positive weights, device choice."""
from __future__ import annotations

import logging

import numpy as np

from probes.errors import ProbeError

logger = logging.getLogger(__name__)


def check_xy(x, y, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (features, labels) pair: (N, D) array-like and (N, K) float with NaN = unknown."""
    xa = np.asarray(x)
    ya = np.asarray(y, dtype=np.float32)
    if ya.ndim == 1:
        ya = ya[:, None]
    if xa.ndim != 2 or ya.ndim != 2 or xa.shape[0] != ya.shape[0]:
        raise ProbeError(f"{name}: features must be (N, D) and labels (N, K); got {xa.shape} and {ya.shape}.")
    if xa.shape[0] == 0:
        raise ProbeError(f"{name}: no rows. Check the split array and --label-fraction.")
    if not np.issubdtype(xa.dtype, np.floating):
        raise ProbeError(f"{name}: features must be floating point; got {xa.dtype}.")
    return xa, ya


def rows_per_chunk(d: int, *, itemsize: int = 4, budget: int = 8 << 20, minimum: int = 256) -> int:
    """Rows of a (rows, d) temporary of ``itemsize`` bytes per value that fit in ``budget`` bytes (>= ``minimum``).

    Used to bound the float32 / float64 temporaries made from a float16 feature matrix: 8 MiB at d = 4096 is
    512 float32 rows, whatever N is (still a full-speed matmul).
    """
    return max(minimum, int(budget) // max(1, int(d) * int(itemsize)))


def standardizer(x, *, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the training features in one streaming pass (float64, chunked).

    Chunks are merged with Chan et al.'s pairwise update (centred sums of squares), so large feature means do not
    cancel the variance; only one float64 chunk exists at a time, never a float32 copy of ``x``.

    Parameters
    ----------
    x : array (N, D) float (float16 stays float16; a zarr array qualifies)
    chunk : int, optional
        Rows per chunk; default keeps the float64 temporary near 4 MiB.

    Returns
    -------
    mean, std : ndarray (D,) float32
        ``std`` is floored at 1e-6 so constant features map to 0 instead of NaN.
    """
    n, d = x.shape
    chunk = chunk or rows_per_chunk(d, itemsize=8, budget=4 << 20, minimum=64)
    mean = np.zeros(d)
    m2 = np.zeros(d)
    seen = 0
    for i in range(0, n, chunk):
        xb = np.asarray(x[i : i + chunk], dtype=np.float64)
        nb = xb.shape[0]
        mb = xb.mean(axis=0)
        xb -= mb
        np.square(xb, out=xb)
        m2b = xb.sum(axis=0)
        tot = seen + nb
        delta = mb - mean
        mean += delta * (nb / tot)
        m2 += m2b + delta**2 * (seen * nb / tot)
        seen = tot
    var = m2 / max(n, 1)
    return mean.astype(np.float32), np.maximum(np.sqrt(var), 1e-6).astype(np.float32)


def positive_weights(y: np.ndarray) -> np.ndarray:
    """(K,) negatives / positives per label on the known training labels (the reference study's ``pos_weight``).

    A label with no known positive (or negative) gets 1.0: nothing to balance.
    """
    pos = np.nansum(y == 1, axis=0).astype(np.float64)
    neg = np.nansum(y == 0, axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pw = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)
    return pw.astype(np.float32)


def resolve_device(device: str):
    """``"auto"`` -> cuda when available else cpu; ``"cuda"`` without CUDA raises ProbeError."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ProbeError("device 'cuda' was asked for but CUDA is not available. Use --device cpu or auto.")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ProbeError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}.")
    return torch.device(device)


def select_best(val_scores: np.ndarray) -> int:
    """Index of the best validation mean AUROC (first on ties; NaN never wins unless all are NaN)."""
    v = np.where(np.isnan(val_scores), -np.inf, val_scores)
    return int(np.argmax(v))
