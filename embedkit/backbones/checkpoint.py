"""Reading checkpoint files safely, and recognising the original Meta DINOv3 release formats (ViT and ConvNeXt).

``.safetensors`` is read with safetensors; ``.pt``/``.pth``/``.bin`` only with ``torch.load(weights_only=True)``
(a pickle that needs any non-tensor class is refused, never executed).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from embedkit.errors import ModelError

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Wrappers seen around state dicts in training checkpoints (DINOv3 training saves the teacher).
_WRAPPERS = ("state_dict", "model", "teacher", "module", "model_ema")
# DINOv3 head width by embed dim (head dim 64, except the 7B's 128); not recoverable from tensor shapes.
DINOV3_HEADS = {384: 6, 768: 12, 1024: 16, 1280: 20, 4096: 32}


def read_state_dict(path: str | Path) -> dict:
    """Load a flat ``name -> Tensor`` dict from a checkpoint file, on CPU.

    Raises
    ------
    ModelError
        Unreadable file, a pickle needing classes other than tensors (refused by ``weights_only=True``),
        or no tensors inside.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise ModelError(f"Cannot read safetensors file '{path}': {exc}") from exc
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, zip errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"Refusing to load '{path}' with weights_only=True ({first}). embedkit never unpickles arbitrary "
                "objects; re-save the weights as a plain state dict or as .safetensors.") from exc
    for key in _WRAPPERS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"'{path}' holds no state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def count_params(files) -> int | None:
    """Values stored in checkpoint files, read from their headers (safetensors) or mmap'd (``.pth``), so that a
    7B model is counted without being loaded; None when there is no file or one cannot be read.

    Parameters
    ----------
    files : sequence of path
    """
    import math

    from safetensors import safe_open

    if not files:
        return None
    total = 0
    for f in files:
        try:
            if str(f).endswith(".safetensors"):
                with safe_open(str(f), framework="pt") as fh:
                    total += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
            else:
                total += sum(v.numel() for v in read_state_dict(f).values())
        except Exception:  # noqa: BLE001 - SafetensorError, ModelError, OSError: unknown size, no refusal
            return None
    return total


@dataclass(frozen=True)
class Dinov3Arch:
    """Architecture of an original-format DINOv3 ViT checkpoint, read from its tensor shapes."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    num_registers: int
    mlp_hidden: int
    swiglu: bool
    qkv_bias: bool
    layerscale: bool


def is_original_dinov3(sd: dict) -> bool:
    """Whether ``sd`` is in the original Meta DINOv3 ViT layout (``storage_tokens``, ``blocks.N.attn.qkv``)."""
    return "storage_tokens" in sd and "blocks.0.attn.qkv.weight" in sd


def is_original_dinov3_convnext(sd: dict) -> bool:
    """Whether ``sd`` is in the original DINOv3 ConvNeXt layout (``downsample_layers.0.0``, ``stages.i.j.dwconv``)."""
    return "downsample_layers.0.0.weight" in sd and "stages.0.0.dwconv.weight" in sd


@dataclass(frozen=True)
class ConvNextArch:
    """Architecture of an original-layout (Meta classic / DINOv3) ConvNeXt checkpoint, read from tensor shapes."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    layerscale: bool
    has_head: bool


# The DINOv3 ConvNeXt releases: size -> (depths, dims) (transformers' convert_dinov3_convnext_to_hf.py).
DINOV3_CONVNEXT_SIZES = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


def infer_convnext_arch(sd: dict) -> ConvNextArch:
    """Read depths and widths of an original-layout ConvNeXt (``stages.i.j.dwconv``) from tensor shapes.

    Raises
    ------
    ModelError
        Stages not numbered 0..N-1, or a stage without blocks.
    """
    blocks: dict[int, int] = {}
    for k in sd:
        if (m := re.match(r"stages\.(\d+)\.(\d+)\.dwconv\.weight$", k)) is not None:
            i, j = int(m.group(1)), int(m.group(2))
            blocks[i] = max(blocks.get(i, 0), j + 1)
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise ModelError(f"ConvNeXt checkpoint stages are not numbered 0..N-1: found {sorted(blocks)}.")
    dims = tuple(int(sd[f"stages.{i}.0.dwconv.weight"].shape[0]) for i in range(len(blocks)))
    return ConvNextArch(depths=tuple(blocks[i] for i in range(len(blocks))), dims=dims,
                        layerscale="stages.0.0.gamma" in sd, has_head="head.weight" in sd)


def infer_dinov3_arch(sd: dict, *, num_heads: int | None = None) -> Dinov3Arch:
    """Read the architecture of an original-format DINOv3 ViT from tensor shapes.

    Parameters
    ----------
    sd : dict
        Original-format state dict.
    num_heads : int, optional
        Attention heads; default from the released widths (384:6, 768:12, 1024:16, 1280:20, 4096:32), else D // 64.
    """
    dim = int(sd["cls_token"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    swiglu = "blocks.0.mlp.w1.weight" in sd
    hidden = int(sd["blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0])
    if num_heads is None:
        num_heads = DINOV3_HEADS.get(dim, max(1, dim // 64))
        if dim not in DINOV3_HEADS:
            logger.warning("DINOv3 checkpoint of unreleased width %d: assuming %d heads (head dim 64)", dim, num_heads)
    return Dinov3Arch(
        embed_dim=dim, depth=depth, num_heads=num_heads, patch_size=int(sd["patch_embed.proj.weight"].shape[-1]),
        num_registers=int(sd["storage_tokens"].shape[1]), mlp_hidden=hidden, swiglu=swiglu,
        qkv_bias="blocks.0.attn.qkv.bias" in sd, layerscale="blocks.0.ls1.gamma" in sd)


def dinov3_original_to_hf(sd: dict) -> dict:
    """Map an original-format DINOv3 ViT state dict to ``transformers.DINOv3ViTModel`` keys (5.x module tree).

    The regexes follow transformers' ``convert_dinov3_vit_to_hf.py`` (not shipped in the wheel): qkv is split into
    q/k/v and the k bias (fixed at 0 in DINOv3) is dropped; ``mask_token`` gains a middle axis.
    """
    out = {}
    for k, v in sd.items():
        if k.endswith((".bias_mask", ".periods")) or k.startswith(("local_cls_norm", "projectors.")):
            continue
        if k == "cls_token":
            out["embeddings.cls_token"] = v
        elif k == "storage_tokens":
            out["embeddings.register_tokens"] = v
        elif k == "mask_token":
            out["embeddings.mask_token"] = v.reshape(1, 1, -1)
        elif k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out[k] = v
        elif (m := re.match(r"blocks\.(\d+)\.(.+)$", k)) is not None:
            pre, rest = f"model.layer.{m.group(1)}.", m.group(2)
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                q, kk, vv = v.chunk(3, dim=0)
                out[pre + f"attention.q_proj.{kind}"] = q
                out[pre + f"attention.v_proj.{kind}"] = vv
                if kind == "weight":
                    out[pre + "attention.k_proj.weight"] = kk
                continue
            rest = (rest.replace("attn.proj.", "attention.o_proj.").replace("ls1.gamma", "layer_scale1.lambda1")
                    .replace("ls2.gamma", "layer_scale2.lambda1").replace("mlp.fc1.", "mlp.up_proj.")
                    .replace("mlp.fc2.", "mlp.down_proj.").replace("mlp.w1.", "mlp.gate_proj.")
                    .replace("mlp.w2.", "mlp.up_proj.").replace("mlp.w3.", "mlp.down_proj."))
            out[pre + rest] = v
        else:
            logger.info("dropping unmapped DINOv3 key %s", k)
    return out
