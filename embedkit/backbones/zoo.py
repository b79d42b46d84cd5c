"""The study's backbones under short names (ids checked against the hub listings and ``timm.list_models``).

Plain data: :data:`ZOO` is registered by :mod:`embedkit.backbones.registry`, which imports this module (never the
reverse). Each spec names the family that builds it (``loader``, see :mod:`embedkit.backbones.families`).
"""
from __future__ import annotations

from embedkit.backbones.spec import CONVNEXT_DEFAULT_VIEWS, HALF_MEAN, HALF_STD, BackboneSpec
from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD

_GATED = "gated: accept the DINOv3 licence on the hub page, then `hf auth login`"

# (short name, hub suffix, embed dim, note)
_DINOV3_VITS = (
    ("dinov3-vits16", "vits16", 384, "ViT-S/16, 21.6M params"),
    ("dinov3-vits16plus", "vits16plus", 384, "ViT-S+/16 (SwiGLU), 28.7M params"),
    ("dinov3-vitb16", "vitb16", 768, "ViT-B/16, 85.7M params; the study's DINOv3 ViT-B"),
    ("dinov3-vitl16", "vitl16", 1024, "ViT-L/16, 0.3B params"),
    ("dinov3-vith16plus", "vith16plus", 1280, "ViT-H+/16 (SwiGLU), 0.8B params"),
    ("dinov3-7b", "vit7b16", 4096, "ViT-7B/16 (SwiGLU, no qkv bias), 6.7B params; 26.9 GB fp32 / 13.4 GB bf16"),
)
_DINOV3_CONVNEXTS = (
    ("tiny", 768, "27.8M params"),
    ("small", 768, "49.5M params"),
    ("base", 1024, "87.6M params; the study's DINOv3 ConvNeXt-B"),
    ("large", 1536, "0.2B params"),
)
_DINOV2 = (("s", "small", 384), ("b", "base", 768), ("l", "large", 1024), ("g", "giant", 1536))

_specs: list[BackboneSpec] = []

for _name, _suffix, _dim, _note in _DINOV3_VITS:
    _specs.append(BackboneSpec(
        name=_name, source="transformers", hub_id=f"facebook/dinov3-{_suffix}-pretrain-lvd1689m",
        embed_dim=_dim, patch_size=16, num_registers=4, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        license="dinov3-license", family="vit", loader="dinov3-vit", notes=f"{_note}; {_GATED}"))

for _size, _dim, _note in _DINOV3_CONVNEXTS:
    _specs.append(BackboneSpec(
        name=f"dinov3-convnext-{_size}", source="transformers",
        hub_id=f"facebook/dinov3-convnext-{_size}-pretrain-lvd1689m", embed_dim=_dim, patch_size=32,
        num_registers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD, license="dinov3-license", family="convnext",
        default_views=CONVNEXT_DEFAULT_VIEWS, loader="dinov3-convnext",
        notes=f"ConvNeXt-{_size[0].upper()}, {_note}; {_GATED}"))

for _letter, _word, _dim in _DINOV2:
    # The hub's BitImageProcessor defaults to CLIP mean/std; DINOv2 was trained with ImageNet mean/std.
    _specs.append(BackboneSpec(
        name=f"dinov2-vit{_letter}14", source="transformers", hub_id=f"facebook/dinov2-{_word}",
        embed_dim=_dim, patch_size=14, num_registers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        license="apache-2.0", family="vit", loader="dinov2",
        notes="patch 14 (no /16 DINOv2 exists); ImageNet mean/std"))
    _specs.append(BackboneSpec(
        name=f"dinov2-vit{_letter}14-reg", source="transformers",
        hub_id=f"facebook/dinov2-with-registers-{_word}", embed_dim=_dim, patch_size=14, num_registers=4,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, license="apache-2.0", family="vit", loader="dinov2",
        notes="DINOv2 with 4 register tokens; ImageNet mean/std"))

_specs.append(BackboneSpec(
    name="imagenet-vitb16", source="timm", hub_id="vit_base_patch16_224.augreg_in21k", embed_dim=768,
    patch_size=16, num_registers=0, mean=HALF_MEAN, std=HALF_STD, license="apache-2.0", family="vit",
    notes="supervised ImageNet-21k ViT-B/16; the study's `vit_base_patch16_224_in21k` (a deprecated timm alias "
          "of this name); mean/std 0.5; position embeddings interpolated to the input size"))

_specs.append(BackboneSpec(
    name="imagenet-convnext-base", source="transformers", hub_id="facebook/convnext-base-224-22k",
    embed_dim=1024, patch_size=32, num_registers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD, license="apache-2.0",
    family="convnext", default_views=CONVNEXT_DEFAULT_VIEWS, loader="convnext",
    notes="supervised ImageNet-22k ConvNeXt-B (classifier head dropped)"))

#: The study's backbones, in the order ``embedkit models`` lists them.
ZOO: tuple[BackboneSpec, ...] = tuple(_specs)
