"""Where weights are (:class:`Location`), the local Hugging Face cache, and the error for weights that are not in
it. Never touches the network.

Shared by the resolver (:mod:`embedkit.backbones.resolve`) and the family loaders (:mod:`embedkit.backbones.hf`,
:mod:`embedkit.backbones.timm_backbones`), which import it instead of the resolver so that arrows point one way.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from embedkit.backbones.spec import BackboneSpec
from embedkit.errors import WeightsNotFoundError

META_DINOV3_FORM = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


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
