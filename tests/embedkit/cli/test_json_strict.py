"""Every ``--json`` output and every JSON file a (tiny) demo-like pipeline writes parses with a strict parser.

Python's ``json`` writes ``NaN``/``Infinity`` by default, which JSON itself (and jq, JavaScript, Go, ...) rejects; a
probe on a label with one class in the test split has an undefined AUROC, so NaN is planted on purpose here.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from embedkit.cli._common import dumps_strict, to_strict
from embedkit.cli.main import app

LABELS = ["a", "b", "c"]


def strict_loads(text: str):
    """``json.loads`` that raises on NaN, Infinity and -Infinity."""
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def _store_with_undefined_auroc(path):
    """A store whose label 'c' has no positive in the test split: its test AUROC is undefined (NaN)."""
    from stores import EmbeddingStore

    rng = np.random.default_rng(0)
    n, d = 240, 8
    y = (rng.random((n, 3)) < 0.3).astype(np.float32)
    split = np.array(["train"] * 140 + ["val"] * 50 + ["test"] * 50)
    y[split == "test", 2] = 0.0
    x = (y @ rng.standard_normal((3, d)) + rng.standard_normal((n, d))).astype(np.float32)
    prov = {"backbone": {"name": "synthetic", "source": "test", "id": None, "path": None, "sha256": None},
            "resolution": 32, "preprocess": {"preset": "model"}, "views": {"cls": {"dim": d}}, "dtype": "float32",
            "precision": "fp32", "dataset": {"spec": "synthetic", "n_rows": n}, "embedkit_version": "0.1.0"}
    st = EmbeddingStore.create(path, ids=[f"i{i}" for i in range(n)], views={"cls": d}, provenance=prov, labels=y,
                               label_names=LABELS, split=list(split),
                               metadata={"patient_id": [f"p{i // 2}" for i in range(n)]}, dtype="float32")
    st.write_rows(0, {"cls": x})
    st.finalize()
    st.close()
    return path


def test_strict_helpers_turn_non_finite_into_null():
    doc = {"auroc": float("nan"), "hi": np.float32("inf"), "lo": -math.inf, "v": np.array([1.0, np.nan]),
           "n": np.int64(3), "nested": [{"x": np.float64("nan")}]}
    text = dumps_strict(doc)
    assert strict_loads(text) == {"auroc": None, "hi": None, "lo": None, "v": [1.0, None], "n": 3,
                                  "nested": [{"x": None}]}
    assert to_strict({"ok": 0.5}) == {"ok": 0.5}
    with pytest.raises(ValueError):
        strict_loads(json.dumps({"x": float("nan")}))  # the parser used below does reject NaN


def test_every_json_output_and_file_is_strict(tmp_path):
    from embedkit.testing import make_tiny_backbone

    outputs = []
    phantoms = tmp_path / "phantoms"
    outputs.append(run("phantoms", "--out", phantoms, "--n", "40", "--size", "48", "--formats", "png8", "--json"))
    manifest = phantoms / "manifest.csv"
    outputs.append(run("manifest", manifest, "--out", tmp_path / "m.csv", "--json"))
    outputs.append(run("models", "--json"))
    model = make_tiny_backbone("dinov3-vit", tmp_path)
    store = tmp_path / "p.zarr"
    outputs.append(run("extract", "--model", model, "--res", "32", "--data", manifest, "--out", store,
                       "--workers", "0", "--json"))
    outputs.append(run("cache-images", "--data", manifest, "--res", "32", "--out", tmp_path / "c.zarr",
                       "--workers", "0", "--json"))
    outputs.append(run("info", store, "--json", "--verify"))
    outputs.append(run("index", store, "--features", "cls", "--json"))
    outputs.append(run("search", store, "--vector", _save_vector(tmp_path, 32), "-k", "3", "--json"))
    outputs.append(run("search-eval", store, "--json"))

    nan_store = _store_with_undefined_auroc(tmp_path / "nan.zarr")
    outputs.append(run("probe", nan_store, "--out", tmp_path / "runs" / "knn", "--head", "knn", "--n-boot", "20",
                       "--json"))
    doc = strict_loads(outputs[-1].stdout)
    assert doc["test"]["per_label"]["c"]["auroc"]["value"] is None  # NaN became null
    outputs.append(run("probe", nan_store, "--out", tmp_path / "runs" / "lin", "--head", "linear", "--n-boot", "20",
                       "--json"))
    outputs.append(run("compare", tmp_path / "runs" / "knn", tmp_path / "runs" / "lin", "--out", tmp_path / "cmp",
                       "--json"))

    for r in outputs:
        strict_loads(r.stdout)
    files = sorted(tmp_path.rglob("*.json"))
    assert any(f.name == "metrics.json" for f in files) and any(f.name == "index.json" for f in files)
    bad = []
    for f in files:
        try:
            strict_loads(f.read_text())
        except ValueError as exc:
            bad.append(f"{f.relative_to(tmp_path)}: {exc}")
    assert not bad, "not strict JSON:\n" + "\n".join(bad)


def _save_vector(tmp_path, d):
    path = tmp_path / "q.npy"
    np.save(path, np.ones(d, np.float32))
    return path
