"""Backbone families: one registered :class:`BackboneFamily` per way of building a backbone.

A family says which library builds the module, which transformers ``model_type`` values it owns, its licence and
normalisation defaults, where its blocks / final norm / stages sit, and which loader builds it. Adding a family is
one :func:`register_family` call in this file: :func:`embedkit.backbones.load_backbone`, the resolver
(``config.json`` -> spec), ``embedkit models`` and the tests all read the registry.

Arrows: this module imports the loader modules lazily (inside the three ``_load_*`` functions), and none of them
imports it back: :func:`load_backbone` hands each loader its family object.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from embedkit.backbones.spec import HALF_MEAN, HALF_STD
from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD
from embedkit.errors import ModelError

__all__ = ["BackboneFamily", "register_family", "get_family", "list_families", "family_for_model_type",
           "families_help"]

#: ``load(spec, location, *, family, device, precision, views, allow_download) -> Backbone``
Loader = Callable[..., Any]


@dataclass(frozen=True)
class BackboneFamily:
    """One way of building a backbone.

    Attributes
    ----------
    name : str
        Registry key; a :class:`~embedkit.backbones.spec.BackboneSpec` names it in ``loader``.
    library : {"transformers", "timm"}
        Library that builds the module.
    load : callable
        ``load(spec, location, *, family, device, precision, views, allow_download) -> Backbone``.
    description : str
        One line for ``embedkit models``.
    arch : {"vit", "convnext"} or None
        Feature-view family of every model it builds; None when the checkpoint decides (timm, original files).
    model_types : tuple of str
        transformers ``config.model_type`` values it owns (a ``save_pretrained`` folder or hub id is resolved to
        the family owning its model type).
    license : str
        Licence tag given to unregistered models of the family.
    mean, std : tuple of 3 floats
        Normalisation given to unregistered models without a ``preprocessor_config.json``.
    layers : callable or None
        ``layers(module) -> (blocks, final_norm)`` for transformers ViTs, ``(stages, None)`` for ConvNeXts.
    forward_kwargs : tuple of (str, value)
        Extra keyword arguments of the module's forward (HF ViT: position-embedding interpolation).
    ignores_partial_patches : bool
        Accept a side that is not a multiple of the patch (the last ``side % patch`` pixels never enter a patch),
        as the study ran HF DINOv2 at 512 and 1024.
    pooled : str
        Definition of the ``pooled`` view (ConvNeXts), recorded in provenance.
    tiny_kinds : tuple of str
        :data:`embedkit.testing.TINY_KINDS` that build a tiny random model of this family (the tests load each one
        and check it went through this family).
    """

    name: str
    library: Literal["transformers", "timm"]
    load: Loader
    description: str
    arch: Literal["vit", "convnext"] | None = None
    model_types: tuple[str, ...] = ()
    license: str = "unknown"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layers: Callable[[Any], tuple[Any, Any]] | None = None
    forward_kwargs: tuple[tuple[str, Any], ...] = ()
    ignores_partial_patches: bool = False
    pooled: str = ""
    tiny_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.library == "transformers" and (not self.model_types or self.layers is None or self.arch is None):
            raise ModelError(f"Backbone family {self.name!r}: a transformers family needs model_types, arch and "
                             "layers.")


_FAMILIES: dict[str, BackboneFamily] = {}


def register_family(family: BackboneFamily) -> BackboneFamily:
    """Register ``family`` under ``family.name``.

    Raises
    ------
    ModelError
        The name, or one of its transformers model types, is taken.
    """
    if family.name in _FAMILIES:
        raise ModelError(f"Backbone family {family.name!r} is already registered; pick another name.")
    taken = {t: f.name for f in _FAMILIES.values() for t in f.model_types}
    clash = [t for t in family.model_types if t in taken]
    if clash:
        raise ModelError(f"Model type {clash[0]!r} already belongs to family {taken[clash[0]]!r}.")
    _FAMILIES[family.name] = family
    return family


def list_families() -> list[BackboneFamily]:
    """All registered families, in registration order."""
    return list(_FAMILIES.values())


def get_family(name: str) -> BackboneFamily:
    """The family called ``name``.

    Raises
    ------
    ModelError
        Unknown name (a spec naming no registered family).
    """
    if name not in _FAMILIES:
        raise ModelError(f"No backbone family {name!r}; registered: {', '.join(_FAMILIES)}. A BackboneSpec names "
                         "its family in `loader`.")
    return _FAMILIES[name]


def family_for_model_type(model_type: str | None, *, what: str = "this model") -> BackboneFamily:
    """The transformers family owning ``config.model_type``.

    Raises
    ------
    ModelError
        A model type no family owns; the message lists the supported ones.

    Examples
    --------
    >>> family_for_model_type("dinov2_with_registers").name
    'dinov2'
    """
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in _FAMILIES.values() for t in f.model_types)
    raise ModelError(f"Model type {model_type!r} of {what} is not supported; supported transformers model types: "
                     f"{supported}.")


def families_help() -> str:
    """``name: description`` of every family, for help texts."""
    return "; ".join(f"{f.name}: {f.description}" for f in _FAMILIES.values())


# -- loaders (imported on first use: torch, transformers and timm stay unloaded until a model is built) ----------

def _load_transformers(*args: Any, **kwargs: Any) -> Any:
    from embedkit.backbones.hf import load_hf

    return load_hf(*args, **kwargs)


def _load_timm(*args: Any, **kwargs: Any) -> Any:
    from embedkit.backbones.timm_backbones import load_timm

    return load_timm(*args, **kwargs)


def _load_original(*args: Any, **kwargs: Any) -> Any:
    from embedkit.backbones.original import load_original

    return load_original(*args, **kwargs)


# -- the families -----------------------------------------------------------------------------------------------

register_family(BackboneFamily(
    name="dinov3-vit", library="transformers", load=_load_transformers, arch="vit", model_types=("dinov3_vit",),
    license="dinov3-license", layers=lambda m: (m.model.layer, m.norm),
    tiny_kinds=("dinov3-vit", "dinov3-vit-7b-style"),
    description="DINOv3 ViTs in transformers (DINOv3ViTModel; CLS + 4 registers + patches)"))
register_family(BackboneFamily(
    name="dinov3-convnext", library="transformers", load=_load_transformers, arch="convnext",
    model_types=("dinov3_convnext",), license="dinov3-license", layers=lambda m: (m.model.stages, None),
    pooled="pooler_output (HF DINOv3ConvNextModel): the final LayerNorm of the global average of the last stage map "
           "(== last_hidden_state[:, 0])",
    tiny_kinds=("dinov3-convnext",), description="DINOv3 ConvNeXts in transformers (DINOv3ConvNextModel)"))
register_family(BackboneFamily(
    name="dinov2", library="transformers", load=_load_transformers, arch="vit",
    model_types=("dinov2", "dinov2_with_registers"), license="apache-2.0",
    layers=lambda m: (m.encoder.layer, m.layernorm),
    # The stride-14 patch convolution floors the grid (512 -> 36x36) and drops the last 8 columns and rows, as the
    # reference study ran it; recorded through Backbone.input_geometry().
    ignores_partial_patches=True, tiny_kinds=("dinov2", "dinov2-reg"),
    description="DINOv2 ViTs, with or without registers, in transformers (Dinov2Model, Dinov2WithRegistersModel)"))
register_family(BackboneFamily(
    name="vit", library="transformers", load=_load_transformers, arch="vit", model_types=("vit",),
    mean=HALF_MEAN, std=HALF_STD, layers=lambda m: (m.encoder.layer, m.layernorm),
    forward_kwargs=(("interpolate_pos_encoding", True),),
    description="supervised ViTs in transformers (ViTModel; position embeddings interpolated to the input)"))
register_family(BackboneFamily(
    name="convnext", library="transformers", load=_load_transformers, arch="convnext", model_types=("convnext",),
    layers=lambda m: (m.encoder.stages, None), tiny_kinds=("convnext",),
    pooled="pooler_output (HF ConvNextModel): the final LayerNorm of the global average of the last stage map",
    description="supervised ConvNeXts in transformers (ConvNextModel)"))
register_family(BackboneFamily(
    name="timm", library="timm", load=_load_timm, tiny_kinds=("timm-vit", "timm-convnext", "timm-test-vit-file"),
    pooled="forward_head(pre_logits=True) (timm ConvNeXt): head.norm of the global average of the last stage map",
    description="timm ViTs (VisionTransformer, Eva) and ConvNeXts: timm:NAME, a timm folder, or NAME@FILE"))
register_family(BackboneFamily(
    name="original", library="timm", load=_load_original, license="dinov3-license",
    pooled="forward_head(pre_logits=True) (timm ConvNeXt): head.norm of the global average of the last stage map",
    tiny_kinds=("original-dinov3-pth", "original-dinov3-7b-style-pth", "original-dinov3-convnext-pth"),
    description="Meta's original DINOv3 .pth releases (ViT; ConvNeXt in the classic layout), built through timm"))
