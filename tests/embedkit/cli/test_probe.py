"""`embedkit probe` and `embedkit compare` on small real stores (stores.EmbeddingStore.create)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app
from probes.synthetic import make_multilabel_features

LABELS = ["Atelectasis", "Effusion", "Nodule"]


def _provenance(name: str, resolution: int, dim: int) -> dict:
    return {"backbone": {"name": name, "source": "transformers", "id": f"facebook/{name}", "sha256": "0" * 64},
            "resolution": resolution, "preprocess": {"preset": "model"},
            "views": {"cls": {"dim": dim}, "mean_patch": {"dim": dim}}, "dtype": "float32",
            "precision": "fp32", "dataset": {"spec": "nih:/data/nih", "n_rows": 600}, "embedkit_version": "0.1.0"}


def _make_store(path, *, name="dinov3-vitb16", resolution=512, noise=0.0, split=True, seed=0):
    from stores import EmbeddingStore

    n, d = 600, 16
    x, y = make_multilabel_features(n, 2 * d, len(LABELS), rank=6, signal=2.5, seed=0, missing=0.02)
    x = x + noise * np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
    ids = [f"img{i:04d}" for i in range(n)]
    patients = [f"p{i // 2:04d}" for i in range(n)]
    sp = np.array(["train"] * 360 + ["val"] * 120 + ["test"] * 120) if split else None
    st = EmbeddingStore.create(path, ids=ids, views={"cls": d, "mean_patch": d},
                               provenance=_provenance(name, resolution, d), labels=y, label_names=LABELS,
                               split=None if sp is None else list(sp), metadata={"patient_id": patients},
                               dtype="float32")
    st.write_rows(0, {"cls": x[:, :d], "mean_patch": x[:, d:]})
    st.finalize()
    st.close()
    return path


@pytest.fixture(scope="module")
def stores_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {"a": _make_store(root / "a.zarr"),
            "b": _make_store(root / "b.zarr", name="dinov2-vitb14", resolution=224, noise=2.0, seed=1),
            "nosplit": _make_store(root / "c.zarr", split=False)}


def _invoke(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


def test_probe_writes_all_files_with_the_right_schema(tmp_path, stores_dir):
    out = tmp_path / "runs" / "a-sk"
    r = _invoke("probe", stores_dir["a"], "--out", out, "--head", "sklearn", "--features", "cls+mean_patch",
                "--n-boot", 50)
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "per_label.csv", "predictions.csv", "head.safetensors",
                                               "roc.png", "bootstrap.npz"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["head"] == "sklearn" and m["features"] == "cls+mean_patch" and m["labels"] == LABELS
    assert m["store"]["fingerprint"] and m["provenance"]["initialization"] == "dinov3"
    assert m["provenance"]["backbone"] == "vitb" and m["provenance"]["image_size"] == 512
    assert m["n"] == {"train": 360, "val": 120, "test": 120} and m["split"]["source"] == "store"
    assert m["mean_auroc"]["value"] > 0.7 and m["test"]["bootstrap"]["n_boot"] == 50
    assert set(m["thresholds"]) == set(LABELS) and "fit_s" in m["timings"]
    rows = list(csv.DictReader(open(out / "per_label.csv")))
    assert list(rows[0]) == ["dataset", "initialization", "backbone", "image_size", "label", "AUROC_mean",
                             "AUROC_ci_low", "AUROC_ci_high", "mAP_mean", "mAP_ci_low", "mAP_ci_high"]
    assert rows[-1]["label"] == "macro_avg" and rows[0]["dataset"] == "nih"
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(preds) == 600 and list(preds[0]) == ["id", "split", *LABELS]
    assert (tmp_path / "runs" / ".embedkit-bootstrap").is_dir()
    assert "mean" in r.output and "Atelectasis" in r.output
    again = _invoke("probe", stores_dir["a"], "--out", out, "--head", "sklearn")
    assert again.exit_code == 2 and "already holds a finished run" in again.output


def test_probe_json_label_subset_and_made_split(tmp_path, stores_dir):
    r = _invoke("probe", stores_dir["nosplit"], "--out", tmp_path / "r", "--head", "knn", "--labels", "Effusion",
                "--n-boot", 20, "--bootstrap", "patients", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["labels"] == ["Effusion"] and doc["split"]["source"].startswith("made: patient-level")
    assert doc["bootstrap"]["grouping"] == "patients" and doc["chosen"]["k"] in (10, 20, 100, 200)


def test_probe_fractions_and_seeds_make_sub_runs_and_resume(tmp_path, stores_dir):
    out = tmp_path / "lf"
    args = ("probe", stores_dir["a"], "--out", out, "--head", "linear", "--label-fraction", "0.5,1", "--seeds", 2,
            "--n-boot", 20, "--device", "cpu")
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    subs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subs == ["frac0.5-seed0", "frac0.5-seed1", "frac1-seed0", "frac1-seed1"]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["label_fraction"] for row in summary["rows"]] == [0.5, 1.0]
    half = json.loads((out / "frac0.5-seed0" / "metrics.json").read_text())
    assert half["n"]["train"] == 180 and half["chosen"]["n_heads"] >= 40
    again = _invoke(*args)
    assert again.exit_code == 0 and again.output.count("skipping") == 4


def test_compare_with_reference_and_refusal_of_other_test_sets(tmp_path, stores_dir):
    runs = tmp_path / "runs"
    for key in ("a", "b"):
        r = _invoke("probe", stores_dir[key], "--out", runs / key, "--head", "sklearn", "--n-boot", 100)
        assert r.exit_code == 0, r.output
    cmp_dir = tmp_path / "cmp"
    r = _invoke("compare", runs / "b", "--reference", runs / "a", "--out", cmp_dir, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["reference"] == "a" and len(res["runs"]) == 2
    b = [row for row in res["runs"] if row["run"] == "b"][0]
    assert b["initialization"] == "dinov2" and b["image_size"] == 224
    assert b["delta"] < 0 and b["p_run_le_ref"] > 0.9
    assert {p.name for p in cmp_dir.iterdir()} == {"compare.json", "compare.csv", "per_label_deltas.csv",
                                                   "forest.png"}
    table = _invoke("compare", runs / "a", runs / "b")
    assert table.exit_code == 0 and "reference" in table.output
    r = _invoke("probe", stores_dir["nosplit"], "--out", runs / "c", "--head", "sklearn", "--n-boot", 100)
    assert r.exit_code == 0, r.output
    bad = _invoke("compare", runs / "a", runs / "c")
    assert bad.exit_code == 2 and "different test sets" in bad.output


def test_probe_rejects_bad_options(tmp_path, stores_dir):
    r = _invoke("probe", stores_dir["a"], "--out", tmp_path / "x", "--features", "nope")
    assert r.exit_code == 2 and "features" in r.output
    r = _invoke("probe", stores_dir["a"], "--out", tmp_path / "x", "--label-fraction", "0")
    assert r.exit_code == 2 and "label-fraction" in r.output
    r = _invoke("probe", stores_dir["a"], "--out", tmp_path / "x", "--head", "svm")
    assert r.exit_code == 2 and "head" in r.output
