"""The finetuning loop over an ``nn.Module`` and uint8 images: epochs, accumulation, clipping, bf16 autocast,
DDP, validation every epoch, selection on validation only, atomic resumable checkpoints.

Determinism: every random draw of a micro-batch is a pure function of ``(seed, epoch, micro-batch, rank)`` (the
global torch generator is reseeded before each one) and every augmentation draw a function of ``(seed, epoch,
row)``; the epoch order is a permutation drawn from ``(seed, epoch)``. A resumed run therefore replays exactly
what the uninterrupted run would have done, and the augmentation a row receives does not depend on how rows are
sharded over ranks.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np

from probes.errors import ProbeError
from probes.finetune.checkpoint import load_checkpoint, save_checkpoint
from probes.metrics import auroc, mean_over_labels

logger = logging.getLogger(__name__)

Select = Literal["val-loss", "val-auroc"]
#: prepare(uint8 images (b, R, R) on the device, *, train, keys) -> float model input (b, 3, R, R)
Prepare = Callable[..., Any]


class FinetuneError(ProbeError):
    """Training cannot go on (a non-finite loss, a checkpoint of another run)."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of the loop (all of it goes into the run's provenance).

    Attributes
    ----------
    epochs : int
    batch_size : int
        Images per micro-batch, over all ranks together (each rank takes every world_size-th row of it).
    accumulate : int
        Micro-batches per optimiser step.
    lr, weight_decay : float
        Base learning rate (multiplied by each parameter group's ``lr_scale``) and weight decay (0 for groups
        with ``weight_decay=0``).
    optimizer : {"adam", "adamw"}
    schedule : {"constant", "cosine"}
        ``cosine``: linear warm-up over ``warmup_epochs`` then cosine to 0, stepped per optimiser step.
    warmup_epochs : float
    grad_clip : float or None
        Max global gradient norm.
    precision : {"fp32", "bf16"}
        ``bf16``: autocast on CUDA (weights stay fp32). ``fp32`` also turns TF32 off on CUDA.
    select : {"val-loss", "val-auroc"}
        Which validation figure picks the kept epoch (lowest loss / highest mean AUROC).
    drop_last : bool
        Drop the last incomplete training batch of each epoch.
    seed : int
    checkpoint_every : int
        Also checkpoint every N optimiser steps (0: at epoch ends only).
    """

    epochs: int = 1
    batch_size: int = 30
    accumulate: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    select: Select = "val-loss"
    drop_last: bool = True
    seed: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accumulate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ProbeError(f"The '{name}' parameter of finetune must be an int >= 1. Got {v!r}.")
        if not self.lr > 0:
            raise ProbeError(f"The 'lr' parameter of finetune must be > 0. Got {self.lr!r}.")
        if self.weight_decay < 0:
            raise ProbeError(f"The 'weight_decay' parameter of finetune must be >= 0. Got {self.weight_decay!r}.")
        choices = {"optimizer": ("adam", "adamw"), "schedule": ("constant", "cosine"), "precision": ("fp32", "bf16"),
                   "select": ("val-loss", "val-auroc")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ProbeError(f"The '{name}' parameter of finetune must be one of {', '.join(allowed)}. "
                                 f"Got {getattr(self, name)!r}.")
        if self.checkpoint_every < 0:
            raise ProbeError(f"The 'checkpoint_every' parameter of finetune must be >= 0. Got {self.checkpoint_every}.")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    """What training produced: the kept epoch, its weights, and the per-epoch log."""

    best_epoch: int
    best_val_loss: float
    best_val_auroc: float
    best_state: dict
    log: list[dict]
    pos_weight: list[float]
    steps: int
    resumed_at: dict | None = None
    timings: dict = field(default_factory=dict)


def positive_weights(y: np.ndarray) -> np.ndarray:
    """``(negatives / positives)`` per label over known (non-NaN) training labels; 1 where a label has no positive.

    Examples
    --------
    >>> positive_weights(np.array([[1.0], [0.0], [0.0], [np.nan]])).tolist()
    [2.0]
    """
    y = np.asarray(y, dtype=np.float64)
    pos = np.nansum(y == 1, axis=0).astype(np.float64)
    neg = np.nansum(y == 0, axis=0).astype(np.float64)
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).astype(np.float32)


def masked_bce_sum(logits, y, pos_weight):
    """Sum of BCE-with-logits (``pos_weight`` on positives) over known labels; NaN targets contribute nothing.

    Parameters
    ----------
    logits, y : Tensor (B, K)
        ``y`` holds 1 / 0 / NaN.
    pos_weight : Tensor (K,)

    Returns
    -------
    (Tensor scalar, int)
        The summed loss (float32) and the number of known entries.
    """
    import torch.nn.functional as F

    known = ~y.isnan()
    target = y.nan_to_num(0.0)  # NaN targets are replaced before the loss: NaN * 0 is still NaN
    per = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight, reduction="none")
    return (per * known).sum(), int(known.sum())


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: well mixed, platform independent)."""
    lo, hi = (int(v) for v in np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2))
    return (lo | (hi << 32)) & ((1 << 63) - 1)


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a permutation of ``range(n)`` drawn from ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), 7, int(epoch)]).permutation(n)


def batch_bounds(n: int, batch_size: int, *, drop_last: bool) -> list[tuple[int, int]]:
    """(start, stop) of each micro-batch of an epoch of ``n`` rows."""
    stop = n - n % batch_size if drop_last else n
    return [(s, min(s + batch_size, n)) for s in range(0, stop, batch_size)]


def take_images(images, rows: np.ndarray) -> np.ndarray:
    """``images[rows]`` for a numpy or zarr array, reading in ascending order and returning in ``rows`` order."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    if hasattr(images, "oindex"):
        got = np.asarray(images.oindex[sorted_rows])
    else:
        got = np.asarray(images[sorted_rows])
    out = np.empty_like(got)
    out[order] = got
    return out


class _Loader:
    """Micro-batches of one epoch from ``start`` on, read ahead in DataLoader workers (spawned: zarr + fork hang)."""

    def __init__(self, images, batches: Sequence[np.ndarray], *, workers: int, pin: bool) -> None:
        import torch
        from torch.utils.data import DataLoader

        kwargs: dict[str, Any] = {}
        if workers > 0:
            kwargs.update(multiprocessing_context="spawn", prefetch_factor=2, persistent_workers=False)
        self.loader = DataLoader(_Reads(images, batches), batch_size=None, shuffle=False, num_workers=workers,
                                 pin_memory=pin, collate_fn=_identity,
                                 generator=torch.Generator().manual_seed(0), **kwargs)

    def __iter__(self):
        return iter(self.loader)


class _Reads:
    def __init__(self, images, batches) -> None:
        self.images, self.batches = images, list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(np.ascontiguousarray(take_images(self.images, self.batches[i])))


def _identity(x):
    return x


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))

    def f(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def make_optimizer(model, cfg: TrainConfig, param_groups: list[dict] | None):
    """Adam / AdamW over ``param_groups`` (dicts with ``params``, optional ``lr_scale`` and ``weight_decay``)."""
    import torch

    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    built = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            built.append({"params": params, "lr": cfg.lr * float(g.get("lr_scale", 1.0)),
                          "weight_decay": cfg.weight_decay if g.get("weight_decay", True) else 0.0})
    if not built:
        raise FinetuneError("No trainable parameters: check --mode.")
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(built, lr=cfg.lr)


def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict(model, images, rows: np.ndarray, *, prepare: Prepare, batch_size: int, device, precision: str = "fp32",
            rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Logits (len(rows), K) float32 of ``rows`` in eval mode, without augmentation; ranks split rows and gather."""
    import torch

    rows = np.asarray(rows, dtype=np.int64)
    mine = rows[rank::world_size]
    model.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(mine), batch_size):
            u8 = torch.from_numpy(take_images(images, mine[s:s + batch_size])).to(device)
            with _autocast(device, precision):
                outs.append(model(prepare(u8, train=False, keys=None)).float().cpu())
    k = None if not outs else outs[0].shape[1]
    local = torch.cat(outs).numpy() if outs else np.zeros((0, k or 0), np.float32)
    if world_size == 1:
        return local
    import torch.distributed as dist

    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, local)
    k = max(g.shape[1] for g in gathered)
    out = np.zeros((len(rows), k), dtype=np.float32)
    for r, g in enumerate(gathered):
        out[r::world_size] = g
    return out


def _val_metrics(logits: np.ndarray, y: np.ndarray, pos_weight) -> tuple[float, float]:
    import torch

    s, n = masked_bce_sum(torch.from_numpy(logits), torch.from_numpy(y), torch.as_tensor(pos_weight))
    with np.errstate(all="ignore"):
        mean_auc = float(mean_over_labels(np.atleast_1d(auroc(y, 1 / (1 + np.exp(-logits.astype(np.float64)))))))
    return float(s) / max(n, 1), mean_auc


def _better(select: str, loss: float, auc: float, best: dict | None) -> bool:
    if best is None:
        return True
    if select == "val-auroc":
        return bool(np.isfinite(auc) and (not np.isfinite(best["val_auroc"]) or auc > best["val_auroc"]))
    return loss < best["val_loss"]


def _state_cpu(module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def fit(model, images, y, *, train_rows: np.ndarray, val_rows: np.ndarray, prepare: Prepare, config: TrainConfig,
        device, param_groups: list[dict] | None = None, checkpoint: str | None = None, fingerprint: str = "",
        workers: int = 0, rank: int = 0, world_size: int = 1, progress: Callable[[dict], None] | None = None
        ) -> FitResult:
    """Train ``model`` on ``train_rows``, validate on ``val_rows`` every epoch, keep the best epoch's weights.

    Parameters
    ----------
    model : torch.nn.Module
        ``model(x (B, 3, R, R)) -> logits (B, K)``, already on ``device``.
    images : array-like (N, R, R) uint8
        numpy or zarr (read per batch, in ascending row order).
    y : array (N, K) float
        1 / 0 / NaN (unknown, masked out of the loss).
    train_rows, val_rows : array of int
        Row indices; the test rows are never passed here, so no decision can depend on them.
    prepare : callable
        ``prepare(u8 (b, R, R) on device, *, train, keys) -> (b, 3, R, R)``: augmentation (``train=True`` only, one
        key per row) and normalisation.
    config : TrainConfig
    device : torch.device
    param_groups : list of dict, optional
        ``params`` with ``lr_scale`` (layer-wise decay) and ``weight_decay`` (bool).
    checkpoint : str, optional
        Checkpoint file: resumed from when it exists, rewritten at every epoch end and every
        ``config.checkpoint_every`` steps.
    fingerprint : str
        Identifies the run's settings; a checkpoint with another fingerprint is refused.
    workers : int
        Loader processes.
    rank, world_size : int
        DDP layout (the process group must be initialised when ``world_size > 1``).
    progress : callable(dict), optional
        Called after each optimiser step (``event="step"``; ``images``: the step's images, all ranks) and each
        epoch (``event="epoch"``).

    Returns
    -------
    FitResult

    Raises
    ------
    FinetuneError
        A non-finite loss (names the epoch and step), or a checkpoint written by another configuration.
    """
    import torch

    cfg = config
    t_start = time.perf_counter()
    y = np.asarray(y, dtype=np.float32)
    train_rows, val_rows = np.asarray(train_rows, np.int64), np.asarray(val_rows, np.int64)
    if train_rows.size < cfg.batch_size and cfg.drop_last:
        raise FinetuneError(f"The train split has {train_rows.size} rows, fewer than one batch of "
                            f"{cfg.batch_size} with drop_last; lower --batch-size.")
    if val_rows.size == 0:
        raise FinetuneError("The validation split is empty; selection needs validation rows.")
    if device.type == "cuda" and cfg.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    pos_weight = positive_weights(y[train_rows])
    pw = torch.as_tensor(pos_weight, device=device)
    net = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model, cfg, param_groups)
    bounds = batch_bounds(train_rows.size, cfg.batch_size, drop_last=cfg.drop_last)
    steps_per_epoch = -(-len(bounds) // cfg.accumulate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch))

    epoch, micro, global_step = 0, 0, 0
    best: dict | None = None
    log: list[dict] = []
    run_loss = [0.0, 0, 0.0, 0]  # loss sum, steps, train seconds, images
    resumed = None
    state = load_checkpoint(checkpoint) if checkpoint else None
    if state is not None:
        if state.get("fingerprint") != fingerprint:
            raise FinetuneError(f"Checkpoint '{checkpoint}' belongs to another configuration; use a new --out.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        epoch, micro, global_step = int(state["epoch"]), int(state["micro"]), int(state["global_step"])
        best, log, run_loss = state["best"], list(state["log"]), list(state["running"])
        resumed = {"epoch": epoch, "micro_batch": micro, "global_step": global_step}
        logger.info("resumed at epoch %d, micro-batch %d (step %d)", epoch, micro, global_step)

    def save(next_epoch: int, next_micro: int) -> None:
        if checkpoint is None or rank != 0:
            return
        save_checkpoint(checkpoint, {
            "fingerprint": fingerprint, "epoch": next_epoch, "micro": next_micro, "global_step": global_step,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "best": best, "log": log, "running": run_loss,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "sampler": {"seed": cfg.seed, "epoch": next_epoch, "position": next_micro},
        })

    def barrier() -> None:
        if world_size > 1:
            torch.distributed.barrier()

    while epoch < cfg.epochs:
        order = train_rows[epoch_order(train_rows.size, seed=cfg.seed, epoch=epoch)]
        global_batches = [order[s:e] for s, e in bounds]
        local = [b[rank::world_size] for b in global_batches[micro:]]
        model.train()
        t_ep = time.perf_counter()
        group_loss = torch.zeros((), device=device)
        for i, u8 in enumerate(_Loader(images, local, workers=workers, pin=device.type == "cuda")):
            mi = micro + i
            rows_g = global_batches[mi]
            group_first = (mi // cfg.accumulate) * cfg.accumulate
            group_size = min(cfg.accumulate, len(bounds) - group_first)
            last_in_group = mi == group_first + group_size - 1
            torch.manual_seed(step_seed(cfg.seed, epoch, mi, rank))
            rows_l = rows_g[rank::world_size]
            yb = torch.from_numpy(y[rows_l]).to(device, non_blocking=True)
            count = int((~np.isnan(y[rows_g])).sum())
            keys = [step_seed(cfg.seed, epoch, int(r)) for r in rows_l]
            x = prepare(u8.to(device, non_blocking=True), train=True, keys=keys)
            sync = last_in_group or world_size == 1
            ctx = net.no_sync() if (world_size > 1 and not sync) else _null()
            with ctx:
                with _autocast(device, cfg.precision):
                    logits = net(x)
                s, _ = masked_bce_sum(logits, yb, pw)
                # Normalised by the *global* batch's known entries and rescaled for DDP's gradient averaging, so
                # any number of ranks computes the gradient of the same global mean.
                loss = s * (world_size / max(count, 1) / group_size)
                loss.backward()
            group_loss += loss.detach() / world_size
            if not last_in_group:
                continue
            if world_size > 1:
                torch.distributed.all_reduce(group_loss)
            value = float(group_loss)
            if not math.isfinite(value):
                raise FinetuneError(f"The training loss became {value} at epoch {epoch + 1}, step {global_step + 1} "
                                    f"(micro-batch {mi + 1}); lower --lr or use --precision fp32. The last "
                                    "checkpoint is kept.")
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            global_step += 1
            group_loss = torch.zeros((), device=device)
            run_loss[0] += value
            run_loss[1] += 1
            step_images = sum(len(global_batches[j]) for j in range(group_first, mi + 1))
            run_loss[3] += step_images
            if progress is not None:
                progress({"event": "step", "epoch": epoch + 1, "epochs": cfg.epochs, "step": mi // cfg.accumulate + 1,
                          "steps": steps_per_epoch, "global_step": global_step, "loss": value,
                          "lr": opt.param_groups[-1]["lr"], "images": step_images})
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and mi + 1 < len(bounds):
                run_loss[2] += time.perf_counter() - t_ep
                t_ep = time.perf_counter()
                save(epoch, mi + 1)
                barrier()
        run_loss[2] += time.perf_counter() - t_ep
        t_val = time.perf_counter()
        logits = predict(model, images, val_rows, prepare=prepare, batch_size=cfg.batch_size, device=device,
                         precision=cfg.precision, rank=rank, world_size=world_size)
        val_loss, val_auc = _val_metrics(logits, y[val_rows], pos_weight)
        improved = _better(cfg.select, val_loss, val_auc, best)
        if improved:
            best = {"epoch": epoch + 1, "val_loss": val_loss, "val_auroc": val_auc, "state": _state_cpu(model)}
        entry = {"epoch": epoch + 1, "train_loss": run_loss[0] / max(run_loss[1], 1), "val_loss": val_loss,
                 "val_mean_auroc": val_auc, "lr": float(opt.param_groups[-1]["lr"]),
                 "img_per_s": run_loss[3] / run_loss[2] if run_loss[2] > 0 else float("nan"),
                 "val_s": time.perf_counter() - t_val, "steps": global_step, "best": improved}
        log.append(entry)
        run_loss = [0.0, 0, 0.0, 0]
        epoch, micro = epoch + 1, 0
        save(epoch, 0)
        barrier()
        if progress is not None:
            progress({"event": "epoch", **entry, "epochs": cfg.epochs})
    assert best is not None  # noqa: S101 - epochs >= 1 guarantees one validation
    return FitResult(best_epoch=int(best["epoch"]), best_val_loss=float(best["val_loss"]),
                     best_val_auroc=float(best["val_auroc"]), best_state=best["state"], log=log,
                     pos_weight=[float(v) for v in pos_weight], steps=global_step, resumed_at=resumed,
                     timings={"fit_s": time.perf_counter() - t_start})


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
