"""The extraction engine: reader (DataLoader workers) -> mapper (backbone) -> writer (store units, ledgered).

Entry points: :func:`embedkit.extract.run.run_extract` and :func:`embedkit.extract.run.run_cache_images` (the CLI and
:mod:`embedkit.api` call them). Names resolve lazily so that importing this package does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_extract": "embedkit.extract.run",
    "run_cache_images": "embedkit.extract.run",
    "ExtractReport": "embedkit.extract.pipeline",
    "DistEnv": "embedkit.extract.dist",
    "detect_env": "embedkit.extract.dist",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embedkit.extract' has no attribute {name!r}")
