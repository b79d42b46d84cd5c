"""Atomic, self-describing training checkpoints (one file: weights, optimiser, scheduler, RNG, position, best).

A checkpoint is written to a temporary file in the same directory, flushed and fsynced, renamed over the previous
one with ``os.replace`` and the directory fsynced, so a crash at any instant leaves either the old or the new
checkpoint, never a torn one. It is read back with ``torch.load(weights_only=True)``: only tensors, numbers,
strings, lists and dicts are stored (no pickled objects).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from probes.errors import ProbeError

logger = logging.getLogger(__name__)

FORMAT = "embedkit.finetune-checkpoint/1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(file_object)`` on a same-directory temporary file, fsync it, then ``os.replace`` it to ``path``.

    Parameters
    ----------
    path : str or PathLike
        Final location.
    write : callable(file) -> None
        Writes the content (binary mode).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def sweep_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporaries an earlier SIGKILL left behind (``.tmp-*`` in ``directory``); returns how many."""
    n = 0
    for p in Path(directory).glob(".tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plus the format tag) with ``torch.save``."""
    import torch

    doc = {"format": FORMAT, **state}
    return atomic_write(path, lambda f: torch.save(doc, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None if there is none), read with ``weights_only=True``.

    Raises
    ------
    ProbeError
        The file is unreadable or has another format.
    """
    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise ProbeError(f"Checkpoint '{path}' cannot be read ({type(exc).__name__}); delete it to start over.") \
            from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProbeError(f"'{path}' is not an embedkit finetune checkpoint ({FORMAT}); delete it to start over.")
    return doc


def save_weights(path: str | os.PathLike, state_dict: dict, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a state dict as safetensors (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    data = save(tensors, metadata=metadata)
    return atomic_write(path, lambda f: f.write(data))
