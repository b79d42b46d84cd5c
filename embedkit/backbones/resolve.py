"""Turn what the user typed (``--model``) into a spec plus where its weights are; never touches the network
unless downloads are allowed.

Accepted forms: a registered short name (``dinov3-vitb16``), a Hugging Face hub id, ``timm:NAME``, a directory
saved with ``save_pretrained`` (or a timm ``config.json`` + weights folder), a checkpoint file (``.safetensors``,
``.pt``/``.pth`` incl. the original Meta DINOv3 releases), and ``MODEL@FILE`` (a model whose weights are FILE).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

from embedkit.backbones.checkpoint import CHECKPOINT_SUFFIXES
from embedkit.backbones.families import family_for_model_type
from embedkit.backbones.hub import Location, cached_hub_files, hub_offline, weights_missing
from embedkit.backbones.registry import find_spec, unknown_model_message
from embedkit.backbones.spec import CONVNEXT_DEFAULT_VIEWS, BackboneSpec, is_hub_id
from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD
from embedkit.errors import ModelError

__all__ = ["Location", "resolve_backbone", "spec_from_hf_config", "spec_from_timm", "cached_hub_files", "weight_files"]

logger = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read '{path}': {exc}") from exc


def spec_from_hf_config(config: dict, *, name: str, hub_id: str | None = None,
                        preprocessor: dict | None = None) -> BackboneSpec:
    """A spec for an unregistered transformers model from its ``config.json`` (and processor config).

    Raises
    ------
    ModelError
        A ``model_type`` embedkit has no feature views for.
    """
    mtype = config.get("model_type")
    family = family_for_model_type(mtype, what=repr(name))
    mean, std = family.mean, family.std
    mean_note = "mean/std: model-type default"
    if preprocessor and preprocessor.get("image_mean") and preprocessor.get("image_std"):
        mean, std = tuple(preprocessor["image_mean"]), tuple(preprocessor["image_std"])
        mean_note = "mean/std: preprocessor_config.json"
    common = dict(name=name, source="transformers", hub_id=hub_id, mean=mean, std=std, license=family.license,
                  loader=family.name, notes=f"model_type {mtype}; {mean_note}")
    if family.arch == "convnext":
        return BackboneSpec(**common, embed_dim=int(config["hidden_sizes"][-1]), patch_size=32, num_registers=0,
                            family="convnext", default_views=CONVNEXT_DEFAULT_VIEWS)
    return BackboneSpec(**common, embed_dim=int(config["hidden_size"]), patch_size=int(config["patch_size"]),
                        num_registers=int(config.get("num_register_tokens", 0)), family="vit")


def spec_from_timm(name: str, *, model_args: dict | None = None, cfg: dict | None = None,
                   display: str | None = None) -> BackboneSpec:
    """A spec for a timm model (imports timm: slow, only at load time)."""
    import timm
    import torch

    args = {k: v for k, v in (model_args or {}).items() if k not in ("num_classes", "pretrained_cfg")}
    if not timm.is_model(name.split(".")[0]):
        raise ModelError(f"Unknown timm model {name!r}; see timm.list_models().")
    with torch.device("meta"):  # shapes only: a 7B spec must not allocate 27 GB
        model = timm.create_model(name.split(".")[0], pretrained=False, num_classes=0, **args)
    pcfg = cfg or (timm.models.get_pretrained_cfg(name).to_dict() if timm.models.get_pretrained_cfg(name) else {})
    mean, std = tuple(pcfg.get("mean", IMAGENET_MEAN)), tuple(pcfg.get("std", IMAGENET_STD))
    is_convnext = hasattr(model, "stages") and not hasattr(model, "blocks")
    if is_convnext:
        return BackboneSpec(name=display or f"timm:{name}", source="timm", hub_id=name, embed_dim=model.num_features,
                            patch_size=32, num_registers=0, mean=mean, std=std, license=pcfg.get("license", "unknown"),
                            family="convnext", default_views=CONVNEXT_DEFAULT_VIEWS)
    patch = model.patch_embed.patch_size
    return BackboneSpec(name=display or f"timm:{name}", source="timm", hub_id=name, embed_dim=model.num_features,
                        patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch),
                        num_registers=int(model.num_prefix_tokens) - int(getattr(model, "cls_token", None) is not None),
                        mean=mean, std=std,
                        license=pcfg.get("license", "unknown"), family="vit")


def resolve_backbone(name_or_path: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                     allow_download: bool = False) -> tuple[BackboneSpec, Location]:
    """Resolve a model reference to ``(spec, location)`` without loading the model.

    Parameters
    ----------
    name_or_path : str or PathLike
        Short name, hub id, ``timm:NAME``, directory, checkpoint file, or ``MODEL@FILE``.
    weights : str or PathLike, optional
        A checkpoint file holding the weights of ``name_or_path`` (same as ``MODEL@FILE``).
    allow_download : bool
        Whether a generic hub id's ``config.json`` may be fetched (registered names never need it).

    Returns
    -------
    (BackboneSpec, Location)

    Raises
    ------
    ModelError
        Unknown name (with close matches) or an unsupported directory/file.
    WeightsNotFoundError
        A generic hub id whose config is not cached and may not be downloaded.

    Examples
    --------
    >>> spec, loc = resolve_backbone("dinov3-vitb16")
    >>> spec.embed_dim, loc.kind
    (768, 'hub')
    """
    text = os.fspath(name_or_path).strip()
    if weights is None and "@" in text and not Path(text).expanduser().exists():
        head, _, tail = text.rpartition("@")
        if Path(tail).expanduser().is_file():
            text, weights = head, tail
    if weights is not None:
        wfile = Path(weights).expanduser().resolve()
        if not wfile.is_file():
            raise ModelError(f"Weights file '{wfile}' does not exist.")
        spec, loc = resolve_backbone(text, allow_download=allow_download)
        ref = spec.hub_id or loc.ref
        if spec.source == "timm":
            return spec, Location("timm", ref, str(wfile))
        # A transformers model's weights as one file: Meta's original release layout (checked when loading).
        return replace(spec, loader="original"), Location("file", ref, str(wfile))
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_path(path.resolve())
    if text.startswith("timm:"):
        tname = text[len("timm:"):]
        spec = find_spec(tname)
        if spec is None or spec.source != "timm":
            spec = spec_from_timm(tname)
        return spec, Location("timm", tname)
    spec = find_spec(text)
    if spec is not None:
        return spec, (Location("timm", spec.hub_id) if spec.source == "timm" else Location("hub", spec.hub_id))
    if is_hub_id(text):
        return _resolve_generic_hub(text, allow_download=allow_download), Location("hub", text)
    raise ModelError(unknown_model_message(text))


def _resolve_generic_hub(repo: str, *, allow_download: bool) -> BackboneSpec:
    files = cached_hub_files(repo)
    cfg_path = files[0] if files else None
    placeholder = BackboneSpec(name=repo, source="transformers", hub_id=repo, embed_dim=1, patch_size=1,
                               num_registers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD, license="unknown")
    if cfg_path is None:
        if not allow_download or hub_offline():
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "downloads are not allowed"
            raise weights_missing(placeholder, repo, ("config.json", "model.safetensors"), why=why)
        from huggingface_hub import hf_hub_download

        cfg_path = Path(hf_hub_download(repo, "config.json"))
    config = _read_json(cfg_path)
    pre = cfg_path.with_name("preprocessor_config.json")
    return spec_from_hf_config(config, name=repo, hub_id=repo, preprocessor=_read_json(pre) if pre.is_file() else None)


def _resolve_path(path: Path) -> tuple[BackboneSpec, Location]:
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            ckpts = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
            if len(ckpts) == 1:
                return _resolve_path(ckpts[0])
            raise ModelError(f"Directory '{path}' has no config.json; expected a folder written by save_pretrained "
                             "(config.json + model.safetensors) or a single checkpoint file.")
        config = _read_json(cfg)
        if "architecture" in config:  # timm's hub/folder format
            pcfg = config.get("pretrained_cfg", {})
            spec = spec_from_timm(config["architecture"], model_args=config.get("model_args"), cfg=pcfg,
                                  display=path.name)
            return replace(spec, hub_id=None), Location("dir", str(path))
        pre = path / "preprocessor_config.json"
        spec = spec_from_hf_config(config, name=path.name, preprocessor=_read_json(pre) if pre.is_file() else None)
        return spec, Location("dir", str(path))
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ModelError(f"'{path}' is not a checkpoint file (expected one of {', '.join(CHECKPOINT_SUFFIXES)}).")
    if (path.parent / "config.json").is_file():
        return _resolve_path(path.parent)
    from embedkit.backbones.original import spec_from_checkpoint

    return spec_from_checkpoint(path), Location("file", str(path), str(path))
