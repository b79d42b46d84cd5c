"""Storage formats: the Zarr embedding store, the image cache and faiss indexes.

Imports neither ``embedkit`` nor ``probes``. Names are resolved lazily so that importing ``stores.errors`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmbeddingStore": "stores.embedding",
    "FORMAT_VERSION": "stores.embedding",
    "ImageCache": "stores.image_cache",
    "build_index": "stores.index",
    "open_index": "stores.index",
    "SearchIndex": "stores.index",
    "load_index": "stores.index",
    "save_index": "stores.index",
    "index_dir": "stores.index",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stores' has no attribute {name!r}")
