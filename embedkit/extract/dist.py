"""Scale-out without a framework: rank discovery (torchrun, then Slurm) and barriers.

The process group exists only for barriers: ranks never exchange tensors. Each rank writes whole work units of one
store (the store's ``pending_units(rank, world_size)`` keeps them disjoint), so the ranks need to agree on three
moments only: the store exists (rank 0 creates it), every rank is done (rank 0 finalises), and shutdown.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from embedkit.errors import ExtractionError

logger = logging.getLogger(__name__)

#: Seconds a rank waits at a barrier. Ranks can finish hours apart after a resume leaves the pending units uneven.
DEFAULT_TIMEOUT_S = 48 * 3600


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a multi-process run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of processes, rank on this node (selects ``cuda:local_rank``).
    launcher : str
        ``"torchrun"``, ``"slurm"`` or ``"single"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (creates and finalises the store, owns the console)."""
        return self.rank == 0


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ExtractionError(f"Environment variable {name} must be an integer. Got {environ[name]!r}.") from None


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read rank and world size from torchrun's variables, else Slurm's.

    Parameters
    ----------
    environ : mapping, optional
        Defaults to ``os.environ``.

    Returns
    -------
    DistEnv

    Raises
    ------
    ExtractionError
        If the variables are malformed or inconsistent.

    Examples
    --------
    >>> detect_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank
    1
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        launcher = "slurm"
    else:
        return DistEnv()
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ExtractionError(
            f"Inconsistent rank variables: rank {rank}, world size {world}, local rank {local}. "
            "Launch with torchrun or srun, or unset RANK/WORLD_SIZE."
        )
    if world == 1:
        return DistEnv(launcher=launcher)
    return DistEnv(rank=rank, world_size=world, local_rank=local, launcher=launcher)


class ProcessGroup:
    """A barrier-only process group: gloo on CPU, NCCL on CUDA; a no-op for a single process.

    Parameters
    ----------
    env : DistEnv
    device : str
        ``"cpu"`` or ``"cuda"`` (the backend follows it).
    timeout_s : float
        Barrier timeout.

    Raises
    ------
    ExtractionError
        If a Slurm launch lacks MASTER_ADDR/MASTER_PORT.
    """

    def __init__(self, env: DistEnv, *, device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.env = env
        self._device = device
        self._own = False
        if not env.distributed:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            return
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ExtractionError(
                "MASTER_ADDR and MASTER_PORT must be set for a multi-process run; torchrun sets them, "
                "under Slurm export them in the sbatch script (see the README)."
            )
        backend = "nccl" if device == "cuda" else "gloo"
        kwargs = {}
        if device == "cuda":
            import torch

            torch.cuda.set_device(env.local_rank)
            kwargs["device_id"] = torch.device("cuda", env.local_rank)
        dist.init_process_group(
            backend=backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=_dt.timedelta(seconds=timeout_s),
            **kwargs,
        )
        self._own = True
        logger.info("process group up: rank %d/%d (%s)", env.rank, env.world_size, backend)

    def barrier(self) -> None:
        """Wait for every rank (returns at once for a single process)."""
        if not self.env.distributed:
            return
        import torch.distributed as dist

        if self._device == "cuda":
            dist.barrier(device_ids=[self.env.local_rank])
        else:
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (a failed rank makes the others stop instead of hang)."""
        if not self.env.distributed:
            return ok
        import torch
        import torch.distributed as dist

        dev = torch.device("cuda", self.env.local_rank) if self._device == "cuda" else torch.device("cpu")
        flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=dev)
        dist.all_reduce(flag)
        return int(flag.item()) == 0

    def close(self) -> None:
        """Tear the group down if this object created it."""
        if self._own:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._own = False

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
