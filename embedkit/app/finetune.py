"""``finetune``: a registry backbone + linear head trained end to end, evaluated exactly like a probe run.

The run directory holds the probe's files and schema (``metrics.json`` with the same bootstrap plan over the same
test ids, ``per_label.csv``, ``predictions.csv``, ``roc.png``, ``bootstrap.npz``), so ``compare`` pairs a finetune
run with probe runs of the same test set, plus ``model.safetensors`` (the kept epoch's weights), ``train_log.csv``,
``train_curve.png``, ``train.log``, ``finetune.json`` (every setting) and ``checkpoint.pt`` (resume state).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from embedkit.errors import DataError, EmbedkitError

logger = logging.getLogger(__name__)

RUN_SCHEMA = "embedkit.finetune-run/1"
#: Settings that may change between a run and its resumption (they do not change what is computed).
NOT_FINGERPRINTED = ("workers", "checkpoint_every", "grad_checkpointing", "compile", "device_index")


class FinetuneRunError(EmbedkitError):
    """The run directory cannot be used (another configuration, foreign files)."""


@dataclass(frozen=True)
class Protocol:
    """A training recipe; explicit options override its fields."""

    name: str
    optimizer: Literal["adam", "adamw"]
    lr: float
    weight_decay: float
    batch_size: int
    drop_last: bool
    schedule: Literal["constant", "cosine"]
    warmup_frac: float
    layer_decay_vit: float | None
    layer_decay_convnext: float | None
    precision: Literal["fp32", "auto"]
    preset: Literal["paper", "model"]
    epochs: int
    select: Literal["val-loss", "val-auroc"] = "val-loss"


#: ``paper``: the reference recipe as recovered from github.com/tayebiarasteh/vit-med (arXiv 2510.07191);
#: ``modern``: AdamW, cosine schedule with warm-up, bf16 autocast (the MAE / ConvNeXt-V2 / timm finetuning defaults).
PROTOCOLS = {
    "paper": Protocol("paper", "adam", 1e-5, 0.0, 30, True, "constant", 0.0, None, None, "fp32", "paper", 100),
    "modern": Protocol("modern", "adamw", 1e-4, 0.05, 32, True, "cosine", 0.05, 0.75, 0.9, "auto", "model", 30),
}
#: ``paper`` under ``--mode lora``: the reference's LoRA entry point trains with AdamW (torch's default weight
#: decay, 0.01), lr 1e-4, batch 16 (vit-med's main_train_2D_lora); the rest is the paper recipe.
PAPER_LORA = dataclasses.replace(PROTOCOLS["paper"], optimizer="adamw", lr=1e-4, weight_decay=0.01, batch_size=16)


@dataclass
class FinetuneResult:
    """A finished run: its directory and ``metrics.json`` document."""

    out: Path
    metrics: dict
    resumed: bool = False
    already_done: bool = False


def _fingerprint(settings: dict) -> str:
    keep = {k: v for k, v in settings.items() if k not in NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def check_run_dir(out: Path, settings: dict) -> dict | None:
    """Refuse a directory holding anything but this run; return the finished metrics if it is already done."""
    if not out.exists():
        return None
    marker = out / "finetune.json"
    if not marker.exists():
        if any(p for p in out.iterdir() if not p.name.startswith(".tmp-")):
            raise FinetuneRunError(f"'{out}' holds files that are not a finetune run's; nothing was touched. "
                                   "Use a new --out.")
        return None
    old = json.loads(marker.read_text()).get("settings", {})
    for key in sorted(set(old) | set(settings)):
        if key in NOT_FINGERPRINTED:
            continue
        if json.dumps(old.get(key), default=str) != json.dumps(settings.get(key), default=str):
            raise FinetuneRunError(f"Run '{out}' was started with {key}={old.get(key)!r}; this command has "
                                   f"{key}={settings.get(key)!r}. Repeat the original command to resume, or use a "
                                   "new --out.")
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    return None


def _bad(name: str, want: str, got: Any) -> EmbedkitError:
    return EmbedkitError(f"The '{name}' parameter of finetune must be {want}. Got {got!r}.")


def run_finetune(
    model: str,
    data: str,
    out: str | Path,
    *,
    res: int,
    mode: str = "full",
    protocol: Literal["paper", "modern"] = "paper",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    precision: Literal["auto", "fp32", "bf16"] | None = None,
    grad_checkpointing: bool = False,
    accumulate: int = 1,
    grad_clip: float | None = None,
    seed: int = 0,
    workers: int = 0,
    device: str = "auto",
    limit: int | None = None,
    select: Literal["val-loss", "val-auroc"] | None = None,
    pool: str = "auto",
    checkpoint_every: int = 0,
    compile: bool = False,
    n_boot: int = 1000,
    boot_seed: int = 0,
    bootstrap: Literal["auto", "images", "patients"] = "auto",
    boot_dir: str | Path | None = None,
    split_seed: int = 0,
    split_unit: Literal["patient", "study", "image"] | None = None,
    allow_leak: bool = False,
    allow_download: bool = False,
    subgroups: bool = True,
    age_bands: Sequence[float] = (0, 40, 60, 80),
    progress: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Finetune MODEL on DATA and evaluate it on the test split like ``embedkit probe``; see the CLI's help.

    Parameters
    ----------
    model : str
        Registry name, hub id, ``timm:NAME``, a ``save_pretrained`` folder or a checkpoint file.
    data : str
        An embedding store (images, labels, split and test ids from its provenance: the probe's rows), an image
        cache, a manifest CSV or ``ADAPTER:ROOT``.
    out : str or Path
        Run directory; the same command resumes it, another configuration is refused.
    res : int
        Input side R.
    mode : str
        ``full`` or ``last:K``.
    protocol : {"paper", "modern"}
        Defaults of every training setting (:data:`PROTOCOLS`); the explicit arguments override them.
    epochs, batch_size, lr, weight_decay, precision, select
        Overrides (None: the protocol's).
    grad_checkpointing, accumulate, grad_clip, seed, workers, device, limit, pool, checkpoint_every, compile
        See ``embedkit finetune --help``.
    n_boot, boot_seed, bootstrap, boot_dir
        The bootstrap plan (shared with probe runs of the same test set: ``<out>/../.embedkit-bootstrap``).
    split_seed : int
        Seed of a carved validation split or a made split (the probe's ``--seed`` default is 0).
    split_unit : {"patient", "study", "image"}, optional
        Data without patient ids: accept making or carving a split by this coarser unit (as ``probe``).
    allow_leak : bool
        Go on (recorded) when a patient or study sits in two splits.
    progress : callable(dict), optional
        Step and epoch events.
    log : callable(str), optional
        Human-readable lines (also appended to ``train.log``).

    Returns
    -------
    FinetuneResult

    Raises
    ------
    EmbedkitError, ProbeError, StoreError
        Bad options (one line each), a foreign or differently configured --out, a non-finite loss.
    """
    import torch

    from embedkit.app.finetune_data import load_train_data
    from embedkit.app.finetune_report import finish_run
    from embedkit.backbones import load_backbone
    from embedkit.devices import resolve_device
    from embedkit.extract.dist import detect_env
    from embedkit.extract.pipeline import make_preset_for, preset_block
    from embedkit.extract.source import uint8_params
    from embedkit.finetune import Augment, Prepare, build_model, param_groups
    from probes.finetune import TrainConfig, fit, sweep_temporaries

    if protocol not in PROTOCOLS:
        raise _bad("protocol", f"one of {', '.join(PROTOCOLS)}", protocol)
    proto = PROTOCOLS[protocol]
    if mode == "lora":
        from embedkit.finetune.model import require_peft

        require_peft()  # before any loading or caching
        if protocol == "paper":
            proto = PAPER_LORA
    if isinstance(res, bool) or not isinstance(res, int) or res < 1:
        raise _bad("res", "an int >= 1", res)
    if bootstrap not in ("auto", "images", "patients"):
        raise _bad("bootstrap", "'auto', 'images' or 'patients'", bootstrap)
    if split_unit not in (None, "patient", "study", "image"):
        raise _bad("split_unit", "'patient', 'study' or 'image'", split_unit)
    if precision not in (None, "auto", "fp32", "bf16"):
        raise _bad("precision", "'auto', 'fp32' or 'bf16'", precision)
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise _bad("limit", "an int >= 1", limit)
    out = Path(out)
    env = detect_env()
    dev = resolve_device(device, local_rank=env.local_rank)
    prec = precision or proto.precision
    if prec == "auto":
        prec = "bf16" if dev.type == "cuda" else "fp32"
    if prec == "bf16" and dev.type != "cuda":
        raise EmbedkitError("--precision bf16 autocast is for CUDA devices; use --precision fp32 on the CPU.")
    bb = load_backbone(model, device=dev, precision="fp32", allow_download=allow_download)
    preset_obj = make_preset_for(proto.preset, resolution=res, mean=bb.spec.mean, std=bb.spec.std, resize="pad")
    pre_block = preset_block(proto.preset, preset_obj)
    family = bb.spec.family
    layer_decay = proto.layer_decay_convnext if family == "convnext" else proto.layer_decay_vit
    ep = int(epochs if epochs is not None else proto.epochs)
    cfg = TrainConfig(epochs=ep, batch_size=int(batch_size or proto.batch_size), accumulate=int(accumulate),
                      lr=float(lr if lr is not None else proto.lr),
                      weight_decay=float(weight_decay if weight_decay is not None else proto.weight_decay),
                      optimizer=proto.optimizer, schedule=proto.schedule, warmup_epochs=proto.warmup_frac * ep,
                      grad_clip=grad_clip, precision=prec, select=select or proto.select, drop_last=proto.drop_last,
                      seed=int(seed), checkpoint_every=int(checkpoint_every))
    aug = Augment()
    bb_prov = bb.provenance()
    settings = {
        "model": str(model), "backbone_sha256": bb_prov.get("sha256"), "res": int(res),
        "data": str(Path(data).resolve()) if Path(data).exists() else str(data), "mode": mode,
        "protocol": protocol, **{k: v for k, v in cfg.as_dict().items()}, "layer_decay": layer_decay,
        "preprocess": pre_block, "augmentation": aug.params(), "pool": pool, "limit": limit,
        "device_type": dev.type, "device_index": dev.index, "world_size": env.world_size,
        "grad_checkpointing": bool(grad_checkpointing), "compile": bool(compile), "workers": int(workers),
        "n_boot": int(n_boot), "boot_seed": int(boot_seed), "bootstrap": bootstrap, "split_seed": int(split_seed),
        "split_unit": split_unit, "allow_leak": bool(allow_leak),
        "rope_rescale_augmentation": False,
    }
    if mode == "lora":
        from embedkit.finetune.model import LORA

        settings["lora"] = dict(LORA)
    done = check_run_dir(out, settings)
    if done is not None:
        # Subgroups are a view of the finished run, not part of its fingerprint: new --age-bands (or a first run
        # with --no-subgroups) are applied to the finished run instead of silently keeping the old table.
        bands = [float(b) for b in age_bands]
        if subgroups and env.is_main and (done.get("subgroups") or {}).get("age_bands") != bands:
            from embedkit.app.subgroups import add_subgroups
            from stores.image_cache import ImageCache

            source = (done.get("store") or {}).get("path") or (data if ImageCache.is_cache(data) else None)
            block = add_subgroups(out, store=source, age_bands=age_bands)
            if block is not None:
                done["subgroups"] = block
        return FinetuneResult(out, done, already_done=True)
    out.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(out)
    fingerprint = _fingerprint(settings)
    logfile = out / "train.log"

    def say(msg: str) -> None:
        if env.is_main:
            with open(logfile, "a") as f:
                f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg + "\n")
            if log is not None:
                log(msg)

    if env.is_main:
        (out / "finetune.json").write_text(json.dumps({"schema": RUN_SCHEMA, "fingerprint": fingerprint,
                                                       "settings": settings}, indent=2, default=str, allow_nan=False) + "\n")
    # One process group for the whole run: caching the images (extract's rank-sharded writer) and training share
    # it. A second init_process_group on torchrun's store would read the first group's stale gloo addresses.
    with _train_group(env, dev) as barrier:
        td = load_train_data(data, res=res, preset=proto.preset, preprocess=uint8_params(pre_block), run_dir=out,
                             limit=limit, split_seed=split_seed, split_unit=split_unit, allow_leak=allow_leak,
                             log=say)
        torch.manual_seed(cfg.seed)  # the head's initialisation: a function of --seed only
        net = build_model(bb, len(td.label_names), pool=pool, mode=mode, grad_checkpointing=grad_checkpointing)
        channels_last = family == "convnext" and dev.type == "cuda"
        bb.module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        net.to(dev)
        if compile:
            bb.module = torch.compile(bb.module, dynamic=False)
        prepare = Prepare(pre_block.get("mean"), pre_block.get("std"), aug, channels_last=channels_last)
        train_rows, val_rows = np.flatnonzero(td.split == "train"), np.flatnonzero(td.split == "val")
        if train_rows.size == 0 or val_rows.size == 0:
            # Said here, not as 'lower --batch-size': the usual cause is images that could not be read.
            unread = int((td.split == "").sum())
            raise DataError(f"'{data}' leaves {train_rows.size} train and {val_rows.size} validation rows to "
                            f"finetune on ({unread} of {len(td.ids)} rows have no readable image"
                            + (" or lie past --limit" if limit is not None else "") + "); check the images "
                            "('embedkit cache-images' lists the files it could not read).")
        say(f"finetune {bb.spec.name} ({mode}, pool {net.pool}) @{res} on {len(train_rows)} train / "
            f"{len(val_rows)} val rows, {protocol} protocol, {prec}, {dev}")

        def on_progress(ev: dict) -> None:
            if ev["event"] == "epoch":
                say(f"epoch {ev['epoch']}/{ev['epochs']}: train loss {ev['train_loss']:.4f}, val loss "
                    f"{ev['val_loss']:.4f}, val mean AUROC {ev['val_mean_auroc']:.4f}, {ev['img_per_s']:.1f} img/s"
                    + (" (best)" if ev["best"] else ""))
            if progress is not None and env.is_main:
                progress(ev)

        groups = param_groups(net, layer_decay=layer_decay)
        t0 = time.perf_counter()
        result = fit(net, td.images, td.y, train_rows=train_rows, val_rows=val_rows, prepare=prepare, config=cfg,
                     device=dev, param_groups=groups, checkpoint=str(out / "checkpoint.pt"), fingerprint=fingerprint,
                     workers=workers, rank=env.rank, world_size=env.world_size, progress=on_progress)
        doc = finish_run(out, net, td, result, prepare=prepare, cfg=cfg, device=dev, env=env, settings=settings,
                         backbone_provenance=bb_prov, preprocess=pre_block, n_boot=n_boot, boot_seed=boot_seed,
                         bootstrap=bootstrap, boot_dir=boot_dir, train_s=time.perf_counter() - t0)
        barrier()
    if env.is_main:
        say(f"done: kept epoch {result.best_epoch}; test mean AUROC {doc['mean_auroc']['value']:.4f}")
        if subgroups:
            from embedkit.app.subgroups import add_subgroups

            block = add_subgroups(out, store=td.meta_path, age_bands=age_bands)
            if block is not None:
                doc["subgroups"] = block
                say(f"subgroups: {out / 'subgroups.csv'}")
    return FinetuneResult(out, doc, resumed=result.resumed_at is not None)


@contextlib.contextmanager
def _train_group(env, dev):
    """The DDP process group (NCCL on CUDA, gloo on CPU) for the run; yields a barrier function."""
    import os

    if not env.distributed:
        yield lambda: None
        return
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise EmbedkitError("MASTER_ADDR and MASTER_PORT must be set for a multi-process run; torchrun sets "
                                "them, under Slurm export them in the sbatch script.")
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world_size, **kwargs)
    try:
        yield dist.barrier
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()


def settings_of(out: str | Path) -> dict:
    """The settings recorded in a run directory's ``finetune.json``."""
    return json.loads((Path(out) / "finetune.json").read_text())["settings"]


__all__ = ["PROTOCOLS", "Protocol", "FinetuneResult", "FinetuneRunError", "run_finetune", "check_run_dir",
           "settings_of"]
