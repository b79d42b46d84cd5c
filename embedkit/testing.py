"""Tiny random backbones for tests, the demo and benchmarks: built from configs, saved the way users' models are
(``save_pretrained`` + an image processor with explicit mean/std; timm's ``save_for_hf``; an original-format
DINOv3 checkpoint), then loaded back through :func:`embedkit.backbones.load_backbone` like any user model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD
from embedkit.errors import ModelError

TinyKind = Literal["dinov3-vit", "dinov3-vit-7b-style", "dinov3-convnext", "dinov2", "dinov2-reg", "convnext",
                   "timm-vit", "timm-convnext", "timm-test-vit-file", "original-dinov3-pth",
                   "original-dinov3-7b-style-pth", "original-dinov3-convnext-pth"]
TINY_KINDS: tuple[str, ...] = TinyKind.__args__  # type: ignore[attr-defined]

TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def make_tiny_backbone(kind: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny random backbone of ``kind`` and save it under ``out_dir``.

    Parameters
    ----------
    kind : str
        One of :data:`TINY_KINDS`: ``dinov3-vit`` (D=32, 2 blocks, 4 registers, patch 16), ``dinov3-vit-7b-style``
        (gated SiLU MLP, no q/v bias), ``dinov3-convnext`` (widths 16..64), ``dinov2`` / ``dinov2-reg`` (patch 14),
        ``convnext`` (HF ConvNextModel), ``timm-vit`` / ``timm-convnext`` (timm folders), ``timm-test-vit-file``
        (a ``test_vit`` weights file: load as ``timm:test_vit@FILE``), ``original-dinov3-pth`` /
        ``original-dinov3-7b-style-pth`` (fake original Meta DINOv3 ViT checkpoints, D=128, 2 heads),
        ``original-dinov3-convnext-pth`` (the ``dinov3-convnext`` model's weights in the original Meta layout).
    out_dir : str or Path
        Parent folder; the model goes to ``out_dir / f"tiny-{kind}"`` (a file for the checkpoint kinds).
    seed : int
        Seeds the random weights.

    Returns
    -------
    Path
        What to pass as ``model`` to ``load_backbone`` (folder or file).

    Examples
    --------
    >>> path = make_tiny_backbone("dinov3-vit", tmp_path)  # doctest: +SKIP
    >>> load_backbone(path).views  # doctest: +SKIP
    {'cls': 32, 'mean_tokens': 32, 'mean_patch': 32}
    """
    import torch

    if kind not in TINY_KINDS:
        raise ModelError(f"Unknown tiny backbone kind {kind!r}; choose one of {', '.join(TINY_KINDS)}.")
    out = Path(out_dir) / f"tiny-{kind}"
    torch.manual_seed(seed)
    if kind.startswith("original-"):
        path = out.with_suffix(".pth")
        path.parent.mkdir(parents=True, exist_ok=True)
        if "convnext" in kind:
            sd = dinov3_convnext_hf_to_original(tiny_dinov3_convnext().state_dict())
        else:
            sd = fake_original_dinov3(seed=seed, swiglu="7b" in kind)
        torch.save(sd, path)
        return path
    if kind.startswith("timm-"):
        return _timm(kind, out)
    return _transformers(kind, out)


def _transformers(kind: str, out: Path) -> Path:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if kind.startswith("dinov3-vit"):
        extra = dict(use_gated_mlp=True, hidden_act="silu", query_bias=False, value_bias=False) if "7b" in kind else {}
        model = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
            **TINY_VIT, patch_size=16, num_register_tokens=4, **extra))
        processor = _dinov3_processor()
    elif kind == "dinov3-convnext":
        model = tiny_dinov3_convnext(perturb=False)
        processor = _dinov3_processor()
    elif kind in ("dinov2", "dinov2-reg"):
        cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                   image_size=518)
        model = (transformers.Dinov2Model(transformers.Dinov2Config(**cfg)) if kind == "dinov2" else
                 transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
                     **cfg, num_register_tokens=4)))
        # BitImageProcessor's constructor defaults are CLIP's mean/std: pass ImageNet's explicitly.
        processor = transformers.BitImageProcessor(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                                                   size={"shortest_edge": 256}, crop_size={"height": 224,
                                                                                           "width": 224})
    else:  # convnext
        model = transformers.ConvNextModel(transformers.ConvNextConfig(hidden_sizes=[16, 32, 48, 64],
                                                                       depths=[1, 1, 1, 1]))
        processor = transformers.ConvNextImageProcessor(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    _perturb_norms(model)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _dinov3_processor():
    from transformers import DINOv3ViTImageProcessor

    return DINOv3ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=IMAGENET_MEAN,
                                   image_std=IMAGENET_STD)


def _timm(kind: str, out: Path) -> Path:
    import timm
    from timm.models._hub import save_for_hf

    if kind == "timm-test-vit-file":
        model = timm.create_model("test_vit", pretrained=False, num_classes=0)
        _perturb_norms(model)
        from safetensors.torch import save_file

        path = out.with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path
    if kind == "timm-vit":
        arch, args = "vit_base_patch16_224", dict(embed_dim=32, depth=2, num_heads=2)
    else:
        arch, args = "convnext_base", dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64))
    model = timm.create_model(arch, pretrained=False, num_classes=0, **args)
    _perturb_norms(model)
    data_config = {"mean": tuple(IMAGENET_MEAN), "std": tuple(IMAGENET_STD), "input_size": (3, 224, 224)}
    save_for_hf(model, str(out), model_args=args, safe_serialization=True, data_config=data_config)
    return out


def tiny_dinov3_convnext(*, perturb: bool = True):
    """A random ``transformers.DINOv3ConvNextModel`` (widths 16/32/48/64, depths 1/1/2/1), norms and layer scales
    perturbed unless ``perturb=False``; seed torch first for reproducible weights."""
    import transformers

    model = transformers.DINOv3ConvNextModel(transformers.DINOv3ConvNextConfig(
        hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 2, 1]))
    if perturb:
        _perturb_norms(model)
    return model.eval()


def dinov3_convnext_hf_to_original(sd: dict) -> dict:
    """Map ``transformers.DINOv3ConvNextModel`` keys to the original Meta DINOv3 ConvNeXt layout (the ``.pth``
    releases; Meta's classic ConvNeXt names): the inverse of transformers' ``convert_dinov3_convnext_to_hf.py``."""
    import re

    out = {}
    for k, v in sd.items():
        k = k.removeprefix("model.")
        k = re.sub(r"^stages\.(\d+)\.downsample_layers\.(\d+)\.", r"downsample_layers.\1.\2.", k)
        k = re.sub(r"^stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace("depthwise_conv", "dwconv").replace("pointwise_conv", "pwconv")
        out[re.sub(r"(^|\.)layer_norm\.", r"\1norm.", k)] = v.detach().clone().contiguous()
    return out


def _perturb_norms(model) -> None:
    # Fresh norms are exactly (1, 0) and fresh CLS/register tokens are often 0: perturb them so that views which
    # differ only by a norm or a token choice also differ numerically (otherwise parity tests could pass vacuously).
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 or any(t in name for t in ("cls_token", "register_tokens", "reg_token", "mask_token")):
                p.add_(torch.randn_like(p) * 0.1)


def fake_original_dinov3(*, dim: int = 128, depth: int = 2, registers: int = 4, patch: int = 16,
                         swiglu: bool = False, seed: int = 0) -> dict:
    """A random state dict in the original Meta DINOv3 ViT layout (keys as in the ``.pth`` releases).

    Standard variant: q/v biases with a zero k bias + ``bias_mask``, GELU MLP ``fc1``/``fc2``. ``swiglu=True``:
    the 7B layout (no qkv bias, SwiGLU ``w1``/``w2``/``w3``).
    """
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.02):
        return torch.randn(*shape, generator=g) * scale

    hidden = dim * 4 if not swiglu else dim * 2
    head_dim = dim // max(1, dim // 64)
    sd = {"cls_token": rnd(1, 1, dim, scale=0.5), "storage_tokens": rnd(1, registers, dim, scale=0.5),
          "mask_token": rnd(1, dim), "patch_embed.proj.weight": rnd(dim, 3, patch, patch),
          "patch_embed.proj.bias": rnd(dim), "rope_embed.periods": torch.ones(head_dim // 4),
          "norm.weight": 1 + rnd(dim, scale=0.1), "norm.bias": rnd(dim, scale=0.1)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + rnd(dim, scale=0.1), b + "norm1.bias": rnd(dim, scale=0.1),
                   b + "attn.qkv.weight": rnd(3 * dim, dim), b + "attn.proj.weight": rnd(dim, dim),
                   b + "attn.proj.bias": rnd(dim), b + "ls1.gamma": 0.5 + rnd(dim, scale=0.1),
                   b + "norm2.weight": 1 + rnd(dim, scale=0.1), b + "norm2.bias": rnd(dim, scale=0.1),
                   b + "ls2.gamma": 0.5 + rnd(dim, scale=0.1)})
        if not swiglu:
            bias = rnd(3 * dim)
            bias[dim:2 * dim] = 0  # DINOv3 keeps the k bias at zero (masked)
            mask = torch.ones(3 * dim)
            mask[dim:2 * dim] = 0
            sd.update({b + "attn.qkv.bias": bias, b + "attn.qkv.bias_mask": mask,
                       b + "mlp.fc1.weight": rnd(hidden, dim), b + "mlp.fc1.bias": rnd(hidden),
                       b + "mlp.fc2.weight": rnd(dim, hidden), b + "mlp.fc2.bias": rnd(dim)})
        else:
            sd.update({b + "mlp.w1.weight": rnd(hidden, dim), b + "mlp.w1.bias": rnd(hidden),
                       b + "mlp.w2.weight": rnd(hidden, dim), b + "mlp.w2.bias": rnd(hidden),
                       b + "mlp.w3.weight": rnd(dim, hidden), b + "mlp.w3.bias": rnd(dim)})
    return sd
