"""``predict``: a probe trained on one phantom set applied to another (external validation), parity with the run's
own predictions, refusal of a store written differently, labels matched by name, predictions-only without labels."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embedkit.app.predict import match_labels, normalise_label, predict
from embedkit.cli.main import app

RES = 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import embedkit.api as ek
    from embedkit.data.phantoms import make_phantoms
    from embedkit.testing import make_tiny_backbone

    root = tmp_path_factory.mktemp("predict")
    m0 = make_phantoms(root / "ph0", n=90, size=64, seed=0)
    m1 = make_phantoms(root / "ph1", n=90, size=64, seed=1)
    model = make_tiny_backbone("dinov3-vit", root / "models", seed=0)
    ek.extract(str(model), str(m0), root / "s0.zarr", res=RES, workers=0, device="cpu")
    ek.probe(root / "s0.zarr", root / "runs" / "lin", features="cls+mean_patch", n_boot=100)
    return {"root": root, "m1": m1, "model": model, "store": root / "s0.zarr", "run": root / "runs" / "lin"}


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_external_validation_on_another_phantom_set(world):
    out = world["root"] / "ext"
    res = predict(world["run"], str(world["m1"]), out, n_boot=100)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["kind"] == "predict" and doc["schema"] == "embedkit.predict/1"
    assert doc["evaluation_type"] == "external:phantom"
    m = doc["mean_auroc"]
    assert m["ci_low"] is not None and m["ci_low"] <= m["value"] <= m["ci_high"]
    assert res.matched == {k: k for k in ("cardiomegaly", "effusion", "pneumothorax", "nodule")}
    for name in ("per_label.csv", "predictions.csv", "test_labels.csv", "bootstrap.npz", "subgroups.csv", "roc.png"):
        assert (out / name).exists(), name
    assert (out / "embeddings.zarr").is_dir()  # embedded with the run's own backbone
    # the second set's test split was scored; its ids are the seed-1 phantoms
    test_ids = [r["id"] for r in _csv(out / "test_labels.csv")]
    assert test_ids and all(i.startswith("ph1-") for i in test_ids) and doc["n"]["test"] == len(test_ids)
    # subgroups: each axis partitions the scored rows
    for axis, groups in doc["subgroups"]["axes"].items():
        assert sum(g["n"] for g in groups.values()) == len(test_ids), axis
    assert set(doc["subgroups"]["axes"]) >= {"sex", "age", "view"}


def test_predict_on_the_training_store_reproduces_the_run(world):
    out = world["root"] / "self"
    predict(world["run"], world["store"], out)
    ours = {r["id"]: r for r in _csv(out / "predictions.csv")}
    theirs = {r["id"]: r for r in _csv(world["run"] / "predictions.csv")}
    assert set(ours) == set(theirs)
    labels = ["cardiomegaly", "effusion", "pneumothorax", "nodule"]
    a = np.array([[float(ours[i][k]) for k in labels] for i in sorted(ours)])
    b = np.array([[float(theirs[i][k]) for k in labels] for i in sorted(ours)])
    np.testing.assert_allclose(a, b, atol=2e-6)
    run = json.loads((world["run"] / "metrics.json").read_text())
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["mean_auroc"]["value"] == pytest.approx(run["mean_auroc"]["value"], abs=1e-6)
    assert doc["pairing"]["test_ids_sha256"] == run["pairing"]["test_ids_sha256"]


def test_mlp_head_is_rebuilt_exactly(world):
    import embedkit.api as ek

    run = world["root"] / "runs" / "mlp"
    ek.probe(world["store"], run, head="mlp", features="cls", n_boot=20, head_options={"epochs": 3})
    out = world["root"] / "self-mlp"
    predict(run, world["store"], out, n_boot=20)
    ours = {r["id"]: r for r in _csv(out / "predictions.csv")}
    theirs = {r["id"]: r for r in _csv(run / "predictions.csv")}
    ids = sorted(ours)
    np.testing.assert_allclose([float(ours[i]["nodule"]) for i in ids], [float(theirs[i]["nodule"]) for i in ids],
                               atol=2e-6)


def test_mismatched_store_is_refused_naming_the_difference(world):
    import embedkit.api as ek

    other = world["root"] / "s1_64.zarr"
    ek.extract(str(world["model"]), str(world["m1"]), other, res=64, workers=0, device="cpu", limit=12)
    result = CliRunner().invoke(app, ["predict", str(world["run"]), "--data", str(other), "--out",
                                      str(world["root"] / "refused")])
    assert result.exit_code == 2
    assert "resolution 64" in result.output and "trained on 32" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (world["root"] / "refused" / "metrics.json").exists()


def test_store_without_labels_gives_predictions_only(world):
    from stores import EmbeddingStore

    with EmbeddingStore.open(world["store"]) as st:
        prov, views, ids = st.provenance, st.views, list(st.ids[:10])
        feats = {v: st.load(v)[:10] for v in views}
    path = world["root"] / "nolabels.zarr"
    new = EmbeddingStore.create(path, ids=ids, views=views, provenance=prov, dtype="float16")
    new.write_rows(0, feats)
    new.finalize()
    new.close()
    out = world["root"] / "nolab"
    result = CliRunner().invoke(app, ["predict", str(world["run"]), "--data", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"]
    rows = _csv(out / "predictions.csv")
    assert len(rows) == 10 and set(rows[0]) == {"id", "split", "cardiomegaly", "effusion", "pneumothorax", "nodule"}


def test_label_names_match_by_normalised_name_and_synonyms():
    assert normalise_label("Pleural_Effusion") == normalise_label("effusion")
    matched, head_only, data_only = match_labels(
        ["Effusion", "Lung Opacity", "Nodule", "Atelectasis"],
        ["pleural effusion", "Airspace_Opacity", "atelectasis", "Other lesion"])
    assert matched == {"Effusion": "pleural effusion", "Lung Opacity": "Airspace_Opacity",
                       "Atelectasis": "atelectasis"}
    assert head_only == ["Nodule"] and data_only == ["Other lesion"]  # no substring matching


def test_finetuned_model_predicts_like_its_run(world):
    import embedkit.api as ek

    run = world["root"] / "runs" / "ft"
    ek.finetune(str(world["model"]), str(world["store"]), run, res=RES, protocol="modern", epochs=1, batch_size=16,
                n_boot=20, device="cpu", workers=0)
    out = world["root"] / "self-ft"
    res = predict(run, world["store"], out, n_boot=20)
    ours = {r["id"]: r for r in _csv(out / "predictions.csv")}
    theirs = {r["id"]: r for r in _csv(run / "predictions.csv")}  # the run's val and test rows
    assert set(theirs) <= set(ours)
    ids = sorted(theirs)
    for label in ("cardiomegaly", "nodule"):
        np.testing.assert_allclose([float(ours[i][label]) for i in ids], [float(theirs[i][label]) for i in ids],
                                   atol=1e-5)
    run_doc = json.loads((run / "metrics.json").read_text())
    assert res.metrics["mean_auroc"]["value"] == pytest.approx(run_doc["mean_auroc"]["value"], abs=1e-4)
