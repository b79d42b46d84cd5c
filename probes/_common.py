"""Pieces shared by the heads: input checks, train-set standardisation, BCE positive weights, device choice."""
from __future__ import annotations

import logging
import os
import warnings

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


#: CUDA_VISIBLE_DEVICES values that hide every GPU on purpose (Slurm writes ``NoDevFiles`` on GPU-less steps).
_NO_GPU_VALUES = ("", "-1", "none", "nodevfiles", "void")


def diagnose_cuda(*, count: int, compiled: bool, init_error: str | None, driver_loaded: bool,
                  visible: str | None) -> str | None:
    """Why CUDA looks present but is unusable, or None (usable, or absent on purpose).

    Parameters
    ----------
    count : int
        CUDA devices torch can use.
    compiled : bool
        Whether this torch build has CUDA (``torch.version.cuda is not None``).
    init_error : str or None
        What torch said while initialising CUDA (a driver too old for the runtime, say).
    driver_loaded : bool
        Whether an NVIDIA kernel driver is loaded (``/proc/driver/nvidia/version`` exists).
    visible : str or None
        ``CUDA_VISIBLE_DEVICES`` (None when unset).

    Returns
    -------
    str or None
        One clause naming the problem.

    Examples
    --------
    >>> diagnose_cuda(count=0, compiled=True, init_error=None, driver_loaded=False, visible="0")
    "CUDA_VISIBLE_DEVICES='0' names a GPU but torch sees none"
    """
    if count > 0:
        return None
    if init_error:
        return f"torch could not initialise CUDA: {init_error}"
    if driver_loaded:
        if not compiled:
            return "an NVIDIA driver is loaded but this torch is a CPU-only build"
        return "an NVIDIA driver is loaded but torch sees no CUDA device (driver/runtime mismatch?)"
    if visible is not None and visible.strip().lower() not in _NO_GPU_VALUES:
        return f"CUDA_VISIBLE_DEVICES={visible!r} names a GPU but torch sees none"
    return None


def cuda_status() -> tuple[int, str | None]:
    """(usable CUDA devices, why CUDA is present but unusable or None), for this process.

    torch reports a broken driver only as a warning during its first CUDA query (then caches the zero count), so the
    warning is captured here; a loaded kernel driver and ``CUDA_VISIBLE_DEVICES`` are the other two witnesses.
    """
    import torch

    init_error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/AssertionError by build
            count, init_error = 0, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if init_error is None:
        said = [str(w.message).strip() for w in caught if "CUDA" in str(w.message)]
        init_error = said[0].splitlines()[0] if said else None
    return count, diagnose_cuda(count=count, compiled=torch.version.cuda is not None, init_error=init_error,
                                driver_loaded=os.path.exists("/proc/driver/nvidia/version"),
                                visible=os.environ.get("CUDA_VISIBLE_DEVICES"))


def resolve_device(device="auto"):
    """The one device rule of the three packages (embedkit's resolver calls this one).

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when usable, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    torch.device
        ``cuda`` without an index for ``auto``/``cuda`` (the caller picks the index, e.g. per rank).

    Raises
    ------
    ProbeError
        An unknown name, or CUDA asked for where torch cannot use it (the message says why).

    Notes
    -----
    ``auto`` with CUDA present but unusable (see :func:`cuda_status`) logs a warning and returns the CPU: a silent
    fallback would turn a GPU job into a CPU job that runs 100x longer.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    name = str(device).strip().lower()
    if name == "auto":
        count, problem = cuda_status()
        if count:
            return torch.device("cuda")
        if problem:
            logger.warning("--device auto: CUDA is unusable (%s); running on the CPU. Fix CUDA, or pass --device cpu "
                           "to choose the CPU explicitly.", problem)
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ProbeError(f"The 'device' parameter must be 'auto', 'cpu', 'cuda' or 'cuda:N'. Got {device!r}.")
    if dev.type == "cuda":
        count, problem = cuda_status()
        if count == 0:
            raise ProbeError(f"Device {name!r} was asked for but CUDA is not available "
                             f"({problem or 'torch sees no CUDA device'}); use --device cpu.")
        if dev.index is not None and dev.index >= count:
            raise ProbeError(f"Device {name!r} was asked for but only {count} CUDA device(s) are visible "
                             f"(cuda:0..cuda:{count - 1}).")
    return dev


def select_best(val_scores: np.ndarray) -> int:
    """Index of the best validation mean AUROC (first on ties; NaN never wins unless all are NaN)."""
    v = np.where(np.isnan(val_scores), -np.inf, val_scores)
    return int(np.argmax(v))
