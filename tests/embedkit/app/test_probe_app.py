"""The application layer behind `probe` / `compare`, through `embedkit.api` and the CLI's protocol options."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import embedkit.api as ek
from embedkit.app.compare import CompareResult
from embedkit.app.identity import dataset_names, run_identity
from embedkit.app.probe import ProbeResult
from embedkit.cli.main import app


def test_api_probe_and_compare_return_python_objects(tmp_path, store):
    said = []
    a = ek.probe(store, tmp_path / "runs" / "a", head="sklearn", n_boot=30, say=said.append)
    assert isinstance(a, ProbeResult) and a.summary is None and len(a.runs) == 1
    doc = a.runs[0]
    assert doc["kind"] == "probe" and doc["split"]["unit"] == "patient" and doc["bootstrap"]["unit"] == "patients"
    # Display names come from the store: the manifest's rows all say 'vindr'.
    assert doc["provenance"]["dataset"] == "vindr" and doc["provenance"]["adapter"] == "manifest"
    assert any(s.startswith("split: store; unit patient") for s in said) and said == a.notes
    b = ek.probe(store, tmp_path / "runs" / "b", head="knn", n_boot=30, say=said.append)
    res = ek.compare([a.out, b.out], out=tmp_path / "cmp")
    assert isinstance(res, CompareResult) and res.reference == "a" and res.runs[1]["run"] == "b"
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["reference"] == "a"


def test_protocol_paper_selects_its_recipe_and_records_overrides(tmp_path, store):
    out = tmp_path / "paper"
    r = CliRunner().invoke(app, ["probe", str(store), "--out", str(out), "--protocol", "paper", "--epochs", "2",
                                 "--n-boot", "20", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert (m["head"], m["features"], m["threshold_mode"], m["youden_rule"]) == ("mlp", "mean_tokens",
                                                                                 "youden-test", "gt")
    assert m["head_options"]["lr"] == 1e-5 and m["head_options"]["batch_size"] == 30
    assert m["head_options"]["drop_last"] and m["head_options"]["epochs"] == 2
    assert m["protocol"]["name"] == "paper"
    assert m["protocol"]["overrides"] == {"head_options.epochs": 2, "n_boot": 20}
    assert "expects features extracted with --preprocess paper" in r.output


def test_head_options_reach_the_head_without_a_protocol(tmp_path, store):
    out = tmp_path / "lin"
    r = CliRunner().invoke(app, ["probe", str(store), "--out", str(out), "--head", "linear", "--lr", "0.01",
                                 "--epochs", "2", "--batch-size", "64", "--n-boot", "20", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] is None and m["head_options"] == {"lr": 0.01, "batch_size": 64, "epochs": 2}
    assert m["chosen"]["lr"] == 0.01 and m["chosen"]["batch_size"] == 64 and m["chosen"]["epochs_run"] <= 2


@pytest.mark.parametrize("spec, column, expected", [
    ({"adapter": "nih", "data": "nih:/data/nih"}, None, ("nih", "nih")),
    ({"adapter": "manifest", "data": "/x/padchest_subset.csv"}, None, ("padchest_subset", "manifest")),
    ({"adapter": "manifest", "data": "/x/m.csv"}, ["chexpert", "chexpert"], ("chexpert", "manifest")),
    ({"adapter": "manifest", "data": "/x/m.csv"}, ["chexpert", "nih"], ("m", "manifest")),
])
def test_dataset_display_names(spec, column, expected):
    assert dataset_names(spec, column) == expected


def test_run_identity_reads_backbone_names():
    ident = run_identity({"backbone": {"name": "dinov3-convnext-base", "source": "timm"}, "resolution": 224,
                          "dataset": {"adapter": "chexpert"}})
    assert (ident["initialization"], ident["backbone"], ident["image_size"], ident["dataset"]) == \
        ("dinov3", "convnext", 224, "chexpert")
