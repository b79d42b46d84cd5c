"""The transformers loader: one for every transformers family (DINOv3 ViT, DINOv2 (+registers), ViT; DINOv3
ConvNeXt, ConvNeXt). What differs between families (where the blocks and final norm sit, forward options, the
``pooled`` definition) comes from the :class:`~embedkit.backbones.families.BackboneFamily` it is handed."""
from __future__ import annotations

import logging
from pathlib import Path

from embedkit.backbones.base import TorchBackbone, check_spec
from embedkit.backbones.hashing import files_sha256
from embedkit.backbones.hub import Location, cached_hub_files, hub_offline, weights_missing
from embedkit.backbones.spec import BackboneSpec
from embedkit.backbones.views import compute_convnext_views, compute_vit_views, plan_convnext_views, plan_vit_views
from embedkit.errors import ModelError, WeightsNotFoundError

logger = logging.getLogger(__name__)

class HFViTBackbone(TorchBackbone):
    """DINOv3ViTModel / Dinov2Model / Dinov2WithRegistersModel / ViTModel."""

    def __init__(self, spec, module, views, *, family, **kw):
        self._blocks, self._norm = family.layers(module)
        self._extra = dict(family.forward_kwargs)
        self.ignores_partial_patches = family.ignores_partial_patches
        plan = plan_vit_views(views, dim=spec.embed_dim, depth=len(self._blocks), num_registers=spec.num_registers)
        super().__init__(spec, module, plan, **kw)
        self._capture_cls(self._blocks, plan.blocks)

    def _forward(self, x):
        out = self.module(pixel_values=x, **self._extra)
        p = self.spec.patch_size
        return compute_vit_views(self.plan, out.last_hidden_state, num_registers=self.spec.num_registers,
                                 grid_hw=(x.shape[2] // p, x.shape[3] // p), block_cls=self._blocks_cls(),
                                 final_norm=self._norm)


class HFConvNextBackbone(TorchBackbone):
    """DINOv3ConvNextModel / ConvNextModel (channels_last)."""

    channels_last = True

    def __init__(self, spec, module, views, *, family, **kw):
        self._stages, _ = family.layers(module)
        plan = plan_convnext_views(views, stage_dims=list(module.config.hidden_sizes), pooled=family.pooled)
        super().__init__(spec, module, plan, **kw)
        last = len(self._stages) - 1
        self._capture_stages(self._stages, plan.stages,
                             keep_map=last if any(v.startswith("patch_grid_") for v in plan.dims) else None)

    def _forward(self, x):
        out = self.module(pixel_values=x)
        last = len(self._stages) - 1
        return compute_convnext_views(self.plan, out.pooler_output, self._stage_means(),
                                      self._captured.get(("map", last)))


def _weight_files(folder: Path) -> list[Path]:
    st = sorted(folder.glob("*.safetensors"))
    return st or sorted(folder.glob("pytorch_model*.bin"))


def load_hf(spec: BackboneSpec, loc: Location, *, family, device, precision: str, views, allow_download: bool):
    """Build a transformers backbone of ``family`` from a hub id (cache only unless allowed) or a local folder.

    Raises
    ------
    ModelError
        The folder's model type is not one of ``family.model_types``, or its shapes contradict ``spec``.
    WeightsNotFoundError
        Weights not cached and downloading not allowed.
    """
    import torch
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.disable_progress_bar()
    if loc.kind == "hub":
        files = cached_hub_files(loc.ref)
        local_only = True
        if files is None:
            if not allow_download or hub_offline():
                why = "HF_HUB_OFFLINE is set" if hub_offline() else "downloads are not allowed"
                raise weights_missing(spec, loc.ref, ("config.json", "model.safetensors"), why=why)
            local_only = False
        src, path = loc.ref, None
    elif loc.kind == "dir":
        src, path, local_only = loc.ref, loc.ref, True
        if not _weight_files(Path(loc.ref)):
            raise WeightsNotFoundError(f"Folder '{loc.ref}' has config.json but no weights (expected "
                                       "model.safetensors, or model-0000x-of-0000y.safetensors shards).")
    else:
        raise ModelError(f"A transformers model needs a hub id or a save_pretrained folder; got {loc.kind} "
                         f"'{loc.ref}'. Pass the folder holding config.json + model.safetensors.")
    kwargs = dict(local_files_only=local_only,
                  dtype=torch.bfloat16 if precision == "bf16-weights" else torch.float32)
    if family.arch == "vit":
        kwargs["attn_implementation"] = "sdpa"
    try:
        module = AutoModel.from_pretrained(src, **kwargs)
    except OSError as exc:
        if loc.kind == "hub":
            raise weights_missing(spec, loc.ref, ("config.json", "model.safetensors"), why=str(exc).splitlines()[0])
        raise ModelError(f"Cannot load '{src}' with transformers: {str(exc).splitlines()[0]}") from exc
    mtype = module.config.model_type
    if mtype not in family.model_types:
        raise ModelError(f"'{loc.ref}' holds a {mtype!r} model, not one of the {family.name!r} family "
                         f"({', '.join(family.model_types)}); pass the folder on its own (--model PATH).")
    cfg = module.config
    check_spec(spec, embed_dim=int(cfg.hidden_sizes[-1] if hasattr(cfg, "hidden_sizes") else cfg.hidden_size),
               patch_size=getattr(cfg, "patch_size", None), num_registers=int(getattr(cfg, "num_register_tokens", 0)),
               where=path or loc.ref)
    if loc.kind == "hub":
        files = cached_hub_files(loc.ref) or []
        weights = [f for f in files if f.name != "config.json" and not f.name.endswith(".index.json")]
    else:
        weights = _weight_files(Path(loc.ref))
    if precision == "bf16-weights":
        # Loaded in bf16 to keep host memory at 2 bytes/parameter; norms and LayerScale come back exact in fp32.
        from embedkit.backbones.precision import restore_fp32

        restore_fp32(module, weights)
    digest, per_file = files_sha256(weights) if weights else (None, {})
    origin = {"id": spec.hub_id, "path": path, "sha256": digest, "files": per_file,
              "loader": f"transformers.{type(module).__name__}", "library_version": transformers.__version__}
    cls = HFViTBackbone if family.arch == "vit" else HFConvNextBackbone
    return cls(spec, module, views or spec.default_views, family=family, device=device, precision=precision,
               origin=origin)
