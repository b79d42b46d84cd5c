"""The finetuned model: a registry backbone, pooled as the reference study did, plus a linear head.

Pooling (as github.com/tayebiarasteh/vit-med, arXiv 2510.07191): the mean of all output tokens for DINO ViTs
(``mean_tokens``), the CLS token for the supervised ImageNet ViT (``cls``), the pooled output for ConvNeXts
(``pooled``) — the same view definitions as the embedding store's, computed by the backbone's own view code with
gradients on.
"""
from __future__ import annotations

import functools
import logging
import re
from embedkit.errors import ModelError

logger = logging.getLogger(__name__)

POOLS = ("auto", "mean_tokens", "cls", "pooled")
#: LoRA as the reference study set it (vit-med's models/lora_wrappers.py, as its training entry point calls it).
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "bias": "none"}
#: LoRA target names per family, tried in order; the first group with a match is used ("whichever exists"):
#: DINOv3 HF / DINOv2 in transformers 5 (q_proj, v_proj), older DINOv2 (query, value), timm ViTs (fused qkv);
#: ConvNeXt's pointwise MLP layers under their HF DINOv3, HF ConvNeXt and timm names.
LORA_TARGETS = {
    "vit": (("q_proj", "v_proj"), ("query", "value"), ("qkv",)),
    "convnext": (("pointwise_conv1", "pointwise_conv2"), ("pwconv1", "pwconv2"), ("fc1", "fc2")),
}
#: Parameters never decayed besides 1-D ones and biases: tokens, position tables, LayerScale.
NO_DECAY = ("cls_token", "register_tokens", "reg_token", "mask_token", "position_embeddings", "pos_embed",
            "lambda1", "gamma")
_BLOCK = re.compile(r"(?:^|\.)(?:stages\.(\d+)\.(?:layers|blocks)\.(\d+)|(?:layer|blocks)\.(\d+))\.")


def default_pool(backbone) -> str:
    """``pooled`` for ConvNeXts, ``mean_tokens`` for DINO ViTs, ``cls`` for other ViTs (ImageNet, timm)."""
    spec = backbone.spec
    if spec.family == "convnext":
        return "pooled"
    text = " ".join(str(v) for v in (spec.name, spec.hub_id, backbone.origin.get("loader"),
                                     getattr(getattr(backbone.module, "config", None), "model_type", ""))).lower()
    return "mean_tokens" if "dino" in text else "cls"


def layer_ids(module) -> tuple[dict[str, int], int]:
    """Parameter name -> layer id (0 = stem/embeddings, 1..L = blocks in order, L+1 = final norm and the rest).

    ConvNeXt downsampling layers take the id of the block that follows them (ConvNeXt-V2's ``single`` rule).
    """
    ids: dict[str, int] = {}
    keys: dict[tuple, int] = {}
    pending_after: list[str] = []
    for name, _ in module.named_parameters():
        m = _BLOCK.search(name)
        if m:
            key = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3),)
            if key not in keys:
                keys[key] = len(keys) + 1
            ids[name] = keys[key]
        elif not keys:
            ids[name] = 0
        elif "downsample" in name:
            ids[name] = len(keys) + 1
        else:
            pending_after.append(name)
    depth = len(keys)
    for name in pending_after:
        ids[name] = depth + 1
    return ids, depth


def build_model(backbone, n_labels: int, *, pool: str = "auto", mode: str = "full",
                grad_checkpointing: bool = False):
    """Backbone (made trainable) + pooling + ``Linear(D, n_labels)``.

    Parameters
    ----------
    backbone : TorchBackbone
        From ``load_backbone(..., precision="fp32")``; its module becomes trainable.
    n_labels : int
    pool : {"auto", "mean_tokens", "cls", "pooled"}
    mode : str
        ``full``, ``last:K`` (only the last K blocks, the final norm and the head train) or ``lora`` (peft LoRA
        adapters on :data:`LORA_TARGETS` with :data:`LORA`; only the adapters and the head train).
    grad_checkpointing : bool
        Recompute each block's activations in backward (non-reentrant checkpoints).

    Returns
    -------
    torch.nn.Module
        ``forward(x (B, 3, R, R)) -> logits (B, n_labels)``; attributes ``pool``, ``layer_ids``, ``depth``.

    Raises
    ------
    ModelError
        A pool the backbone does not have, a bad ``mode``, ``lora`` without peft or without a target module.
    """
    import torch
    from torch import nn

    chosen = default_pool(backbone) if pool == "auto" else pool
    if chosen not in POOLS[1:] or chosen not in backbone.views:
        raise ModelError(f"Pooling {pool!r} is not available for {backbone.spec.name!r} ({backbone.spec.family}); "
                         f"choose one of {', '.join(v for v in POOLS if v == 'auto' or v in backbone.views)}.")
    ids, depth = layer_ids(backbone.module)
    keep = parse_mode(mode, depth)
    if mode == "lora":
        add_lora(backbone.module, backbone.spec.family)
        ids, depth = layer_ids(backbone.module)  # adapters add parameters (their block is their target's)

    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone.module
            self.head = nn.Linear(int(backbone.views[chosen]), int(n_labels))
            self.pool = chosen

        def forward(self, x):
            return self.head(backbone._forward(x)[chosen].float())

    model = _Model()
    module = backbone.module
    module.train()
    for name, p in module.named_parameters():
        # mask_token is only used for masked pretraining: left trainable it gets no gradient, which DDP rejects.
        trainable = keep is None or ids.get(name, depth + 1) > depth - keep
        if mode == "lora":
            trainable = ".lora_" in name
        p.requires_grad_("mask_token" not in name and trainable)
    if getattr(getattr(module, "config", None), "pos_embed_rescale", None) is not None:
        # DINOv3's RoPE box augmentation draws a random rescale per forward in train mode; off, so the only
        # training randomness is the documented flip + rotation (and runs stay rank-count independent).
        module.config.pos_embed_rescale = None
    if grad_checkpointing:
        _checkpoint_blocks(module)
    model.layer_ids = {f"backbone.{k}": v for k, v in ids.items()}
    model.depth = depth
    model.mode = mode
    with torch.no_grad():
        nn.init.zeros_(model.head.bias)
    return model


def parse_mode(mode: str, depth: int) -> int | None:
    """``full`` / ``lora`` -> None; ``last:K`` -> K (1 <= K <= depth).

    Raises
    ------
    ModelError
    """
    if mode in ("full", "lora"):
        return None
    m = re.fullmatch(r"last:(\d+)", str(mode))
    if m and 1 <= int(m.group(1)) <= depth:
        return int(m.group(1))
    raise ModelError(f"The 'mode' parameter of finetune must be 'full', 'lora' or 'last:K' with 1 <= K <= {depth}. "
                     f"Got {mode!r}.")


def lora_targets(module, family: str) -> list[str]:
    """The first group of :data:`LORA_TARGETS` names (for ConvNeXt or ViT families) that ``module`` has."""
    from torch import nn

    names = {n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    for group in LORA_TARGETS["convnext" if family == "convnext" else "vit"]:
        if all(t in names for t in group):
            return list(group)
    raise ModelError(f"--mode lora found none of the target modules {LORA_TARGETS} in this {family} backbone; "
                     "use --mode full or last:K.")


def require_peft() -> None:
    """Raise a one-line :class:`ModelError` when peft (the ``lora`` extra) is not installed."""
    try:
        import peft  # noqa: F401 - only whether it imports
    except ImportError:
        raise ModelError("--mode lora needs peft: pip install 'embedkit[lora]' (or pip install peft).") from None


def add_lora(module, family: str) -> list[str]:
    """Inject peft LoRA adapters (:data:`LORA`) into ``module`` in place; returns the target names.

    Raises
    ------
    ModelError
        peft is not installed, or no target module exists.
    """
    require_peft()
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_targets(module, family)
    inject_adapter_in_model(LoraConfig(target_modules=targets, **LORA), module)
    return targets


def _checkpoint_blocks(module) -> None:
    """Wrap every block's forward in a non-reentrant activation checkpoint (works for HF and timm, ViT and
    ConvNeXt alike; HF's own switch does not exist for DINOv3 ConvNeXt)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    seen = set()
    for name, sub in module.named_modules():
        m = re.search(r"(?:^|\.)(?:stages\.\d+\.(?:layers|blocks)|layer|blocks)\.(\d+)$", name)
        if not m or id(sub) in seen:
            continue
        seen.add(id(sub))
        inner = sub.forward

        @functools.wraps(inner)
        def wrapped(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        sub.forward = wrapped
    if not seen:
        raise ModelError("Gradient checkpointing found no blocks in this backbone; run without "
                         "--grad-checkpointing.")


def param_groups(model, *, layer_decay: float | None) -> list[dict]:
    """Trainable parameters grouped by (lr scale, decay?): scale ``layer_decay ** (L + 1 - id)``; no weight
    decay for 1-D tensors, biases and the names in :data:`NO_DECAY`."""
    groups: dict[tuple[float, bool], list] = {}
    depth = model.depth
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = model.layer_ids.get(name, depth + 1)
        scale = 1.0 if not layer_decay else float(layer_decay) ** (depth + 1 - lid)
        decay = not (p.ndim <= 1 or name.endswith(".bias") or any(t in name for t in NO_DECAY))
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr_scale": s, "weight_decay": d} for (s, d), ps in sorted(groups.items())]
