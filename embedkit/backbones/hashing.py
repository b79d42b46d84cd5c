"""sha256 of weight files, computed once per (size, mtime) and cached (a 27 GB 7B checkpoint is hashed once)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

_CHUNK = 16 * 1024 * 1024
_SIDECAR_SUFFIX = ".embedkit-sha256.json"


def _cache_root() -> Path:
    base = os.environ.get("EMBEDKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "embedkit")
    return Path(base) / "sha256"


def _sidecars(real: Path) -> list[Path]:
    # Next to the file when that is ours to write; never inside a hub cache's blobs/ folder (the hub owns it).
    central = _cache_root() / (hashlib.sha1(str(real).encode()).hexdigest() + ".json")
    if real.parent.name == "blobs":
        return [central]
    return [real.with_name(real.name + _SIDECAR_SUFFIX), central]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of one file, reusing a cached digest while the file's size and mtime are unchanged.

    Parameters
    ----------
    path : str or Path
        The file (symlinks are resolved: the hub cache links snapshots to blobs).

    Returns
    -------
    str
        64 hex characters.
    """
    real = Path(path).resolve()
    st = real.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecars = _sidecars(real)
    for side in sidecars:
        try:
            doc = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("size") == key["size"] and doc.get("mtime_ns") == key["mtime_ns"] and doc.get("path") == str(real):
            return str(doc["sha256"])
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    hexdigest = digest.hexdigest()
    doc = {**key, "path": str(real), "sha256": hexdigest}
    for side in sidecars:
        try:
            side.parent.mkdir(parents=True, exist_ok=True)
            side.write_text(json.dumps(doc, allow_nan=False))
            break
        except OSError:
            continue
    else:
        logger.info("could not cache the sha256 of %s (no writable location)", real)
    return hexdigest


def files_sha256(paths: Iterable[str | Path]) -> tuple[str, dict[str, str]]:
    """One digest for a set of weight files (e.g. sharded safetensors) plus each file's digest.

    The combined digest is the file's own sha256 when there is one file; otherwise the sha256 of the lines
    ``"<file name> <sha256>\\n"`` sorted by file name.

    Returns
    -------
    (str, dict[str, str])
        Combined digest; file name -> digest.
    """
    per = {Path(p).name: file_sha256(p) for p in paths}
    if len(per) == 1:
        return next(iter(per.values())), per
    lines = "".join(f"{name} {per[name]}\n" for name in sorted(per))
    return hashlib.sha256(lines.encode()).hexdigest(), per
