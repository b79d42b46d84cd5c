"""The ``Backbone`` protocol and the machinery every implementation shares: device, precision, one forward
pass under ``inference_mode``, capture hooks for earlier layers/stages, float32 outputs, provenance."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from embedkit.backbones.precision import apply_precision
from embedkit.backbones.spec import BackboneSpec
from embedkit.backbones.views import ViewPlan
from embedkit.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "bf16-weights"]
PRECISIONS = ("auto", "fp32", "bf16", "bf16-weights")
#: Provenance labels. ``bf16-weights`` keeps norms, LayerScale and the residual stream in fp32 (the label says so,
#: so a store written by the former all-bf16 mode is not resumed with different features).
PRECISION_LABELS = {"fp32": "fp32", "bf16": "bf16-autocast",
                    "bf16-weights": "bf16-matmul-weights+fp32-norms+autocast"}


@runtime_checkable
class Backbone(Protocol):
    """A frozen pretrained feature extractor: pixels in, named feature views out, all from one forward pass."""

    spec: BackboneSpec

    @property
    def views(self) -> dict[str, int]: ...  # noqa: D102

    @property
    def view_definitions(self) -> dict[str, str]: ...  # noqa: D102

    def embed(self, pixels: "torch.Tensor") -> dict[str, "torch.Tensor"]: ...  # noqa: D102

    def provenance(self) -> dict[str, Any]: ...  # noqa: D102


def resolve_precision(precision: str, device: "torch.device") -> str:
    """``auto`` -> ``bf16-weights`` on CUDA (see :mod:`embedkit.backbones.precision`), fp32 elsewhere; fp16 is
    refused (DINOv3 overflows in fp16)."""
    p = str(precision).lower()
    if p in ("fp16", "float16", "half"):
        raise ModelError("Precision 'fp16' is refused: DINOv3 is not fp16-safe (activations overflow). "
                         "Use 'bf16' (autocast) on GPUs with bf16 support, or 'fp32'.")
    if p not in PRECISIONS:
        raise ModelError(f"The 'precision' parameter of load_backbone must be one of {', '.join(PRECISIONS)}. "
                         f"Got {precision!r}.")
    if p == "auto":
        return "bf16-weights" if device.type == "cuda" else "fp32"
    if p.startswith("bf16") and device.type == "cpu":
        logger.warning("bf16 on CPU is 5-10x slower than fp32 on CPUs without bf16 units")
    return p


def check_spec(spec: BackboneSpec, *, embed_dim: int, patch_size: int | None, num_registers: int,
               where: str) -> None:
    """Refuse weights whose shape contradicts the spec (e.g. a ViT-S folder passed as ``dinov3-vitb16@FILE``)."""
    got = {"embed_dim": embed_dim, "num_registers": num_registers}
    if patch_size is not None and spec.family == "vit":
        got["patch_size"] = patch_size
    bad = {k: v for k, v in got.items() if getattr(spec, k) != v}
    if bad:
        want = {k: getattr(spec, k) for k in bad}
        raise ModelError(f"The weights at {where} do not match {spec.name!r}: expected {want}, found {bad}. "
                         "Pass the folder/file on its own (--model PATH) or the matching model name.")


class TorchBackbone:
    """Shared implementation; subclasses define ``_forward(x) -> dict[view, Tensor]``.

    Parameters
    ----------
    spec : BackboneSpec
    module : torch.nn.Module
        The loaded model (eval mode is set here).
    plan : ViewPlan
        The views to compute.
    device : torch.device
    precision : str
        Resolved precision ("fp32", "bf16", "bf16-weights").
    origin : dict
        ``id``, ``path``, ``sha256``, ``files`` (name -> sha256), ``loader`` for provenance.
    """

    channels_last = False
    #: Whether a side that is not a multiple of the patch size is accepted, its last ``side % patch`` pixels
    #: (right and bottom) never entering a patch. True where the study ran it that way (HF DINOv2 at 512).
    ignores_partial_patches = False

    def __init__(self, spec: BackboneSpec, module, plan: ViewPlan, *, device, precision: str, origin: dict):
        import torch

        self.spec = spec
        self.plan = plan
        self.device = device
        self.precision = precision
        self.origin = origin
        module.eval().requires_grad_(False)
        # Cast before the move, so that the device never holds the fp32 copy (a no-op for meta-built modules).
        apply_precision(module, precision)
        module.to(device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        self.module = module
        self._captured: dict[Any, Any] = {}
        self._hooks: list[Any] = []

    # -- views -------------------------------------------------------------------------------------------------
    @property
    def views(self) -> dict[str, int]:
        """View name -> dimension, in the order they are computed."""
        return dict(self.plan.dims)

    @property
    def view_definitions(self) -> dict[str, str]:
        """View name -> exact definition (recorded in the store's provenance)."""
        return dict(self.plan.definitions)

    @property
    def input_mean(self) -> tuple[float, float, float]:
        """Per-channel mean the pixels must be normalised with (from the spec/processor)."""
        return tuple(self.spec.mean)  # type: ignore[return-value]

    @property
    def input_std(self) -> tuple[float, float, float]:
        """Per-channel std the pixels must be normalised with."""
        return tuple(self.spec.std)  # type: ignore[return-value]

    # -- forward -----------------------------------------------------------------------------------------------
    def embed(self, pixels: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        """Compute every requested view from one forward pass.

        Parameters
        ----------
        pixels : Tensor (B, 3, R, R)
            Normalised images (``input_mean``/``input_std``), float; any device (moved here).

        Returns
        -------
        dict[str, Tensor (B, D_view)]
            float32 on the backbone's device, one entry per view in ``views``.

        Raises
        ------
        ModelError
            Wrong shape, or a side not divisible by the patch size (ViTs that do not ignore partial patches;
            see :meth:`input_geometry`).
        """
        import torch

        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ModelError(f"Backbone.embed expects pixels of shape (B, 3, R, R). Got {tuple(pixels.shape)}.")
        if (self.spec.family == "vit" and not self.ignores_partial_patches
                and (pixels.shape[2] % self.spec.patch_size or pixels.shape[3] % self.spec.patch_size)):
            raise ModelError(f"Image size {tuple(pixels.shape[2:])} is not a multiple of the patch size "
                             f"{self.spec.patch_size} of {self.spec.name!r}; pick a resolution divisible by it.")
        x = pixels.to(self.device, non_blocking=True)
        # fp32 in: autocast casts at each matmul, and the residual stream starts (and stays) fp32.
        x = x.to(torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            self._captured.clear()
            try:
                out = self._forward(x)
            finally:
                self._captured.clear()
        return {name: out[name].float() for name in self.plan.dims}

    def _autocast(self):
        import contextlib

        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _forward(self, x: "torch.Tensor") -> dict[str, "torch.Tensor"]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- hooks -------------------------------------------------------------------------------------------------
    def _capture_cls(self, blocks, indices) -> None:
        """Keep only the CLS token of the given blocks' outputs (cheap even for the 7B at 1024 px)."""
        for i in indices:
            def hook(_mod, _inp, output, i=i):
                out = output[0] if isinstance(output, (tuple, list)) else output
                self._captured[("block", i)] = out[:, 0]
            self._hooks.append(blocks[i].register_forward_hook(hook))

    def _capture_stages(self, stages, indices, *, keep_map: int | None = None) -> None:
        """Keep the global average of each stage map (and the full map of stage ``keep_map``)."""
        for i in indices:
            def hook(_mod, _inp, output, i=i):
                fmap = output[0] if isinstance(output, (tuple, list)) else output
                self._captured[("stage", i)] = fmap.float().mean(dim=(-2, -1))
                if i == keep_map:
                    self._captured[("map", i)] = fmap
            self._hooks.append(stages[i].register_forward_hook(hook))

    def _blocks_cls(self) -> dict[int, "torch.Tensor"]:
        return {k[1]: v for k, v in self._captured.items() if k[0] == "block"}

    def _stage_means(self) -> dict[int, "torch.Tensor"]:
        return {k[1]: v for k, v in self._captured.items() if k[0] == "stage"}

    # -- provenance --------------------------------------------------------------------------------------------
    def input_geometry(self, resolution: int) -> dict[str, Any]:
        """How an R×R input maps onto the patch grid (ViTs), for provenance.

        Parameters
        ----------
        resolution : int
            Input side R.

        Returns
        -------
        dict
            ``resolution``, ``patch_size``, ``grid`` ([R // p, R // p]), ``used_pixels`` ((R // p) * p) and
            ``ignored_pixels`` (R % p: right columns and bottom rows that no patch covers); ``{}`` for ConvNeXts.

        Examples
        --------
        DINOv2 (p = 14) at 512: grid 36×36, the last 8 columns and rows ignored (512 = 36 * 14 + 8).
        """
        if self.spec.family != "vit":
            return {}
        r, p = int(resolution), int(self.spec.patch_size)
        return {"resolution": r, "patch_size": p, "grid": [r // p, r // p], "used_pixels": (r // p) * p,
                "ignored_pixels": r % p,
                "rule": ("the stride-p patch convolution covers pixels 0..used_pixels-1 of each side; the last "
                         "ignored_pixels columns (right) and rows (bottom) never enter a patch; position "
                         "embeddings are interpolated (bicubic) to the grid") if r % p else "exact tiling"}

    def provenance(self, resolution: int | None = None) -> dict[str, Any]:
        """The backbone block of a store's provenance document.

        Parameters
        ----------
        resolution : int, optional
            Input side R; adds ``input_geometry`` (see :meth:`input_geometry`) for ViTs.
        """
        s = self.spec
        extra = {"input_geometry": self.input_geometry(resolution)} if resolution and s.family == "vit" else {}
        return {
            "name": s.name, "source": s.source, "id": self.origin.get("id"), "path": self.origin.get("path"),
            "sha256": self.origin.get("sha256"), "files": self.origin.get("files", {}),
            "family": s.family, "embed_dim": s.embed_dim, "patch_size": s.patch_size,
            "num_registers": s.num_registers, "precision": PRECISION_LABELS[self.precision],
            "mean": list(s.mean), "std": list(s.std), "license": s.license,
            "loader": self.origin.get("loader"), "library_version": self.origin.get("library_version"),
            "views": {name: {"dim": dim, "definition": self.plan.definitions[name]}
                      for name, dim in self.plan.dims.items()},
            **extra,
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.spec.name!r}, views={list(self.plan.dims)}, device={self.device}, "
                f"precision={self.precision})")
