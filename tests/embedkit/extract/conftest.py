"""Fixtures for the extraction tests: phantom radiographs, tiny random backbones, a CLI runner, store readers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]

#: (tiny kind, resolution): DINOv2 has 14 px patches, the others 16 px patches / a 32 px total stride.
KINDS = {"dinov3-vit": 64, "dinov3-convnext": 64, "dinov2": 56, "timm-vit": 64}


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    """A manifest CSV of 20 small PNG phantoms (labels, split, metadata present)."""
    from embedkit.data.phantoms import make_phantoms

    return Path(make_phantoms(tmp_path_factory.mktemp("phantoms"), n=20, size=64, seed=0, formats=("png8", "png16")))


@pytest.fixture(scope="session")
def dicom_phantoms(tmp_path_factory) -> Path:
    """A manifest CSV of DICOM phantoms that carry PatientName/PatientID/PatientBirthDate."""
    from embedkit.data.phantoms import make_phantoms

    return Path(make_phantoms(tmp_path_factory.mktemp("dicoms"), n=6, size=48, seed=1, formats=("dicom",)))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """kind -> path of a tiny random backbone saved the way users' models are (built once per session)."""
    from embedkit.testing import make_tiny_backbone

    root = tmp_path_factory.mktemp("models")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_tiny_backbone(kind, root)
        return cache[kind]

    return get


@pytest.fixture
def cli():
    """Run ``embedkit ARGS`` in-process; returns the click Result (stdout/stderr separate)."""
    from typer.testing import CliRunner

    from embedkit.cli.main import app

    def run(*args: str):
        return CliRunner().invoke(app, [str(a) for a in args])

    return run


def run_module(args: list[str], *, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m embedkit ARGS`` (or another module) in a fresh interpreter with the hub offline."""
    full = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture
def module_runner():
    return run_module


def read_store(path: Path) -> dict:
    """Every view (float32), filled mask, ledger and failures of a store, for equality checks."""
    from stores import EmbeddingStore

    with EmbeddingStore.open(path) as st:
        out = {f"view:{v}": st.load(v, dtype=np.float32) for v in st.views}
        out["filled"] = st.filled.copy()
        out["done"] = st.done_units().copy()
        out["ids"] = np.asarray(st.ids).astype(str)
        out["failures"] = st.failures()
    return out


@pytest.fixture
def store_reader():
    return read_store


def assert_same_store(a: dict, b: dict, *, atol: float = 0.0) -> None:
    """Two stores hold the same rows (bitwise when atol == 0)."""
    assert set(a) == set(b)
    np.testing.assert_array_equal(a["ids"], b["ids"])
    np.testing.assert_array_equal(a["filled"], b["filled"])
    np.testing.assert_array_equal(a["done"], b["done"])
    assert a["failures"] == b["failures"]
    for key in a:
        if key.startswith("view:"):
            m = a["filled"]
            if atol == 0:
                np.testing.assert_array_equal(a[key][m], b[key][m], err_msg=key)
            else:
                np.testing.assert_allclose(a[key][m], b[key][m], atol=atol, rtol=0, err_msg=key)


@pytest.fixture
def same_store():
    return assert_same_store
