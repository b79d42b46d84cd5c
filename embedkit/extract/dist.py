"""Scale-out without a framework: rank discovery (torchrun, then Slurm) and barriers that fail on a dead peer.

The process group exists only for barriers: ranks never exchange tensors. Each rank writes whole work units of one
store (the store's ``pending_units(rank, world_size)`` keeps them disjoint), so the ranks need to agree on three
moments only: the store exists (rank 0 creates it), every rank is done (rank 0 finalises), and shutdown.

The group is gloo, never NCCL: barriers need no GPU (so two ranks may share one, and a rank's GPU is free to be the
one its launcher gave it, see :func:`embedkit.devices.rank_device`). A barrier is a counter in the group's key-value
store plus a heartbeat per rank: ranks that finish hours apart (a resume leaves the pending units uneven) wait for
each other as long as every peer's heartbeat moves, and a peer silent for ``EMBEDKIT_DIST_TIMEOUT`` seconds (killed,
out of memory, node lost) fails the others with one line instead of holding their GPUs for days.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from embedkit.errors import ExtractionError

logger = logging.getLogger(__name__)

#: Environment variable: seconds without a heartbeat after which a peer counts as dead (also bounds the rendezvous).
TIMEOUT_ENV = "EMBEDKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
#: Groups opened by this process: the n-th has one name on every rank (ranks open theirs in the same order), so a
#: later group on the same launcher store (a study opens one per stage) never reads an earlier one's counters.
_GROUPS = itertools.count(1)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a multi-process run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of processes, rank on this node (selects visible GPU
        ``local_rank mod count``, see :func:`embedkit.devices.rank_device`).
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


def dist_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds from ``EMBEDKIT_DIST_TIMEOUT`` (default 300).

    Raises
    ------
    ExtractionError
        Not a positive number.

    Examples
    --------
    >>> dist_timeout({"EMBEDKIT_DIST_TIMEOUT": "30"})
    30.0
    """
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ExtractionError(f"{TIMEOUT_ENV} must be a positive number of seconds. Got {raw!r}.")
    return value


class ProcessGroup:
    """A barrier-only gloo group with heartbeats; a no-op for a single process.

    Parameters
    ----------
    env : DistEnv
    timeout_s : float, optional
        Seconds a peer may stay silent before it counts as dead (default :func:`dist_timeout`); also the
        rendezvous timeout, so it bounds how far apart the ranks may reach the start.

    Raises
    ------
    ExtractionError
        A launch without MASTER_ADDR/MASTER_PORT, a bad ``EMBEDKIT_DIST_TIMEOUT``, or (from :meth:`barrier` and
        :meth:`all_ok`) a dead peer or a lost rendezvous store.
    """

    def __init__(self, env: DistEnv, *, timeout_s: float | None = None) -> None:
        self.env = env
        self.timeout_s = dist_timeout() if timeout_s is None else float(timeout_s)
        self._own = False
        self._store = None
        self._seq = 0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if not env.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
                raise ExtractionError(
                    "MASTER_ADDR and MASTER_PORT must be set for a multi-process run; torchrun sets them, "
                    "under Slurm export them in the sbatch script (see the README)."
                )
            try:
                dist.init_process_group(backend="gloo", rank=env.rank, world_size=env.world_size,
                                        timeout=_dt.timedelta(seconds=self.timeout_s))
            except (RuntimeError, ValueError) as exc:  # DistStoreError/DistNetworkError are RuntimeErrors
                raise ExtractionError(f"Rank {env.rank} could not join the other {env.world_size - 1} rank(s) "
                                      f"within {self.timeout_s:g} s ({_first_line(exc)}); check MASTER_ADDR/"
                                      f"MASTER_PORT, or raise {TIMEOUT_ENV}.") from None
            self._own = True
        # The default store is the rendezvous key-value store every launcher sets up (torchrun's agent, or rank 0).
        self._store = dist.distributed_c10d._get_default_store()
        self._interval = max(0.2, min(10.0, self.timeout_s / 5))
        self._gen = next(_GROUPS)
        self._store.add(self._beat_key(env.rank), 1)
        self._beat = threading.Thread(target=self._heartbeat, name="embedkit-heartbeat", daemon=True)
        self._beat.start()
        logger.info("process group up: rank %d/%d (gloo, peer timeout %g s)", env.rank, env.world_size,
                    self.timeout_s)

    # -- heartbeat -------------------------------------------------------------------------------------------------
    @staticmethod
    def _beat_key(rank: int) -> str:
        return f"embedkit/heartbeat/{rank}"

    def _heartbeat(self) -> None:
        key = self._beat_key(self.env.rank)
        while not self._stop.wait(self._interval):
            try:
                self._store.add(key, 1)
            except Exception:  # noqa: BLE001 - the store is gone; the waiting thread reports it
                return

    # -- synchronisation -------------------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait for every rank (returns at once for a single process).

        Raises
        ------
        ExtractionError
            A peer stopped heart-beating for ``timeout_s`` seconds, or the rendezvous store went away.
        """
        if self.env.distributed:
            self._sum("barrier", 0)

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (a failed rank makes the others stop instead of hang)."""
        if not self.env.distributed:
            return ok
        return self._sum("ok", 0 if ok else 1) == 0

    def _sum(self, name: str, value: int) -> int:
        """Add ``value`` on every rank and return the total once all ranks have added theirs."""
        self._seq += 1
        key = f"embedkit/sync/{self._gen}.{self._seq}/{name}"
        rank, world = self.env.rank, self.env.world_size
        self._call(self._store.add, f"{key}/sum", value)
        self._call(self._store.add, f"{key}/rank{rank}", 1)
        self._call(self._store.add, f"{key}/n", 1)
        self._wait(key, "n")
        total = int(self._call(self._store.add, f"{key}/sum", 0))
        self._call(self._store.add, f"{key}/left{rank}", 1)
        self._call(self._store.add, f"{key}/left", 1)
        if rank == 0:
            # Rank 0 may host the store: it leaves last, or a peer still reading the count would lose the store.
            self._wait(key, "left")
        return total

    def _wait(self, key: str, counter: str) -> None:
        world = self.env.world_size
        marker = "rank" if counter == "n" else "left"
        last = {r: (-1, time.monotonic()) for r in range(world)}
        next_check = time.monotonic() + self._interval
        poll = min(0.5, self._interval / 2)
        while self._call(self._store.add, f"{key}/{counter}", 0) < world:
            now = time.monotonic()
            if now >= next_check:
                next_check = now + self._interval
                for r in range(world):
                    if r == self.env.rank or self._call(self._store.add, f"{key}/{marker}{r}", 0):
                        continue
                    beat = int(self._call(self._store.add, self._beat_key(r), 0))
                    if beat != last[r][0]:
                        last[r] = (beat, now)
                    elif now - last[r][1] > self.timeout_s:
                        raise ExtractionError(
                            f"Rank {r} stopped responding (no heartbeat for {self.timeout_s:g} s: killed, out of "
                            f"memory, or its node was lost); rank {self.env.rank} stops too. Re-run the same command "
                            f"to resume; raise {TIMEOUT_ENV} if ranks are merely slow.")
            time.sleep(poll)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - DistNetworkError/DistStoreError/RuntimeError by torch version
            raise ExtractionError(
                f"Rank {self.env.rank} lost the rendezvous store ({_first_line(exc)}): rank 0 or the launcher died; "
                "re-run the same command to resume.") from None

    def close(self) -> None:
        """Stop the heartbeat and tear the group down if this object created it."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        if self._own:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._own = False

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


T = TypeVar("T")


def on_main(group: ProcessGroup, fn: Callable[[], T], *,
            failed: str = "Rank 0 failed (see its error message); this rank stops too. Re-run the same command "
                          "to resume.") -> T | None:
    """Run ``fn`` on rank 0 while the other ranks wait; a failure there is raised on every rank.

    Returns ``fn()`` on rank 0 and None elsewhere.

    Raises
    ------
    Exception
        Whatever ``fn`` raised (rank 0), or :class:`ExtractionError` with ``failed`` (the other ranks), so that no
        rank waits at a barrier forever.
    """
    value, error = None, None
    if group.env.is_main:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = exc
    if not group.all_ok(error is None):
        if error is not None:
            raise error
        raise ExtractionError(failed)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
