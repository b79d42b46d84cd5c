"""Device choice for the whole application: one rule, built on :func:`probes._common.resolve_device`.

``probes`` cannot import ``embedkit``, so the name-level rule (``auto``/``cpu``/``cuda[:N]``, and the loud warning
when CUDA is present but unusable) lives there; this module adds what only the application knows: which visible GPU
a rank uses, and the refusal to fall back to the CPU for a model too large to run there.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from embedkit.errors import EmbedkitError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: Above this many parameters ``--device auto`` refuses to fall back to the CPU when CUDA is broken: the ViT-7B
#: would take days there, which is never what a GPU job meant.
CPU_FALLBACK_MAX_PARAMS = 1_000_000_000


def rank_device(local_rank: int, visible_count: int) -> int:
    """Index of the visible CUDA device that local rank ``local_rank`` uses.

    With ``srun --gpus-per-task=1`` every rank sees one GPU (``cuda:0``) whatever its local rank; with all of a
    node's GPUs visible, rank r takes GPU ``r mod count`` (two ranks per GPU when there are more ranks than GPUs).

    Parameters
    ----------
    local_rank : int
        Rank on this node (``LOCAL_RANK`` / ``SLURM_LOCALID``), >= 0.
    visible_count : int
        CUDA devices this process sees (``torch.cuda.device_count()``, after ``CUDA_VISIBLE_DEVICES``).

    Returns
    -------
    int

    Raises
    ------
    EmbedkitError
        No visible device, or a negative local rank.

    Examples
    --------
    >>> rank_device(3, 1), rank_device(3, 4), rank_device(5, 4)
    (0, 3, 1)
    """
    if visible_count < 1:
        raise EmbedkitError("No CUDA device is visible to this process; check CUDA_VISIBLE_DEVICES and "
                            "--gpus-per-task, or pass --device cpu.")
    if local_rank < 0:
        raise EmbedkitError(f"The local rank must be >= 0. Got {local_rank}.")
    return local_rank % visible_count


def resolve_device(device: "str | torch.device" = "auto", *, local_rank: int = 0,
                   error: type[EmbedkitError] = ModelError) -> "torch.device":
    """``auto`` -> CUDA when usable else CPU (warning loudly when CUDA is present but broken); ``cuda`` -> this
    rank's visible GPU (:func:`rank_device`); ``cuda:N`` as given.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    local_rank : int
        Rank on this node (0 for a single process).
    error : type
        The EmbedkitError subclass raised on a bad request (ModelError for loading, ExtractionError for extract).

    Returns
    -------
    torch.device
        With an explicit index on CUDA.

    Raises
    ------
    EmbedkitError (``error``)
        Unknown name, or CUDA asked for where torch cannot use it (the reason is in the message).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    from probes._common import resolve_device as _resolve
    from probes.errors import ProbeError

    try:
        dev = _resolve(device)
    except ProbeError as exc:
        raise error(str(exc)) from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", rank_device(local_rank, torch.cuda.device_count()))
    return dev


def check_cpu_fallback(requested: "str | torch.device", device: "torch.device",
                       n_params: int | Callable[[], int | None] | None, *, model: str) -> None:
    """Refuse ``--device auto`` falling back to the CPU for a model over :data:`CPU_FALLBACK_MAX_PARAMS`.

    Parameters
    ----------
    requested : str or torch.device
        What the user asked for (only ``"auto"`` can fall back).
    device : torch.device
        What :func:`resolve_device` returned.
    n_params : int, callable or None
        Parameter count of the model, or a function computing it (only called when the check applies).
    model : str
        Name shown in the message.

    Raises
    ------
    ModelError
        CUDA is present but unusable, the device fell back to the CPU, and the model is over the limit.
    """
    if str(requested).strip().lower() != "auto" or device.type != "cpu":
        return
    from probes._common import cuda_status

    _, problem = cuda_status()
    if problem is None:
        return
    n = n_params() if callable(n_params) else n_params
    if n is not None and n > CPU_FALLBACK_MAX_PARAMS:
        raise ModelError(f"CUDA is unusable ({problem}); refusing to run {model} ({n / 1e9:.1f}B parameters) on the "
                         "CPU under --device auto. Fix CUDA, or pass --device cpu explicitly.")
