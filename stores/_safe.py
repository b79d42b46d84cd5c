"""Where a store may be created, and creation that survives a kill (see FORMAT.md, "Creating safely").

Two rules shared by the embedding store and the image cache:

- **Never destroy what is not ours.** A creator only ever clears a directory that already holds an artefact of
  the same kind (its ``zarr.json`` carries our attribute key), or one whose creation was interrupted (our
  ``creating.json`` marker), or one that holds nothing but our lock. ``.``, ``..``, the current directory or any
  directory above it, the home directory, ``/``, a file and a non-empty foreign folder are refused.
- **Creation is resumable by recreation.** The creator writes (and fsyncs) the marker beside the writer lock
  *before* it deletes or writes anything, builds every array, makes the tree durable, then removes the marker.
  A store that still has the marker (a kill, or ENOSPC, during creation) is never opened as a store; the same
  command starts its creation over.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Literal

from stores.errors import StoreError

#: The marker's file name; it sits beside the writer lock, inside the ledger array's directory.
MARKER_NAME = "creating.json"

State = Literal["absent", "incomplete", "complete"]


def classify(path: Path, *, key: str, lock_relpath: str, ledger: str | tuple[str, ...], noun: str,
             foreign_keys: dict[str, str]) -> State:
    """What ``path`` holds, for a creator of kind ``key``; raise when it is not ours to touch.

    Parameters
    ----------
    path : Path
        The target directory.
    key : str
        Our group attribute (``"embedkit_store"``, ``"embedkit_image_cache"``).
    lock_relpath : str
        The writer lock, relative to ``path`` (the marker sits beside it).
    ledger : str or tuple of str
        The array created last (its name in each format version); a ``zarr.json`` of ours without it is an
        interrupted creation (written by versions that had no marker).
    noun : str
        What messages call the artefact (``"embedding store"``).
    foreign_keys : dict of str to str
        Other embedkit attribute keys -> their nouns, to say what a refused folder is.

    Returns
    -------
    {"absent", "incomplete", "complete"}
        Nothing of ours there (missing, empty, or only our lock); an interrupted creation; a store of our kind.

    Raises
    ------
    StoreError
        A path that must never be cleared, a file, another kind of artefact, or a non-empty foreign folder.
    """
    check_not_special(path, noun)
    if path.exists() and not path.is_dir():
        raise StoreError(f"'{path}' exists and is a file, not {_a(noun)}; choose another path.")
    if not path.exists():
        return "absent"
    lock_file = path / lock_relpath
    ledgers = (ledger,) if isinstance(ledger, str) else tuple(ledger)
    if any((path / name / MARKER_NAME).is_file() for name in ledgers):
        return "incomplete"
    meta = path / "zarr.json"
    if meta.is_file():
        attrs = _attributes(meta)
        if attrs is not None and key in attrs:
            return "complete" if any((path / name / "zarr.json").is_file() for name in ledgers) else "incomplete"
        other = next((n for k, n in foreign_keys.items() if attrs is not None and k in attrs), None)
        what = _a(other) if other else "a zarr folder that is not " + _a(noun)
        raise StoreError(f"'{path}' holds {what}; refusing to replace it. Choose another path.")
    ours = {lock_file, lock_file.parent}
    if any(p not in ours and not (p.parent == lock_file.parent and p.name.endswith(".partial"))
           for p in path.rglob("*")):
        raise StoreError(f"'{path}' is a non-empty folder that is not {_a(noun)}; refusing to write into it "
                         "(nothing was deleted). Choose a new path.")
    return "absent"


def is_incomplete(path: Path, *, lock_relpath: str, ledger: str) -> bool:
    """Whether the artefact at ``path`` (whose ``zarr.json`` is ours) is an interrupted creation (readers' check)."""
    return (path / lock_relpath).with_name(MARKER_NAME).is_file() or not (path / ledger / "zarr.json").is_file()


def check_not_special(path: Path, noun: str) -> None:
    """Refuse ``.``, ``..``, the current directory and its ancestors, the home directory and ``/`` as a target.

    Raises
    ------
    StoreError
        ``path`` is one of those.
    """
    try:
        target = path.expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"Cannot resolve '{path}' ({exc}); choose another path.") from None
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    why = None
    if target == cwd or target in cwd.parents:
        why = "the current directory" if target == cwd else "a directory above the current one"
    elif target == home or target in home.parents:
        why = "the home directory" if target == home else "a directory above the home directory"
    if why:
        raise StoreError(f"Refusing to use '{path}' as {_a(noun)}: it is {why}. Give a new folder, e.g. 'runs/x.zarr'.")


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _attributes(meta: Path) -> dict | None:
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return attrs if isinstance(attrs, dict) else None


def write_marker(lock_file: Path, doc: dict) -> None:
    """Write the creation marker beside ``lock_file`` atomically and durably (before anything is cleared)."""
    marker = lock_file.parent / MARKER_NAME
    tmp = marker.with_name(f"{MARKER_NAME}.{os.getpid()}.partial")
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, allow_nan=False))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    fsync_dir(marker.parent)
    fsync_dir(lock_file.parent.parent)


def remove_marker(lock_file: Path) -> None:
    """Remove the marker (the creation is complete) and make that durable."""
    (lock_file.parent / MARKER_NAME).unlink(missing_ok=True)
    fsync_dir(lock_file.parent)


def clear_for_creation(path: Path, lock_file: Path) -> None:
    """Empty ``path`` except the held lock file and the marker (deleting the lock would let a second writer in)."""
    keep = {lock_file, lock_file.parent / MARKER_NAME}
    for p in path.iterdir():
        if p != lock_file.parent:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in lock_file.parent.iterdir():
        if p not in keep:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (a new store, before its marker goes)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                fsync_path(os.path.join(dirpath, name))
        fsync_dir(Path(dirpath))
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync a directory (its entries), ignoring filesystems that refuse it."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError, OSError):
        fsync_path(str(path))


def fsync_path(path: str | Path) -> None:
    """fsync one file or directory (raises OSError, unlike :func:`fsync_dir`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def creation_error(path: Path, noun: str, exc: OSError) -> StoreError:
    """One actionable line for an OSError (full disk, read-only filesystem, permissions) while creating."""
    what = exc.strerror or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    return StoreError(f"Could not create {noun} '{path}': {what}{where}. Fix that (free space, permissions) and "
                      "re-run the same command: an interrupted creation starts over.")
