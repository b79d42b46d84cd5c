"""What a backbone is: :class:`BackboneSpec`, independent of where its weights live.

The registry of named specs is :mod:`embedkit.backbones.registry`; the families that know how to build one are
:mod:`embedkit.backbones.families`. This module imports neither (arrows: registry -> zoo -> spec), and importing it
is cheap (no torch).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD
from embedkit.errors import ModelError

__all__ = ["BackboneSpec", "IMAGENET_MEAN", "IMAGENET_STD", "HALF_MEAN", "HALF_STD", "VIT_DEFAULT_VIEWS",
           "CONVNEXT_DEFAULT_VIEWS", "is_hub_id"]

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
    loader : str
        Name of the registered backbone family that builds it (:mod:`embedkit.backbones.families`: ``dinov3-vit``,
        ``dinov2``, ``timm``, ``original``...). Default: ``timm`` for timm specs; a transformers spec must name its
        family.
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
    loader: str = ""

    def __post_init__(self) -> None:
        if not self.loader and self.source == "timm":
            object.__setattr__(self, "loader", "timm")
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


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is shaped like ``owner/name`` (no check that it exists)."""
    return bool(_HUB_ID.match(text)) and "--" not in text and ".." not in text
