"""The CXR data layer: decoding, preprocessing presets, manifests, dataset adapters, splits, phantoms.

Names are resolved lazily so that the CLI can import this package without numpy/pydicom/torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "decode_image": "embedkit.data.decode",
    "make_preset": "embedkit.data.presets",
    "Preset": "embedkit.data.presets",
    "load_manifest": "embedkit.data.manifest",
    "Manifest": "embedkit.data.manifest",
    "make_phantoms": "embedkit.data.phantoms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embedkit.data' has no attribute {name!r}")
