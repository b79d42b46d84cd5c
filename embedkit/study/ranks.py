"""The study under torchrun / Slurm: one process group for the whole grid, and rank-0-only work behind a barrier.

A study runs its rank-aware stages (cache-images, extract, finetune) on every rank and everything else (probe,
predict, subgroups, results.csv, report.md, the markers) on rank 0 while the other ranks wait. The barriers are the
extraction engine's (:class:`embedkit.extract.dist.ProcessGroup`: a peer silent for ``EMBEDKIT_DIST_TIMEOUT``
seconds fails the others with one line).

The default process group is opened once, here, and torn down when the study ends: the stages find it open and
reuse it. Opening and destroying one per stage would not work under torchrun: the launcher's key-value store
outlives a group, and a second group of the same name would read the first one's stale gloo addresses. With CUDA
the group carries NCCL for the finetunes' gradients next to gloo for everything else.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from embedkit.errors import EmbedkitError
from embedkit.extract.dist import DistEnv, ProcessGroup, dist_timeout, on_main

logger = logging.getLogger(__name__)


__all__ = ["study_group", "on_main"]


@contextlib.contextmanager
def study_group(env: DistEnv, *, device: str = "auto") -> Iterator[ProcessGroup]:
    """The study's barrier group (a no-op for one process; nothing heavy is imported then).

    Parameters
    ----------
    env : DistEnv
        From :func:`embedkit.extract.dist.detect_env`.
    device : str
        The study's ``device`` setting: ``"cpu"`` keeps NCCL out of the group.

    Yields
    ------
    ProcessGroup

    Raises
    ------
    EmbedkitError
        No MASTER_ADDR/MASTER_PORT. (The collectives' timeout, e.g. a finetune's gradients, is the larger of
        ``EMBEDKIT_DIST_TIMEOUT`` and 30 minutes; the barriers' is the heartbeat rule of ``ProcessGroup``.)
    """
    if not env.distributed:
        with ProcessGroup(env) as group:
            yield group
        return
    import datetime as _dt

    import torch
    import torch.distributed as dist

    own = False
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise EmbedkitError("MASTER_ADDR and MASTER_PORT must be set for a multi-process study; torchrun sets "
                                "them, under Slurm export them in the sbatch script (see the README).")
        backend = "gloo"
        if device != "cpu" and torch.cuda.is_available():
            from embedkit.devices import rank_device

            # No device_id: NCCL starts lazily, at a finetune's first gradient, so a grid without finetunes (or
            # two extraction ranks sharing one GPU) never opens an NCCL communicator.
            torch.cuda.set_device(rank_device(env.local_rank, torch.cuda.device_count()))
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                timeout=_dt.timedelta(seconds=max(dist_timeout(), 1800.0)))
        own = True
    try:
        with ProcessGroup(env) as group:
            yield group
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()
