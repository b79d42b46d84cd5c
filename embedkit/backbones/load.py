"""``load_backbone``: resolve, then build through the spec's registered family (or a custom factory)."""
from __future__ import annotations

import os
from typing import Sequence

from embedkit.backbones.base import Backbone, resolve_precision
from embedkit.backbones.checkpoint import count_params
from embedkit.backbones.families import get_family
from embedkit.backbones.hub import weight_files
from embedkit.backbones.registry import get_factory
from embedkit.backbones.resolve import resolve_backbone
from embedkit.devices import check_cpu_fallback, resolve_device


def load_backbone(model: str | os.PathLike, *, device="cpu", precision: str = "auto",
                  features: Sequence[str] | None = None, allow_download: bool = False,
                  weights: str | os.PathLike | None = None, local_rank: int = 0) -> Backbone:
    """Load a frozen backbone ready to ``embed`` pixels.

    Parameters
    ----------
    model : str or PathLike
        Registered short name (``dinov3-vitb16``; see ``embedkit models``), Hugging Face hub id, ``timm:NAME``,
        a ``save_pretrained`` folder (or a timm ``config.json`` + weights folder), a checkpoint file (``.safetensors``
        preferred; ``.pt``/``.pth`` read with ``weights_only=True``; original Meta DINOv3 ``.pth`` releases
        included), or ``MODEL@FILE``.
    device : str or torch.device
        ``"cpu"``, ``"cuda[:N]"`` or ``"auto"`` (see :func:`embedkit.devices.resolve_device`; ``auto`` with CUDA
        present but unusable warns, and refuses models over 1B parameters).
    precision : {"auto", "fp32", "bf16", "bf16-weights"}
        ``auto``: ``bf16-weights`` on CUDA, fp32 on CPU. ``bf16``: autocast with fp32 weights. ``bf16-weights``:
        Linear/conv weights stored in bf16 under bf16 autocast, norms, LayerScale and the residual stream in fp32
        (halves memory: the 7B needs 13.4 GB instead of 26.9 GB); see :mod:`embedkit.backbones.precision`. fp16 is
        refused.
    features : sequence of str, optional
        Views to compute (default: the spec's ``default_views``); see :mod:`embedkit.backbones.views`.
    allow_download : bool
        Fetch missing weights from the hub (ignored while ``HF_HUB_OFFLINE`` is set). Off by default: weights are
        loaded with ``local_files_only=True``.
    weights : str or PathLike, optional
        A checkpoint file holding the weights for ``model`` (same as ``MODEL@FILE``).
    local_rank : int
        Rank on this node: ``cuda``/``auto`` use visible GPU ``local_rank mod count``.

    Returns
    -------
    Backbone
        ``.spec``, ``.views`` (name -> dim), ``.view_definitions``, ``.embed(pixels (B,3,R,R)) -> {view: (B,D)}``,
        ``.provenance()``.

    Raises
    ------
    ModelError
        Unknown model (with close matches), unsupported architecture or view, fp16, unreadable or unsafe checkpoint.
    WeightsNotFoundError
        Weights not available locally and downloading not allowed; the message names the files and the steps.

    Examples
    --------
    >>> bb = load_backbone("dinov3-vitb16", device="cuda", features=["cls", "mean_tokens"])  # doctest: +SKIP
    >>> bb.embed(pixels)["mean_tokens"].shape  # doctest: +SKIP
    torch.Size([32, 768])
    """
    dev = resolve_device(device, local_rank=local_rank)
    prec = resolve_precision(precision, dev)
    spec, loc = resolve_backbone(model, weights=weights, allow_download=allow_download)
    check_cpu_fallback(device, dev, lambda: count_params(weight_files(loc)), model=spec.name)
    views = tuple(features) if features else None
    factory = get_factory(spec.name)
    if factory is not None:
        return factory(spec, loc, device=dev, precision=prec, features=views)  # type: ignore[return-value]
    family = get_family(spec.loader)
    return family.load(spec, loc, family=family, device=dev, precision=prec, views=views,
                       allow_download=allow_download)
