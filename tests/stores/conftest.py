"""Fixtures of the embedding-store tests: a provenance document and deterministic per-unit features."""
from __future__ import annotations

import numpy as np
import pytest


def make_provenance(backbone: str = "dinov3-vitb16", resolution: int = 512, preset: str = "paper") -> dict:
    """A provenance document shaped like the extractor's."""
    return {
        "backbone": {"name": backbone, "source": "transformers", "id": f"facebook/{backbone}", "path": None,
                     "sha256": f"sha-{backbone}"},
        "resolution": resolution,
        "preprocess": {"preset": preset, "resize": "pad", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "views": {"cls": {"dim": 16, "definition": "CLS after final norm"},
                  "mean_patch": {"dim": 8, "definition": "mean of patch tokens"}},
        "dtype": "float16", "precision": "fp32",
        "dataset": {"spec": "phantom:/tmp/x", "n_rows": 0},
        "embedkit_version": "0.1.0", "created": "2026-01-01T00:00:00Z",
    }


def unit_features(u: int, rows: int, views: dict[str, int]) -> dict[str, np.ndarray]:
    """Deterministic float32 features for unit ``u`` (same values in every process)."""
    rng = np.random.default_rng(1000 + u)
    return {v: rng.standard_normal((rows, d), dtype=np.float32) for v, d in views.items()}


@pytest.fixture
def provenance() -> dict:
    return make_provenance()


@pytest.fixture
def store_kwargs(provenance) -> dict:
    """Create kwargs for a 1000-row, 2-view store with labels, split, metadata and 4 units of 256 rows."""
    n = 1000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(n, 3)).astype(np.float32)
    labels[rng.random((n, 3)) < 0.1] = np.nan
    return dict(
        ids=[f"img{i:05d}" for i in range(n)], views={"cls": 16, "mean_patch": 8}, provenance=provenance,
        labels=labels, label_names=["Atelectasis", "Edema", "No Finding"],
        split=(["train"] * 700 + ["val"] * 100 + ["test"] * 200),
        metadata={"patient_id": [f"p{i // 3}" for i in range(n)], "age": [float(20 + i % 60) for i in range(n)],
                  "sex": ["F" if i % 2 else "M" for i in range(n)], "dataset": ["phantom"] * n},
        rows_per_chunk=128, rows_per_shard=256,
    )


@pytest.fixture
def make_prov():
    """The provenance factory (backbone=, resolution=, preset=)."""
    return make_provenance


@pytest.fixture
def unit_feats():
    """The deterministic per-unit feature factory (u, rows, views)."""
    return unit_features
