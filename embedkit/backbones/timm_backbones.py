"""The timm loader (the ``timm`` family): ViTs (VisionTransformer, Eva incl. DINOv3) and ConvNeXts, from
``timm:NAME`` (hub cache or a weights file) or a timm folder; :func:`build_timm` and :func:`wrap_timm` also serve
the ``original`` family (:mod:`embedkit.backbones.original`).

Weights are always read by embedkit (safetensors, or ``torch.load(weights_only=True)``) and handed to timm as a
state dict, so timm applies its architecture's checkpoint filter (position-embedding resampling, DINOv3 key
mapping) but never downloads on its own.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from embedkit.backbones.base import TorchBackbone, check_spec
from embedkit.backbones.checkpoint import read_state_dict
from embedkit.backbones.hashing import files_sha256
from embedkit.backbones.hub import Location, cached_hub_files, hub_offline, weights_missing
from embedkit.backbones.spec import BackboneSpec
from embedkit.backbones.views import compute_convnext_views, compute_vit_views, plan_convnext_views, plan_vit_views
from embedkit.errors import ModelError, WeightsNotFoundError

logger = logging.getLogger(__name__)

class TimmViTBackbone(TorchBackbone):
    """timm VisionTransformer / Eva (DINOv3: built with ``global_pool='token'``, the upstream CLS pooling)."""

    def __init__(self, spec, module, views, **kw):
        import torch.nn as nn

        self._blocks = module.blocks
        self._norm = module.norm
        self._extra_norm = None
        if isinstance(module.norm, nn.Identity) and not isinstance(getattr(module, "fc_norm", nn.Identity()),
                                                                      nn.Identity):
            # avg-pool models keep their final norm in fc_norm; apply it to the tokens so views mean the same.
            self._norm = self._extra_norm = module.fc_norm
        plan = plan_vit_views(views, dim=spec.embed_dim, depth=len(self._blocks),
                              num_registers=int(module.num_prefix_tokens) - 1)
        super().__init__(spec, module, plan, **kw)
        self._capture_cls(self._blocks, plan.blocks)

    def _forward(self, x):
        tokens = self.module.forward_features(x)
        if self._extra_norm is not None:
            tokens = self._extra_norm(tokens)
        p = self.spec.patch_size
        return compute_vit_views(self.plan, tokens, num_registers=int(self.module.num_prefix_tokens) - 1,
                                 grid_hw=(x.shape[2] // p, x.shape[3] // p), block_cls=self._blocks_cls(),
                                 final_norm=self._norm)


class TimmConvNextBackbone(TorchBackbone):
    """timm ConvNeXt (channels_last)."""

    channels_last = True

    def __init__(self, spec, module, views, *, pooled: str, **kw):
        self._stages = module.stages
        dims = [int(f["num_chs"]) for f in module.feature_info]
        plan = plan_convnext_views(views, stage_dims=dims, pooled=pooled)
        super().__init__(spec, module, plan, **kw)
        last = len(self._stages) - 1
        self._capture_stages(self._stages, plan.stages,
                             keep_map=last if any(v.startswith("patch_grid_") for v in plan.dims) else None)

    def _forward(self, x):
        feats = self.module.forward_features(x)
        pooled = self.module.forward_head(feats, pre_logits=True)
        last = len(self._stages) - 1
        return compute_convnext_views(self.plan, pooled, self._stage_means(), self._captured.get(("map", last)))


def _registers(module) -> int:
    if not _is_vit(module):
        return 0
    return int(module.num_prefix_tokens) - int(getattr(module, "cls_token", None) is not None)


def _is_vit(module) -> bool:
    return hasattr(module, "blocks") and hasattr(module, "num_prefix_tokens")


def _kwargs(arch: str, kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    if arch.split(".")[0].startswith(("vit_", "eva", "test_vit")) or "dinov3" in arch:
        kwargs.setdefault("dynamic_img_size", True)
    if "dinov3" in arch:
        kwargs.setdefault("global_pool", "token")  # timm's Eva default is 'avg'; upstream DINOv3 pools the CLS
    return kwargs


def build_timm(arch: str, sd: dict, *, precision: str, device, pretrained_cfg: dict | None = None, **kwargs):
    """Build ``arch`` on the meta device and load ``sd`` (consumed: emptied) straight into the storage dtype on
    ``device``.

    timm's own path (``pretrained=True``) would first materialise a randomly initialised fp32 model on the host and
    then copy the fp32 state dict into it: twice the fp32 size (>= 54 GB for the 7B). Here the architecture costs
    nothing, the checkpoint filter of the model's module (DINOv3 key mapping, position-embedding resampling) runs on
    the state dict exactly as timm would run it, and each tensor is cast and moved once. Models whose computed
    buffers cannot be rebuilt after a meta build fall back to timm's path.
    """
    import sys

    import timm
    import torch

    from embedkit.backbones.precision import NeedsMaterialisedBuild, load_into_meta, meta_buffer_owners

    kwargs = _kwargs(arch, kwargs)
    try:
        with torch.device("meta"):
            module = timm.create_model(arch, pretrained=False, num_classes=0, pretrained_cfg=pretrained_cfg,
                                       **kwargs)
        meta_buffer_owners(module)
        filter_fn = getattr(sys.modules[type(module).__module__], "checkpoint_filter_fn", None)
        filtered = dict(filter_fn(sd, module) if filter_fn is not None else sd)  # a filter may return sd itself
        # The filtered dict now holds the only references, so each source tensor is freed once converted.
        sd.clear()
        head = (getattr(module, "pretrained_cfg", None) or {}).get("classifier") or "head"
        heads = tuple(h + "." for h in ((head,) if isinstance(head, str) else head))
        return load_into_meta(module, filtered, precision=precision, device=device, drop_prefixes=heads)
    except NeedsMaterialisedBuild as why:
        logger.info("%s: %s cannot be rebuilt after a meta-device build; loading through timm", arch, why)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"timm could not build {arch!r} from the given weights: {_first(exc)}") from exc
    return _create_materialised(arch, sd, pretrained_cfg=pretrained_cfg, **kwargs)


def _create_materialised(arch: str, sd: dict, *, pretrained_cfg: dict | None = None, **kwargs):
    """timm's own path: a random fp32 model on the host, then the (filtered) state dict copied into it."""
    import timm

    overlay = dict(state_dict=sd, file=None, url=None, hf_hub_id=None, custom_load=False, source="")
    try:
        return timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg=pretrained_cfg,
                                 pretrained_cfg_overlay=overlay, **_kwargs(arch, kwargs))
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"timm could not build {arch!r} from the given weights: {_first(exc)}") from exc


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_timm(spec: BackboneSpec, loc: Location, *, family, device, precision: str, views, allow_download: bool):
    """Build a timm backbone from ``timm:NAME`` (hub cache or a weights file) or a timm folder.

    Raises
    ------
    ModelError
        A location timm cannot build from, or weights that do not fit the architecture.
    WeightsNotFoundError
        Weights not cached and downloading not allowed, or a timm folder without weights.
    """
    model_args: dict = {}
    pretrained_cfg = None
    if loc.kind == "timm":
        arch = loc.ref
        if loc.weights_file:
            files = [Path(loc.weights_file)]
        else:
            repo = f"timm/{arch}"
            files = cached_hub_files(repo, need_config=False)
            if files is None:
                if not allow_download or hub_offline():
                    why = "HF_HUB_OFFLINE is set" if hub_offline() else "downloads are not allowed"
                    raise weights_missing(spec, repo, ("model.safetensors",), why=why)
                from huggingface_hub import hf_hub_download

                files = [Path(hf_hub_download(repo, "model.safetensors"))]
        module = build_timm(arch, read_state_dict(files[-1]), precision=precision, device=device)
        ident, path = arch, (str(files[-1]) if loc.weights_file else None)
    elif loc.kind == "dir":
        folder = Path(loc.ref)
        config = json.loads((folder / "config.json").read_text())
        files = [p for p in (folder / "model.safetensors", folder / "pytorch_model.bin") if p.is_file()][:1]
        if not files:
            raise WeightsNotFoundError(f"timm folder '{folder}' has no model.safetensors (or pytorch_model.bin).")
        arch = config["architecture"]
        model_args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
        pretrained_cfg = dict(config.get("pretrained_cfg", {}))
        pretrained_cfg.setdefault("architecture", arch)
        module = build_timm(arch, read_state_dict(files[0]), precision=precision, device=device,
                            pretrained_cfg=pretrained_cfg, **model_args)
        ident, path = None, str(folder)
    else:
        raise ModelError(f"A timm model needs a timm name or a timm folder (config.json with 'architecture'); got "
                         f"{loc.kind} '{loc.ref}'.")
    return wrap_timm(spec, module, arch=arch, files=files, ident=ident, path=path, family=family, device=device,
                     precision=precision, views=views)


def wrap_timm(spec: BackboneSpec, module, *, arch: str, files: list[Path], ident: str | None, path: str | None,
              family, device, precision: str, views):
    """Check a built timm module against ``spec`` and wrap it as a ViT or ConvNeXt backbone (provenance included).

    Raises
    ------
    ModelError
        Shapes that contradict ``spec``, or a module that is neither a ViT nor a ConvNeXt.
    """
    import timm

    patch = getattr(getattr(module, "patch_embed", None), "patch_size", None)
    check_spec(spec, embed_dim=int(module.num_features), num_registers=_registers(module),
               patch_size=int(patch[0]) if isinstance(patch, (tuple, list)) else patch, where=str(files[0]))
    digest, per_file = files_sha256(files)
    origin = {"id": ident, "path": path, "sha256": digest, "files": per_file,
              "loader": f"timm.{type(module).__name__}({arch})", "library_version": timm.__version__}
    views = views or spec.default_views
    if _is_vit(module):
        return TimmViTBackbone(spec, module, views, device=device, precision=precision, origin=origin)
    if not hasattr(module, "stages"):
        raise ModelError(f"timm model {arch!r} is neither a ViT nor a ConvNeXt; embedkit has no views for it.")
    return TimmConvNextBackbone(spec, module, views, pooled=family.pooled, device=device, precision=precision,
                                origin=origin)
