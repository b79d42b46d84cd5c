"""Tiny backbones built once per session (each < 1 s after the first library import)."""
from __future__ import annotations

import pytest

from embedkit.testing import make_tiny_backbone


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``tiny(kind) -> Path``: the saved tiny model of ``kind``, built on first use."""
    root = tmp_path_factory.mktemp("tiny-backbones")
    built: dict = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = make_tiny_backbone(kind, root)
        return built[kind]

    return get


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache: nothing registered is available locally."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
