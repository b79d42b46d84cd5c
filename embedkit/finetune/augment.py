"""Device-side input pipeline for finetuning: uint8 images -> [0, 1] -> (train only) per-sample random horizontal
flip + rotation -> three channels -> the preset's mean/std.

The augmentation is the reference study's (github.com/tayebiarasteh/vit-med: ``RandomHorizontalFlip`` p=0.5 +
``RandomRotation(7)``, torchvision defaults: nearest neighbour, no expansion, fill 0), run batched on the device
with ``affine_grid`` + ``grid_sample`` instead of per image through PIL. Each row's flip and angle come from its own
key (drawn by the loop from seed, epoch and row), so the draw does not depend on batch composition or rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Augment:
    """Random horizontal flip with probability ``flip`` and rotation uniform in ``[-degrees, degrees]``."""

    flip: float = 0.5
    degrees: float = 7.0

    def params(self) -> dict:
        return {"hflip_p": self.flip, "rotation_deg": self.degrees, "interpolation": "nearest", "fill": 0,
                "expand": False, "where": "device, per sample, training batches only"}


def draw(keys: Sequence[int], aug: Augment):
    """(angles in radians (B,), flips bool (B,)) from one CPU generator per key."""
    import math

    import torch

    angles, flips = torch.empty(len(keys)), torch.empty(len(keys), dtype=torch.bool)
    g = torch.Generator()
    for i, k in enumerate(keys):
        g.manual_seed(int(k))
        u = torch.rand(2, generator=g)
        flips[i] = bool(u[0] < aug.flip)
        angles[i] = (2 * float(u[1]) - 1) * aug.degrees * math.pi / 180
    return angles, flips


def augment(x, keys: Sequence[int], aug: Augment):
    """Flip and rotate each image of ``x`` (B, C, H, W) about its centre, nearest neighbour, zeros outside.

    Parameters
    ----------
    x : Tensor (B, C, H, W) float
    keys : sequence of int (B)
        One random key per row.
    aug : Augment

    Returns
    -------
    Tensor (B, C, H, W)
    """
    import torch
    import torch.nn.functional as F

    angles, flips = draw(keys, aug)
    cos, sin = torch.cos(angles), torch.sin(angles)
    sx = torch.where(flips, -1.0, 1.0)
    # grid_sample maps output coords to input coords: rotation by theta, then an optional mirror in x.
    theta = torch.zeros(len(keys), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sx
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class Prepare:
    """``prepare(u8 (B, R, R), *, train, keys) -> (B, 3, R, R)`` for :func:`probes.finetune.fit`.

    Parameters
    ----------
    mean, std : sequence of 3 floats or None
        The preset's normalisation (None for ``paper``: x/255 only).
    aug : Augment or None
        None disables augmentation.
    channels_last : bool
        Return channels_last tensors (ConvNeXt on CUDA).
    """

    def __init__(self, mean, std, aug: Augment | None = Augment(), *, channels_last: bool = False) -> None:
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.aug = aug
        self.channels_last = channels_last

    def __call__(self, u8, *, train: bool, keys=None):
        import torch

        x = u8.to(torch.float32).div_(255.0).unsqueeze(1)  # one channel: augment once, expand after
        if train and self.aug is not None and keys is not None:
            x = augment(x, keys, self.aug)
        x = x.expand(-1, 3, -1, -1)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        else:
            x = x.contiguous()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
