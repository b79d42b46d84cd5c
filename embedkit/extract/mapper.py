"""The mapper of ``embedkit extract``: uint8 batches -> backbone feature views, one forward per batch.

On CPU the batch goes through ``preset.to_tensor`` and the backbone in float32. On CUDA the uint8 batch (pinned by
the loader) is copied asynchronously, turned into the normalised float tensor *on the device* (4x fewer bytes over
PCIe than shipping float32), and the outputs are copied back into pinned host buffers with an event, so that
:func:`embedkit.extract.engine.run_units` can launch the next batch before waiting for this one.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


class EmbedMapper:
    """Backbone forward over uint8 batches.

    Parameters
    ----------
    backbone : Backbone
        From :func:`embedkit.backbones.load_backbone` (already on ``device``, precision applied in ``embed``).
    preset : Preset
        ``to_tensor`` defines the float input; on CUDA its mean/std are applied on the device instead.
    device : torch.device
    """

    def __init__(self, backbone: Any, preset: Any, device: torch.device) -> None:
        self.backbone = backbone
        self.preset = preset
        self.device = device
        self.cuda = device.type == "cuda"
        self.outputs = {name: ((int(dim),), np.float32) for name, dim in backbone.views.items()}
        if self.cuda:
            # The rank's own GPU becomes the current device: events and library defaults ("cuda") follow it.
            if device.index is not None:
                torch.cuda.set_device(device)
            self._init_device_norm()

    def _init_device_norm(self) -> None:
        mean, std = _mean_std(self.preset)
        self._mean = self._std = None
        if mean is not None:
            self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """The model input for a uint8 batch.

        Parameters
        ----------
        images : torch.Tensor (B, R, R) uint8

        Returns
        -------
        torch.Tensor (B, 3, R, R) float32 on ``device``
        """
        if not self.cuda:
            return _as_tensor(self.preset.to_tensor(images.numpy()))
        return self._device_pixels(images)

    def _device_pixels(self, images: torch.Tensor) -> torch.Tensor:
        # Same arithmetic as preset.to_tensor (u8 / 255, then (x - mean) / std per channel), done where x lives.
        x = images.to(self.device, non_blocking=True)
        x = x.unsqueeze(1).to(torch.float32).div_(255.0).expand(-1, 3, -1, -1)
        if self._mean is None:  # the paper preset: x / 255 only
            return x.contiguous()
        return ((x - self._mean) / self._std).contiguous()

    def submit(self, images: torch.Tensor) -> Any:
        """Launch the forward of one batch; returns a handle for :meth:`result`."""
        x = self.pixels(images)
        with torch.inference_mode():
            out = self.backbone.embed(x)
        if not self.cuda:
            return {k: v.detach().float().numpy() for k, v in out.items()}
        host = {}
        for k, v in out.items():
            buf = torch.empty(v.shape, dtype=torch.float32, pin_memory=True)
            buf.copy_(v.detach().float(), non_blocking=True)
            host[k] = buf
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return host, event

    def result(self, handle: Any) -> dict[str, np.ndarray]:
        """Wait for a submitted batch; (B, D_view) float32 arrays per view."""
        if not self.cuda:
            return handle
        host, event = handle
        event.synchronize()
        return {k: v.numpy() for k, v in host.items()}


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))


def _mean_std(preset: Any) -> tuple[list[float] | None, list[float] | None]:
    """The per-channel mean/std that ``preset.to_tensor`` applies after scaling by 1/255 (None: no normalisation)."""
    mean, std = getattr(preset, "mean", None), getattr(preset, "std", None)
    if mean is None or std is None:
        return None, None
    return [float(v) for v in mean], [float(v) for v in std]
