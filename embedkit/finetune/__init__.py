"""Finetuning pieces that know about backbones: the model (backbone + pooling + head), layer-wise lr groups, and
the device-side augmentation. The loop itself is :mod:`probes.finetune`; the command is :mod:`embedkit.app.finetune`.
"""
from __future__ import annotations

from embedkit.finetune.augment import Augment, Prepare
from embedkit.finetune.model import POOLS, build_model, default_pool, layer_ids, param_groups, parse_mode

__all__ = ["Augment", "Prepare", "POOLS", "build_model", "default_pool", "layer_ids", "param_groups", "parse_mode"]
