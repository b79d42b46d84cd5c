"""A small real embedding store for the application-layer tests."""
from __future__ import annotations

import numpy as np
import pytest

from probes.synthetic import make_multilabel_features

LABELS = ["Atelectasis", "Effusion", "Nodule"]


def build_store(path, *, n=400, dataset_spec=None, dataset_column=None, preset="model"):
    from stores import EmbeddingStore

    d = 16
    x, y = make_multilabel_features(n, 2 * d, len(LABELS), rank=6, signal=2.5, seed=0, missing=0.02)
    spec = dataset_spec or {"data": "/data/cxr/manifest.csv", "source": "/data/cxr/manifest.csv",
                            "adapter": "manifest"}
    prov = {"backbone": {"name": "dinov3-vitb16", "source": "transformers", "id": "facebook/dinov3-vitb16",
                         "sha256": "0" * 64},
            "resolution": 512, "preprocess": {"preset": preset},
            "views": {"cls": {"dim": d}, "mean_tokens": {"dim": d}}, "dtype": "float32", "precision": "fp32",
            "dataset": {**spec, "n_rows": n}, "embedkit_version": "0.1.0"}
    meta = {"patient_id": [f"p{i // 2:04d}" for i in range(n)]}
    if dataset_column is not None:
        meta["dataset"] = [dataset_column] * n
    split = np.array(["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10) + ["test"] * (n * 2 // 10))
    st = EmbeddingStore.create(path, ids=[f"img{i:04d}" for i in range(n)], views={"cls": d, "mean_tokens": d},
                               provenance=prov, labels=y, label_names=LABELS, split=list(split), metadata=meta,
                               dtype="float32")
    st.write_rows(0, {"cls": x[:, :d], "mean_tokens": x[:, d:]})
    st.finalize()
    st.close()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("app") / "s.zarr", dataset_column="vindr")
