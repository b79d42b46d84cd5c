"""Backbone registry, loaders and feature views.

>>> from embedkit.backbones import load_backbone, list_backbones
>>> [s.name for s in list_backbones()][:2]
['dinov3-vits16', 'dinov3-vits16plus']

Importing this package is cheap: torch, transformers and timm are imported when a backbone is loaded.
"""
from __future__ import annotations

from embedkit.backbones.base import Backbone, resolve_precision
from embedkit.backbones.load import load_backbone
from embedkit.backbones.resolve import Location, resolve_backbone
from embedkit.backbones.spec import (
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    find_spec,
    get_spec,
    list_backbones,
    register_backbone,
)
from embedkit.backbones.views import CONVNEXT_VIEW_PATTERNS, VIT_VIEW_PATTERNS

__all__ = [
    "Backbone", "BackboneSpec", "Location", "load_backbone", "resolve_backbone", "register_backbone",
    "list_backbones", "get_spec", "find_spec", "resolve_precision", "IMAGENET_MEAN",
    "IMAGENET_STD", "HALF_MEAN", "HALF_STD", "VIT_VIEW_PATTERNS", "CONVNEXT_VIEW_PATTERNS",
]
