"""Backbone registry, families, loaders and feature views.

- :mod:`~embedkit.backbones.spec`: what a backbone is (:class:`BackboneSpec`); :mod:`~embedkit.backbones.zoo`: the
  study's specs; :mod:`~embedkit.backbones.registry`: the named specs (``register_backbone``).
- :mod:`~embedkit.backbones.families`: one registered :class:`BackboneFamily` per way of building a backbone
  (transformers DINOv3 ViT / ConvNeXt, DINOv2, ViT, ConvNeXt; timm; Meta's original ``.pth``), each naming its
  loader (:mod:`~embedkit.backbones.hf`, :mod:`~embedkit.backbones.timm_backbones`,
  :mod:`~embedkit.backbones.original`).
- :mod:`~embedkit.backbones.resolve` turns ``--model`` into a spec + :class:`Location` (:mod:`~embedkit.backbones.hub`);
  :mod:`~embedkit.backbones.load` builds it through its family.

>>> from embedkit.backbones import load_backbone, list_backbones
>>> [s.name for s in list_backbones()][:2]
['dinov3-vits16', 'dinov3-vits16plus']

Importing this package is cheap: torch, transformers and timm are imported when a backbone is loaded.
"""
from __future__ import annotations

from embedkit.backbones.base import Backbone, resolve_precision
from embedkit.backbones.families import BackboneFamily, get_family, list_families, register_family
from embedkit.backbones.hub import Location
from embedkit.backbones.load import load_backbone
from embedkit.backbones.registry import find_spec, get_spec, list_backbones, register_backbone
from embedkit.backbones.resolve import resolve_backbone
from embedkit.backbones.spec import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from embedkit.backbones.views import CONVNEXT_VIEW_PATTERNS, VIT_VIEW_PATTERNS

__all__ = [
    "Backbone", "BackboneSpec", "Location", "load_backbone", "resolve_backbone", "register_backbone",
    "list_backbones", "get_spec", "find_spec", "resolve_precision", "BackboneFamily", "register_family",
    "get_family", "list_families", "IMAGENET_MEAN",
    "IMAGENET_STD", "HALF_MEAN", "HALF_STD", "VIT_VIEW_PATTERNS", "CONVNEXT_VIEW_PATTERNS",
]
