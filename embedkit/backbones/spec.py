"""Backbone specs and the registry of named backbones (timm-style: one registered spec per short name).

Importing this module is cheap (no torch): the CLI lists the registry without loading any model library.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, Literal

from embedkit.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's "inception" normalisation, used by the AugReg ImageNet-21k ViTs.
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

Source = Literal["transformers", "timm"]
Family = Literal["vit", "convnext"]

VIT_DEFAULT_VIEWS = ("cls", "mean_tokens", "mean_patch")
CONVNEXT_DEFAULT_VIEWS = ("pooled",)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is, independent of where its weights live.

    Parameters
    ----------
    name : str
        Short registry name (``dinov3-vitb16``) or a descriptive name for unregistered models.
    source : {"transformers", "timm"}
        Library that builds the module.
    hub_id : str or None
        Hugging Face hub id (``facebook/...``) for transformers, the timm model name (``arch.tag``) for timm;
        None for local models.
    embed_dim : int
        Width of the final features (ViT hidden size; ConvNeXt last-stage channels).
    patch_size : int
        ViT patch size; the total stride (32) for ConvNeXt.
    num_registers : int
        Register ("storage") tokens between the CLS token and the patch tokens (ViTs only).
    mean, std : tuple of 3 floats
        Input normalisation the weights were trained with.
    license : str
        Licence tag of the weights (``dinov3-license``, ``apache-2.0``...).
    family : {"vit", "convnext"}
        Decides which feature views exist.
    default_views : tuple of str
        Views computed when the caller does not pick any.
    notes : str
        Free text shown by ``embedkit models`` (gating, provenance of the id...).
    """

    name: str
    source: Source
    hub_id: str | None
    embed_dim: int
    patch_size: int
    num_registers: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    license: str
    family: Family = "vit"
    default_views: tuple[str, ...] = field(default=VIT_DEFAULT_VIEWS)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.source not in ("transformers", "timm"):
            raise ModelError(f"BackboneSpec.source must be 'transformers' or 'timm'. Got {self.source!r}.")
        if self.family not in ("vit", "convnext"):
            raise ModelError(f"BackboneSpec.family must be 'vit' or 'convnext'. Got {self.family!r}.")
        if self.embed_dim < 1 or self.patch_size < 1 or self.num_registers < 0:
            raise ModelError(f"BackboneSpec {self.name!r} has a non-positive dimension.")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelError(f"BackboneSpec {self.name!r} needs 3 means and 3 positive stds.")

    @property
    def weights_repo(self) -> str | None:
        """The hub repository holding the weights (timm models live under ``timm/<name>``)."""
        if self.hub_id is None:
            return None
        return self.hub_id if self.source == "transformers" else f"timm/{self.hub_id}"

    @property
    def gated(self) -> bool:
        """Whether the weights sit behind a licence click-through (all DINOv3 releases)."""
        return self.license == "dinov3-license"


# A factory builds a Backbone for a spec: factory(spec, location, *, device, precision, features) -> Backbone.
Factory = Callable[..., object]

_REGISTRY: dict[str, BackboneSpec] = {}
_FACTORIES: dict[str, Factory] = {}


def register_backbone(spec: BackboneSpec) -> Callable[[Factory], Factory]:
    """Register ``spec`` under ``spec.name``; optionally decorate a custom factory for it.

    Parameters
    ----------
    spec : BackboneSpec
        The spec; its name must not be registered yet.

    Returns
    -------
    callable
        A decorator. Applied to ``factory(spec, location, *, device, precision, features) -> Backbone`` it makes
        ``load_backbone(spec.name)`` use that factory instead of the built-in loaders.

    Examples
    --------
    >>> register_backbone(BackboneSpec(name="my-vit", source="timm", hub_id="vit_small_patch16_224.augreg_in21k",
    ...     embed_dim=384, patch_size=16, num_registers=0, mean=HALF_MEAN, std=HALF_STD, license="apache-2.0"))
    ... # doctest: +SKIP
    """
    if spec.name in _REGISTRY:
        raise ModelError(f"Backbone {spec.name!r} is already registered; pick another name.")
    _REGISTRY[spec.name] = spec

    def decorate(factory: Factory) -> Factory:
        _FACTORIES[spec.name] = factory
        return factory

    return decorate


def list_backbones() -> list[BackboneSpec]:
    """All registered specs, in registration order."""
    _ensure_zoo()
    return list(_REGISTRY.values())


def get_spec(name: str) -> BackboneSpec:
    """The registered spec called ``name``.

    Raises
    ------
    ModelError
        Unknown name; the message suggests close matches.
    """
    _ensure_zoo()
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ModelError(unknown_model_message(name))


def find_spec(name: str) -> BackboneSpec | None:
    """The registered spec whose name or hub id is ``name`` (None if there is none)."""
    _ensure_zoo()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for spec in _REGISTRY.values():
        if spec.hub_id is not None and name in (spec.hub_id, spec.weights_repo):
            return spec
    return None


def get_factory(name: str) -> Factory | None:
    """A custom factory registered for ``name`` (None means the built-in loaders)."""
    return _FACTORIES.get(name)


def unknown_model_message(name: str) -> str:
    """``Unknown model 'x'. Did you mean 'y'? Run 'embedkit models' to list all.``"""
    _ensure_zoo()
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
    hint = ""
    if len(close) == 1:
        hint = f" Did you mean {close[0]!r}?"
    elif close:
        hint = " Did you mean " + ", ".join(repr(c) for c in close[:-1]) + f" or {close[-1]!r}?"
    return (f"Unknown model {name!r}.{hint} Run 'embedkit models' to list all "
            "(or pass a hub id, 'timm:NAME', a directory or a checkpoint file).")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is shaped like ``owner/name`` (no check that it exists)."""
    return bool(_HUB_ID.match(text)) and "--" not in text and ".." not in text


def _ensure_zoo() -> None:
    # The zoo registers the study's models on import; importing here keeps spec.py free of a cycle.
    from embedkit.backbones import zoo  # noqa: F401
