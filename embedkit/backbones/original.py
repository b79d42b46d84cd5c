"""The ``original`` family: Meta's DINOv3 ``.pth`` releases (and other bare checkpoint files): spec from tensor
shapes, timm build.

The ViT releases load through timm's Eva ``checkpoint_filter_fn`` (it recognises DINOv3 by ``storage_tokens``), the
ConvNeXt releases (Meta's classic ConvNeXt key layout) through timm's ConvNeXt ``checkpoint_filter_fn``; both are
passed the state dict we read ourselves with ``weights_only=True``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from embedkit.backbones.checkpoint import (
    DINOV3_CONVNEXT_SIZES,
    infer_convnext_arch,
    infer_dinov3_arch,
    is_original_dinov3,
    is_original_dinov3_convnext,
    read_state_dict,
)
from embedkit.backbones.hub import Location
from embedkit.backbones.registry import find_spec
from embedkit.backbones.spec import CONVNEXT_DEFAULT_VIEWS, BackboneSpec
from embedkit.backbones.timm_backbones import build_timm, wrap_timm
from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD
from embedkit.errors import ModelError

_META_NAME = re.compile(r"dinov3_(vit\w+?|convnext_[a-z]+)_pretrain")


class _Shape:
    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = tuple(shape)


def read_shapes(path: str | Path) -> dict:
    """``key -> object with .shape`` without materialising the weights (safetensors header / mmap'd torch.load)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return {k: _Shape(fh.get_slice(k).get_shape()) for k in fh.keys()}
    return read_state_dict(path)


def spec_from_checkpoint(path: Path) -> BackboneSpec:
    """A spec for a bare checkpoint file; only the original DINOv3 ViT and ConvNeXt layouts carry enough to rebuild it.

    Raises
    ------
    ModelError
        Any other layout (the architecture cannot be known from the tensors alone).
    """
    shapes = read_shapes(path)
    layout = _layout(shapes)
    if layout is None:
        raise ModelError(f"Cannot tell the architecture of '{path}' from its tensors. Put a config.json next to it "
                         "(save_pretrained layout), or name the model: `--model MODEL@FILE` / "
                         "`--model timm:NAME@FILE`.")
    return layout.spec(path, shapes)


def _vit_spec(path: Path, shapes: dict) -> BackboneSpec:
    """Spec of an original DINOv3 ViT file: the registered name when the file name and width say which."""
    arch = infer_dinov3_arch(shapes)
    spec = BackboneSpec(name=f"dinov3-vit:{path.stem}", source="timm", hub_id=None, embed_dim=arch.embed_dim,
                        patch_size=arch.patch_size, num_registers=arch.num_registers, mean=IMAGENET_MEAN,
                        std=IMAGENET_STD, license="dinov3-license", family="vit", loader="original",
                        notes="original Meta DINOv3 checkpoint, loaded through timm's Eva checkpoint filter")
    m = _META_NAME.search(path.name)
    if m:
        short = "dinov3-7b" if m.group(1) == "vit7b16" else "dinov3-" + m.group(1).replace("_", "-")
        known = find_spec(short)
        if known is not None and known.embed_dim == arch.embed_dim:
            spec = replace(spec, name=known.name)
    return spec


def timm_kwargs_for_original(sd: dict) -> tuple[str, dict]:
    """timm base architecture + keyword overrides that rebuild an original-format DINOv3 ViT checkpoint."""
    arch = infer_dinov3_arch(sd)
    ratio = arch.mlp_hidden / arch.embed_dim
    if int(arch.embed_dim * ratio) != arch.mlp_hidden:
        ratio = (arch.mlp_hidden + 0.5) / arch.embed_dim
    kwargs = dict(embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads, patch_size=arch.patch_size,
                  num_reg_tokens=arch.num_registers, qkv_bias=arch.qkv_bias, mlp_ratio=ratio,
                  init_values=1e-5 if arch.layerscale else None)
    if arch.swiglu:
        # align_to=1 selects timm's split-gate SwiGLU (fc1_g/fc1_x), the layout the filter maps w1/w2 onto.
        kwargs.update(swiglu_mlp=True, swiglu_align_to=1)
    return "vit_base_patch16_dinov3", kwargs


def _convnext_size(depths: tuple[int, ...], dims: tuple[int, ...]) -> str | None:
    return next((size for size, shape in DINOV3_CONVNEXT_SIZES.items() if shape == (depths, dims)), None)


def _convnext_spec(path: Path, shapes: dict) -> BackboneSpec:
    """Spec of an original-layout ConvNeXt file: the registered ``dinov3-convnext-SIZE`` when its depths and widths
    are a DINOv3 release's and it has no classifier head (Meta's classic ConvNeXt checkpoints share the layout but
    carry ``head.weight``), a generic spec otherwise."""
    arch = infer_convnext_arch(shapes)
    dinov3 = not arch.has_head
    spec = BackboneSpec(
        name=f"{'dinov3-convnext' if dinov3 else 'convnext'}:{path.stem}", source="timm", hub_id=None,
        embed_dim=arch.dims[-1], patch_size=32, num_registers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        license="dinov3-license" if dinov3 else "unknown", family="convnext", default_views=CONVNEXT_DEFAULT_VIEWS,
        loader="original", notes=f"original-layout ConvNeXt checkpoint (depths {list(arch.depths)}, widths {list(arch.dims)}), loaded "
              "through timm's ConvNeXt checkpoint filter")
    size = _convnext_size(arch.depths, arch.dims)
    known = find_spec(f"dinov3-convnext-{size}") if dinov3 and size else None
    if known is not None and known.embed_dim == arch.dims[-1]:
        spec = replace(spec, name=known.name)
    return spec


def timm_kwargs_for_original_convnext(sd: dict) -> tuple[str, dict]:
    """timm architecture + keyword overrides that rebuild an original-layout ConvNeXt checkpoint.

    timm's ConvNeXt ``checkpoint_filter_fn`` maps ``downsample_layers.i.j`` / ``stages.i.j.{dwconv,pwconv*,gamma}``
    / ``norm`` onto its module tree; it runs when the state dict is handed to ``timm.create_model``.
    """
    arch = infer_convnext_arch(sd)
    size = _convnext_size(arch.depths, arch.dims)
    kwargs = dict(depths=arch.depths, dims=arch.dims, ls_init_value=1e-6 if arch.layerscale else None)
    return f"convnext_{size or 'base'}", kwargs


@dataclass(frozen=True)
class _Layout:
    """One original checkpoint layout: how to recognise it, its spec, and the timm build that loads it."""

    detect: Callable[[dict], bool]
    spec: Callable[[Path, dict], BackboneSpec]
    timm_args: Callable[[dict], tuple[str, dict]]


_LAYOUTS = (
    _Layout(is_original_dinov3, _vit_spec, timm_kwargs_for_original),
    _Layout(is_original_dinov3_convnext, _convnext_spec, timm_kwargs_for_original_convnext),
)


def _layout(tensors: dict) -> _Layout | None:
    return next((layout for layout in _LAYOUTS if layout.detect(tensors)), None)


def load_original(spec: BackboneSpec, loc: Location, *, family, device, precision: str, views,
                  allow_download: bool = False):
    """Build an original-format checkpoint (DINOv3 ViT, or ConvNeXt in Meta's classic layout) through timm.

    Raises
    ------
    ModelError
        A file in neither layout (e.g. a transformers ``model.safetensors`` passed as ``MODEL@FILE``), or weights
        that contradict ``spec``.
    """
    files = [Path(loc.weights_file or loc.ref)]
    sd = read_state_dict(files[0])
    layout = _layout(sd)
    if layout is None:
        raise ModelError(f"'{files[0]}' is not an original-format DINOv3 checkpoint (ViT or ConvNeXt); for a "
                         "transformers model pass its save_pretrained folder (config.json + model.safetensors) "
                         "instead.")
    arch, model_args = layout.timm_args(sd)
    module = build_timm(arch, sd, precision=precision, device=device, **model_args)
    del sd
    return wrap_timm(spec, module, arch=arch, files=files, ident=None, path=str(files[0]), family=family,
                     device=device, precision=precision, views=views)
