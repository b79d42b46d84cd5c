"""The writer lock of a unit-ledger artefact (embedding store, image cache): ``fcntl.flock`` on
``<dir>/ledger/writer.lock``.

``flock`` locks belong to the open file description, so the kernel drops them the moment the holder dies (SIGKILL
included): a killed writer's store can be reopened at once. A single writer holds the lock exclusively. The ranks of
one distributed run share it: rank 0 takes it exclusively, writes the holder document (pid, host, run id, world
size), then downgrades to shared; the other ranks take it shared and check the document names their run.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path

from stores.errors import StoreLockedError

# Inside the ledger array's directory: zarr never lists an array's directory, whereas a stray file at the group
# level makes every member listing (xarray included) warn "not recognized as a component of a Zarr hierarchy".
LOCK_RELPATH = "ledger/writer.lock"

#: Locks this process holds; a forked child closes its copies of their descriptors at once (see _drop_in_child).
_HELD: weakref.WeakSet = weakref.WeakSet()

_RANK_RETRIES = 100  # rank > 0 may collide with rank 0's brief exclusive window: retry for ~2 s
_RANK_RETRY_SLEEP_S = 0.02


def default_run_id() -> str | None:
    """The run id that ranks of one launch share, from the launcher's environment (None when not distributed).

    Returns
    -------
    str or None
        ``TORCHELASTIC_RUN_ID`` when set, else ``MASTER_ADDR:MASTER_PORT`` when both are set, else None.
    """
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return os.environ["TORCHELASTIC_RUN_ID"]
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    return None


class WriterLock:
    """A held writer lock on one store directory; release it with :meth:`release` (or let the process die).

    Parameters
    ----------
    store_dir : Path
        The store's root directory (must exist).
    rank, world_size : int
        Position in a distributed run; ``world_size == 1`` is a single exclusive writer.
    run_id : str or None
        Identifier shared by the ranks of one run (checked by ranks > 0 when both sides have one).
    relpath : str
        Lock file, relative to ``store_dir`` (inside an array directory, which zarr never lists).
    noun : str
        What the messages call the directory (``"Store"``, ``"Image cache"``).

    Raises
    ------
    StoreLockedError
        Another writer (or another run) holds the store.
    """

    def __init__(self, store_dir: Path, *, rank: int = 0, world_size: int = 1, run_id: str | None = None,
                 relpath: str = LOCK_RELPATH, noun: str = "Store") -> None:
        self.path = Path(store_dir) / relpath
        self.noun = noun
        self.store_dir = Path(store_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size, self.run_id = rank, world_size, run_id
        self._pid = os.getpid()
        # O_CLOEXEC: an exec'd child (a subprocess) never inherits the lock; forked children drop it (_HELD).
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if rank == 0:
                self._acquire_leader()
            else:
                self._acquire_follower()
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        _HELD.add(self)

    def _acquire_leader(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._locked_error() from None
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id,
               "world_size": self.world_size, "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(doc, allow_nan=False).encode(), 0)
        os.fsync(self._fd)
        if self.world_size > 1:
            # Linux converts EX -> SH non-atomically; a writer slipping into the gap makes this fail, never both win.
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._locked_error() from None

    def _acquire_follower(self) -> None:
        for _ in range(_RANK_RETRIES):
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(_RANK_RETRY_SLEEP_S)
        else:
            raise self._locked_error()
        doc = self.holder()
        same_run = (doc.get("world_size") == self.world_size
                    and (doc.get("run_id") is None or self.run_id is None or doc.get("run_id") == self.run_id))
        if not same_run:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            raise StoreLockedError(
                f"{self.noun} '{self.store_dir}' is held by another run ({_describe(doc)}), not by rank 0 of this run "
                f"(run_id={self.run_id}, world_size={self.world_size}); rank 0 must create/open the store before "
                "the other ranks (put a barrier in between).")

    def holder(self) -> dict:
        """The holder document written by the current (or last) leader; empty when unreadable."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _locked_error(self) -> StoreLockedError:
        return StoreLockedError(
            f"{self.noun} '{self.store_dir}' is being written by {_describe(self.holder())}; wait for it to finish or "
            f"write to a new path. The lock is released when that process exits; if it is gone and the store still "
            f"reads as locked (a filesystem without flock), delete '{self.path}'.")

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            try:
                # A forked child (a loader worker) shares the open file description: LOCK_UN there would release
                # the parent's lock. It only closes its copy of the descriptor.
                if os.getpid() == self._pid:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
                _HELD.discard(self)

    def __del__(self) -> None:  # a dropped store object must not keep its process holding the lock
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _drop_in_child() -> None:
    """After a fork, in the child: close this process's copies of every held lock's descriptor.

    A flock belongs to the open file description, which fork shares: a DataLoader worker that kept the copy would
    hold the store lock after its parent was SIGKILLed, until it noticed and exited (~6 s), and an immediate re-run
    (a Slurm requeue) would be refused. Closing the child's copy never unlocks the parent (only LOCK_UN or closing
    the last copy does), and once the parent dies no copy is left, so the kernel drops the lock at that instant.
    This hook covers every fork (DataLoader workers, multiprocessing, os.fork) whatever created it, unlike a
    worker_init_fn (one call site) or a spawn/forkserver context (slower start-up, every dataset must pickle).
    """
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_in_child)


def _describe(doc: dict) -> str:
    if not doc:
        return "another process"
    run = f", run {doc['run_id']} of {doc.get('world_size')} ranks" if doc.get("run_id") else ""
    return f"pid {doc.get('pid')} on host {doc.get('host')} (since {doc.get('since')}{run})"
