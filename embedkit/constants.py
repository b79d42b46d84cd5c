"""Constants more than one part of embedkit needs, defined once (import them; never copy the numbers).

Pure values: importing this module costs nothing, so the backbone registry, the preprocessing presets and the test
backbones can all depend on it.
"""
from __future__ import annotations

#: ImageNet per-channel (R, G, B) mean and standard deviation of [0, 1] pixels: the input normalisation of the
#: DINOv2 / DINOv3 / ConvNeXt / ViT checkpoints embedkit registers, and the default of the ``model`` preset.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
