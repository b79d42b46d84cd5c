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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from embedkit.backbones.checkpoint import CHECKPOINT_SUFFIXES
from embedkit.backbones.spec import (
    CONVNEXT_DEFAULT_VIEWS,
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    find_spec,
    is_hub_id,
    unknown_model_message,
)
from embedkit.errors import ModelError, WeightsNotFoundError

logger = logging.getLogger(__name__)

META_DINOV3_FORM = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# transformers model_type -> (family, licence, default mean/std)
HF_MODEL_TYPES = {
    "dinov3_vit": ("vit", "dinov3-license", IMAGENET_MEAN, IMAGENET_STD),
    "dinov3_convnext": ("convnext", "dinov3-license", IMAGENET_MEAN, IMAGENET_STD),
    "dinov2": ("vit", "apache-2.0", IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": ("vit", "apache-2.0", IMAGENET_MEAN, IMAGENET_STD),
    "convnext": ("convnext", "unknown", IMAGENET_MEAN, IMAGENET_STD),
    "vit": ("vit", "unknown", HALF_MEAN, HALF_STD),
}


@dataclass(frozen=True)
class Location:
    """Where the weights of a resolved backbone are.

    Attributes
    ----------
    kind : {"hub", "dir", "file", "timm"}
        A hub repository (transformers), a local directory, a checkpoint file, or a timm model name.
    ref : str
        Hub id, absolute path, or timm name (``arch.tag``).
    weights_file : str or None
        Local weights file for ``timm``/``file`` kinds (None: look in the hub cache).
    """

    kind: Literal["hub", "dir", "file", "timm"]
    ref: str
    weights_file: str | None = None


def hub_offline() -> bool:
    """Whether the process environment forbids hub access (``HF_HUB_OFFLINE`` set to a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_hub_files(repo: str, *, need_config: bool = True) -> list[Path] | None:
    """Paths of a repo's config and weight files in the local hub cache, or None if any is missing.

    Never touches the network (``huggingface_hub.try_to_load_from_cache``).
    """
    from huggingface_hub import try_to_load_from_cache

    def get(name: str) -> Path | None:
        try:
            hit = try_to_load_from_cache(repo, name)
        except Exception:  # noqa: BLE001 - malformed ids etc. mean "not cached"
            return None
        return Path(hit) if isinstance(hit, str) else None

    files: list[Path] = []
    if need_config:
        cfg = get("config.json")
        if cfg is None:
            return None
        files.append(cfg)
    for name in (HF_WEIGHT_FILES if need_config else TIMM_WEIGHT_FILES):
        hit = get(name)
        if hit is None:
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(hit.read_text())["weight_map"].values()))
            paths = [get(s) for s in shards]
            if any(p is None for p in paths):
                return None
            return files + [hit] + paths  # type: ignore[list-item]
        return files + [hit]
    return None


def weight_files(loc: Location) -> list[Path]:
    """The local weight files of a resolved location (empty when they are not on disk yet).

    Examples
    --------
    >>> weight_files(Location(kind="file", ref="/m/dinov3_vit7b16.pth"))
    [PosixPath('/m/dinov3_vit7b16.pth')]
    """
    if loc.weights_file or loc.kind == "file":
        return [Path(loc.weights_file or loc.ref)]
    if loc.kind == "dir":
        folder = Path(loc.ref)
        return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if loc.kind == "hub":
        return [f for f in cached_hub_files(loc.ref) or [] if f.suffix in (".safetensors", ".bin")]
    return [f for f in cached_hub_files(f"timm/{loc.ref}", need_config=False) or [] if f.suffix == ".safetensors"]


def weights_missing(spec: BackboneSpec, repo: str, files: tuple[str, ...], *, why: str) -> WeightsNotFoundError:
    """The one-line error naming the files expected and how to get them (gated DINOv3 steps included)."""
    want = " + ".join(files)
    msg = f"Weights for {spec.name!r} ({repo}) are not available locally ({why}; expected {want} in the hub cache)."
    if spec.gated or "dinov3" in repo.lower():
        msg += (f" DINOv3 weights are gated: accept the licence on https://huggingface.co/{repo}, run "
                f"`hf auth login`, then `hf download {repo} --local-dir D` and pass `--model D`; or get the original "
                f".pth from Meta's form ({META_DINOV3_FORM}) and pass `--model FILE.pth`.")
    else:
        msg += f" Run `hf download {repo} --local-dir D` and pass `--model D`,"
        msg += " or pass --download (allow_download=True) with HF_HUB_OFFLINE unset."
    return WeightsNotFoundError(msg)


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
    if mtype not in HF_MODEL_TYPES:
        raise ModelError(f"Model type {mtype!r} of {name!r} is not supported; supported transformers model types: "
                         f"{', '.join(HF_MODEL_TYPES)}.")
    family, licence, mean, std = HF_MODEL_TYPES[mtype]
    mean_note = "mean/std: model-type default"
    if preprocessor and preprocessor.get("image_mean") and preprocessor.get("image_std"):
        mean, std = tuple(preprocessor["image_mean"]), tuple(preprocessor["image_std"])
        mean_note = "mean/std: preprocessor_config.json"
    if family == "convnext":
        return BackboneSpec(name=name, source="transformers", hub_id=hub_id, embed_dim=int(config["hidden_sizes"][-1]),
                            patch_size=32, num_registers=0, mean=mean, std=std, license=licence, family="convnext",
                            default_views=CONVNEXT_DEFAULT_VIEWS, notes=f"model_type {mtype}; {mean_note}")
    return BackboneSpec(name=name, source="transformers", hub_id=hub_id, embed_dim=int(config["hidden_size"]),
                        patch_size=int(config["patch_size"]), num_registers=int(config.get("num_register_tokens", 0)),
                        mean=mean, std=std, license=licence, family="vit", notes=f"model_type {mtype}; {mean_note}")


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


def _timm_is_vit(name: str) -> bool:
    return name.startswith(("vit_", "eva", "test_vit", "deit"))


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
        return spec, Location("timm" if spec.source == "timm" else "file", ref, str(wfile))
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
