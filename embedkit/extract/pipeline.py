"""Orchestration of ``extract`` and ``cache-images``: source -> (backbone) -> store, across ranks, resumable.

Both commands share the same steps: resolve the source, build the provenance, let rank 0 create (or reopen) the
sink while the others wait, take this rank's pending units, run the engine, wait for every rank, let rank 0
finalise. Re-running the same command therefore resumes: finished units are skipped by the ledger.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from embedkit.errors import ExtractionError
from embedkit.extract.dist import DistEnv, ProcessGroup, detect_env, on_main
from embedkit.extract.options import PREPROCESS, RESIZE, check_choice

logger = logging.getLogger(__name__)

#: progress(rows_mapped_so_far, rows_to_map) -- called on the main thread after each batch.
ProgressHook = Callable[[int, int], None]


@dataclass
class ExtractReport:
    """What one process did, plus the store's totals (read after every rank finished).

    Attributes
    ----------
    out : Path
    rank, world_size : int
    rows_total : int
        Rows in the store.
    done, failed : int
        Rows this process mapped successfully / found unreadable.
    skipped : int
        Rows in units already finished before this run (all ranks' view of the ledger at start).
    seconds, img_per_s : float
    peak_rss_mb : float
        Peak resident memory of this process (MiB).
    peak_rss_workers_mb : float
        Largest peak among the finished loader worker processes (MiB).
    gpu_max_allocated_mb : float or None
    store_filled, store_failed : int
        Totals in the store at the end.
    failures : dict of id -> reason
        Unreadable images recorded in the store.
    device, precision : str
    """

    out: Path
    rank: int
    world_size: int
    rows_total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    img_per_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_rss_workers_mb: float = 0.0
    gpu_max_allocated_mb: float | None = None
    store_filled: int = 0
    store_failed: int = 0
    complete: bool = False
    failures: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "fp32"

    def as_dict(self) -> dict:
        """JSON-able summary (what ``--json`` prints)."""
        d = dict(self.__dict__)
        d["out"] = str(self.out)
        return d


def default_workers(kind: str) -> int:
    """Loader workers: decoding needs cores; cache reads need one process ahead of the model."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if kind == "cache" else max(1, min(8, cpus - 1))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_sink(make: Callable[[], Any], reopen: Callable[[], Any], group: ProcessGroup) -> Any:
    """Rank 0 runs ``make`` (create or resume); the others ``reopen`` after it succeeded.

    A failure on rank 0 (say, a provenance mismatch) is broadcast so that no rank waits at a barrier forever.
    """
    sink = on_main(group, make, failed="Rank 0 could not open the output; see its error message.")
    if not group.env.is_main:
        sink = reopen()
    return sink


def run_sink(
    sink: Any,
    *,
    source: Any,
    mapper: Any,
    resolution: int,
    preset: Any,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    lag: int,
    env: DistEnv,
    progress: ProgressHook | None,
) -> tuple[Any, int]:
    """Run this rank's pending units of ``sink``; returns (RunStats, rows skipped as already done)."""
    from embedkit.extract.engine import run_units
    from embedkit.extract.reader import CacheBatches, FileBatches, make_loader, plan_batches

    units = sink.pending_units(env.rank, env.world_size)
    done = sink.done_units()
    n_units = len(done)
    skipped = sum(_rows(sink.unit_slice(u)) for u in range(n_units) if done[u])
    plan = plan_batches([(u, sink.unit_slice(u)) for u in units], batch_size)
    total = sum(_rows(sink.unit_slice(u)) for u in units)
    if source.kind == "cache":
        dataset = CacheBatches(plan, source.cache_path)
    else:
        dataset = FileBatches(plan, source.paths, preset, resolution)
    loader = make_loader(dataset, workers=min(workers, len(plan)), pin_memory=pin_memory)
    seen = 0

    def on_rows(n: int) -> None:
        nonlocal seen
        seen += n
        if progress is not None:
            progress(seen, total)

    if progress is not None:
        progress(0, total)
    stats = run_units(loader, mapper, sink, lag=lag, on_rows=on_rows)
    return stats, skipped


def _rows(sl: slice) -> int:
    return sl.stop - sl.start


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak RSS in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, kids


def make_preset_for(preprocess: str, *, resolution: int, mean: Sequence[float], std: Sequence[float],
                    resize: Literal["pad", "stretch"]) -> Any:
    """The data layer's preset, with our argument names checked first (the rule of
    :class:`~embedkit.extract.options.ImageOptions`, for callers without options, e.g. finetune)."""
    from embedkit.data import make_preset

    check_choice("preprocess", preprocess, PREPROCESS)
    check_choice("resize", resize, RESIZE)
    if preprocess == "paper":
        # The reference protocol feeds x/255 on three channels, without mean/std and always stretched.
        return make_preset("paper", resolution=resolution)
    return make_preset(preprocess, resolution=resolution, mean=tuple(mean), std=tuple(std), resize=resize)


def preset_block(preprocess: str, preset: Any) -> dict:
    """Provenance block of a preset: its name plus every parameter."""
    params = dict(preset.params())
    params.setdefault("preset", preprocess)
    return params


def base_provenance() -> dict:
    """Keys every provenance document carries."""
    from embedkit import __version__

    return {"embedkit_version": __version__, "created": _now()}


def gpu_peak_mb(device: Any) -> float | None:
    """torch.cuda.max_memory_allocated on ``device`` in MiB (None on CPU)."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def new_group(env: DistEnv | None, device_type: str = "cpu") -> ProcessGroup:
    """The barrier group for this run (gloo whatever the device: barriers need no GPU)."""
    return ProcessGroup(env or detect_env())
