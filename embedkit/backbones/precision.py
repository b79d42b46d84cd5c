"""Precision of a loaded backbone, and loading weights straight into it (meta-device build, no fp32 host copy).

Modes (``load_backbone(precision=...)``; ``auto`` is ``bf16-weights`` on CUDA and ``fp32`` on CPU):

- ``fp32``: everything in float32.
- ``bf16``: float32 weights, matmuls under bf16 autocast.
- ``bf16-weights``: the weights of every ``nn.Linear`` / ``nn.Conv*`` (the matmuls: >99.9 % of a ViT's parameters;
  the patch-embedding / stem conv excepted) are stored in bf16 and run under bf16 autocast; norms (LayerNorm/RMSNorm), LayerScale, the class/register tokens
  and the residual stream stay float32 (autocast runs layer norms in fp32, and ``x + gamma * f(x)`` with an fp32
  ``x`` and ``gamma`` promotes back to fp32). Memory is that of bf16 weights (the 7B: 13.4 GB, not 26.9 GB).

Measured difference from fp32 features (CPU, tiny random DINOv3 ViT from transformers, D=32, 2 blocks, 64 px,
4-8 images; ``tests/embedkit/backbones/test_precision.py``): ``bf16-weights`` vs ``fp32`` max abs 0.007 on the cls
view (values up to 2.0) and 0.003 on mean_patch, min cosine 0.999997; the former whole-model bf16 (norms and residual
in bf16) gave 0.016 / 0.007 and 0.999988. ``bf16-weights`` features equal ``bf16`` (autocast, fp32 weights) bit for
bit: storing the weights in bf16 changes memory, not results. Real models are deeper and wider, so the GPU figure is
measured by ``benchmarks/gpu_check.sh`` (ViT-B/16 at 512 px on CUDA, ``parity`` in its JSON line).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


def _matmul_types() -> tuple[type, ...]:
    import torch.nn as nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def matmul_param_names(module: "torch.nn.Module") -> set[str]:
    """Full names of the parameters of every Linear/Conv module (weights and biases), except the convs reading the
    image itself (patch embedding / stem): they are tiny, and transformers' DINOv3 casts the pixels and hence its
    RoPE tables to the patch embedding's dtype, which would round the positions to bf16.

    Examples
    --------
    >>> import torch.nn as nn
    >>> sorted(matmul_param_names(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Linear(2, 2), nn.LayerNorm(2))))
    ['1.bias', '1.weight']
    """
    kinds = _matmul_types()
    names = set()
    for prefix, mod in module.named_modules():
        if isinstance(mod, kinds) and getattr(mod, "in_channels", None) not in (1, 3):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in mod.named_parameters(recurse=False))
    return names


def param_dtype(name: str, precision: str, matmul: set[str]) -> "torch.dtype":
    """Storage dtype of parameter ``name`` under ``precision`` (bf16 only for matmul weights in bf16-weights)."""
    import torch

    return torch.bfloat16 if precision == "bf16-weights" and name in matmul else torch.float32


def apply_precision(module: "torch.nn.Module", precision: str) -> "torch.nn.Module":
    """Convert a loaded model in place: matmul weights to bf16 for ``bf16-weights``, every other floating
    parameter and buffer to float32 (undoing a whole-model bf16 load).

    Parameters
    ----------
    module : torch.nn.Module
    precision : {"fp32", "bf16", "bf16-weights"}

    Returns
    -------
    torch.nn.Module
        ``module`` itself.
    """
    import torch

    matmul = matmul_param_names(module)
    for name, p in module.named_parameters():
        want = param_dtype(name, precision, matmul)
        if p.is_floating_point() and p.dtype != want:
            p.data = p.data.to(want)
    for mod in module.modules():
        for key, buf in mod._buffers.items():
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                mod._buffers[key] = buf.to(torch.float32)
    return module


def restore_fp32(module: "torch.nn.Module", files: Iterable[str | Path]) -> int:
    """Re-read the non-matmul parameters of a model loaded in bf16 from its ``.safetensors`` files, in float32.

    A transformers model loaded with ``dtype=bfloat16`` has its norms and LayerScale rounded to bf16; their
    exact values are small (kilobytes) and come back from the files here. Returns how many were restored;
    the others keep their bf16-rounded value (upcast by :func:`apply_precision`).
    """
    import torch
    from safetensors import safe_open

    matmul = matmul_param_names(module)
    params = dict(module.named_parameters())
    want = {n for n in params if n not in matmul}
    restored = 0
    for f in files:
        if not str(f).endswith(".safetensors"):
            continue
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                # transformers may rename on load (DINOv3: file 'layer.N...' is module 'model.layer.N...').
                hits = [n for n in want if n == key or n.endswith("." + key) or key.endswith("." + n)]
                if len(hits) != 1 or tuple(fh.get_slice(key).get_shape()) != tuple(params[hits[0]].shape):
                    continue
                p = params[hits[0]]
                p.data = fh.get_tensor(key).to(device=p.device, dtype=torch.float32)
                want.discard(hits[0])
                restored += 1
    if want:
        logger.info("%d non-matmul parameters kept their bf16-rounded values (not found in the files): %s",
                    len(want), sorted(want)[:5])
    return restored


class NeedsMaterialisedBuild(Exception):
    """A module has computed buffers this loader cannot rebuild after a meta-device build (use the classic path)."""


def load_into_meta(module: "torch.nn.Module", state_dict: dict[str, Any], *, precision: str, device: "torch.device",
                   drop_prefixes: tuple[str, ...] = ()) -> "torch.nn.Module":
    """Fill a model built on the meta device from ``state_dict``, each tensor cast straight to its storage dtype
    (:func:`param_dtype`) on ``device``: no random init, and no float32 copy of the whole model on the host.

    Parameters
    ----------
    module : torch.nn.Module
        Built under ``with torch.device("meta")``.
    state_dict : dict
        Names as in ``module.state_dict()``; consumed (emptied) so each source tensor can be freed once converted.
    precision : str
    device : torch.device
    drop_prefixes : tuple of str
        Checkpoint keys absent from the model that may be ignored (a classifier head the model was built without).

    Returns
    -------
    torch.nn.Module
        ``module``, with every parameter and buffer real.

    Raises
    ------
    KeyError
        Missing or unexpected keys (names listed).
    NeedsMaterialisedBuild
        A non-persistent buffer whose module cannot recompute it (no ``init_non_persistent_buffers``).
    """
    import torch

    own = module.state_dict(keep_vars=True)
    extra = [k for k in state_dict if k not in own and not k.startswith(drop_prefixes)]
    missing = [k for k in own if k not in state_dict]
    if extra or missing:
        raise KeyError(f"checkpoint does not match the architecture: missing {missing[:5]}, unexpected {extra[:5]}")
    owners = meta_buffer_owners(module, own)
    matmul = matmul_param_names(module)
    ready: dict[str, torch.Tensor] = {}
    for key in list(state_dict):
        tensor = state_dict.pop(key)
        if key not in own:
            continue
        ref = own[key]
        dtype = param_dtype(key, precision, matmul) if ref.is_floating_point() else ref.dtype
        ready[key] = tensor.to(device=device, dtype=dtype)
        del tensor
    module.load_state_dict(ready, strict=True, assign=True)
    for mod in owners:
        for key, buf in mod._buffers.items():
            if buf is not None and buf.is_meta:
                mod._buffers[key] = torch.empty_like(buf, device=device)
        mod.init_non_persistent_buffers()
    return module


def meta_buffer_owners(module: "torch.nn.Module", persistent: Mapping[str, Any] | None = None) -> list[Any]:
    """Modules holding non-persistent buffers, each able to recompute them (``init_non_persistent_buffers``).

    Raises
    ------
    NeedsMaterialisedBuild
        A module that cannot.
    """
    persistent = module.state_dict(keep_vars=True) if persistent is None else persistent
    owners = []
    for prefix, mod in module.named_modules():
        names = [k for k, b in mod._buffers.items()
                 if b is not None and (f"{prefix}.{k}" if prefix else k) not in persistent]
        if not names:
            continue
        if not hasattr(mod, "init_non_persistent_buffers"):
            raise NeedsMaterialisedBuild(f"{type(mod).__name__}.{names[0]}")
        owners.append(mod)
    return owners
