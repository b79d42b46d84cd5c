"""Fixtures for finetune tests: a small phantom set with a large test split, tiny backbones, a fast-run helper."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
#: tiny kind -> resolution (DINOv2: 14 px patches; the others 16 px / a 32 px stride)
KINDS = {"dinov3-vit": 32, "dinov3-convnext": 64, "dinov2": 28, "timm-vit": 32}


@pytest.fixture(scope="session")
def ft_phantoms(tmp_path_factory) -> Path:
    """48 PNG phantoms at 64 px; patient-level split 0.5/0.2/0.3 (a test set large enough for AUROC)."""
    from embedkit.data.phantoms import make_phantoms

    return Path(make_phantoms(tmp_path_factory.mktemp("ftph"), n=48, size=64, seed=0, formats=("png8",),
                              split_fractions=(0.5, 0.2, 0.3)))


@pytest.fixture(scope="session")
def ft_tiny(tmp_path_factory):
    from embedkit.testing import make_tiny_backbone

    root = tmp_path_factory.mktemp("ftmodels")
    cache: dict = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_tiny_backbone(kind, root)
        return cache[kind]

    return get


FAST = dict(epochs=1, batch_size=8, lr=1e-3, n_boot=20)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one thread for these modules: in-process runs are then bitwise comparable with subprocess runs
    (``OMP_NUM_THREADS=1``), and tiny models gain nothing from threads on a shared 2-core CI runner."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_py(args: list[str], *, env: dict | None = None, timeout: int = 240, **kw) -> subprocess.CompletedProcess:
    full = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, timeout=timeout,
                          cwd=ROOT, **kw)
