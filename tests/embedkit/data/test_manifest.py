"""Manifest CSV reading/writing, errors a person can act on, and the ``embedkit manifest`` command."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.data import load_manifest
from embedkit.data.adapters import ADAPTERS, parse_data
from embedkit.errors import DataError, LeakageError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("data,kw", [("chexpert", {"uncertain": "ignore", "blank": "nan"}),
                                     ("mimic", {"views": "all"}), ("padchest", {"labels": "paper"}),
                                     ("vindr", {"split": "patient:1:0.6,0.2,0.2"})])
def test_round_trip_through_csv(request, tmp_path, data, kw):
    root = request.getfixturevalue(f"{data}_root")
    first = load_manifest(f"{data}:{root}", **kw)
    out = first.write_csv(tmp_path / "sub" / "m.csv")
    assert not [p for p in out.parent.iterdir() if p.name != "m.csv"]  # no temp file left behind
    again = load_manifest(str(out), views="all", uncertain="ones")  # policy already applied: no -1 left
    assert again.ids.tolist() == first.ids.tolist()
    assert again.paths.tolist() == first.paths.tolist()
    assert again.label_names == first.label_names
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.split.tolist() == first.split.tolist()
    for key, values in first.metadata().items():
        got = again.metadata()[key]
        if key == "age":
            np.testing.assert_allclose(np.asarray(got, float), np.asarray(values, float), atol=1e-4)
        else:
            assert [str(v) for v in got] == [str(v) for v in values], key
    assert again.spec()["n_missing"] == first.spec()["n_missing"]
    assert again.spec()["adapter"] == "manifest" and first.spec()["adapter"] == data


def test_relative_absolute_paths_default_ids_and_policies(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"x")
    absolute = tmp_path / "elsewhere.png"
    absolute.write_bytes(b"x")
    csv = write(tmp_path / "m.csv", "path,patient_id,view,finding,other\n"
                f"img/a.png,p1,PA,1,-1\n{absolute},p2,LATERAL,,0\nimg/missing.png,p3,AP,0,\n")
    m = load_manifest(str(csv), views="all", uncertain="ignore")
    assert m.ids.tolist() == ["img/a.png", str(absolute), "img/missing.png"]
    assert m.paths.tolist() == [str(tmp_path / "img" / "a.png"), str(absolute), str(tmp_path / "img/missing.png")]
    np.testing.assert_array_equal(m.labels, [[1, np.nan], [np.nan, 0], [0, np.nan]])
    assert m.spec()["n_missing"] == 1 and m.missing.tolist() == [False, False, True]
    assert load_manifest(str(csv), views="all", uncertain="ones").labels[0, 1] == 1
    assert load_manifest(str(csv), views="all", blank="zeros").labels[1, 0] == 0
    frontal = load_manifest(str(csv))  # frontal inferred from the view column
    assert frontal.ids.tolist() == ["img/a.png", "img/missing.png"]
    assert frontal.split.tolist() == ["", ""] and frontal.metadata()["patient_id"] == ["p1", "p3"]
    with pytest.raises(DataError, match="1 of 2 image file"):
        load_manifest(str(csv), strict=True)


def test_label_selection(tmp_path):
    csv = write(tmp_path / "m.csv", "id,path,Pleural Effusion,cardiomegaly,notes\n"
                "a,a.png,1,0,seen twice\nb,b.png,0,1,\n")
    m = load_manifest(str(csv), labels=["cardiomegaly", "Pleural Effusion"])
    assert m.label_names == ("cardiomegaly", "Pleural Effusion")
    np.testing.assert_array_equal(m.labels, [[0, 1], [1, 0]])
    assert load_manifest(str(csv), labels="cardiomegaly").label_names == ("cardiomegaly",)
    with pytest.raises(DataError, match="Did you mean 'cardiomegaly'"):
        load_manifest(str(csv), labels=["cardiomegally"])
    with pytest.raises(DataError, match="needs a known dataset"):
        load_manifest(str(csv), labels="paper")


def test_paper_labels_from_dataset_column(chexpert_root, tmp_path):
    out = load_manifest(f"chexpert:{chexpert_root}").write_csv(tmp_path / "m.csv")
    m = load_manifest(str(out), labels="paper")
    assert m.label_names[:2] == ("cardiomegaly", "pleural_effusion") and len(m.label_names) == 10


@pytest.mark.parametrize("text,match", [
    ("", "cannot read"),
    ("id,image\na,a.png\n", "no 'path' column"),
    ("path,finding\na.png,2\n", "has value '2'"),
    ("path,split\na.png,holdout\n", "split value 'holdout'"),
    ("path,frontal\na.png,maybe\n", "column 'frontal'"),
    ("path\n", "no rows"),
    ("id,path\nx,a.png\nx,b.png\n", "ids must be unique"),
    ("path\na.png\na.png\n", "ids must be unique"),
    ('path,finding\n"a.png,1\n', "cannot read"),
])
def test_bad_csv_is_one_line_data_error(tmp_path, text, match):
    csv = write(tmp_path / "m.csv", text)
    with pytest.raises(DataError, match=match) as info:
        load_manifest(str(csv), views="all")
    assert "\n" not in str(info.value)


def test_non_label_text_column_is_ignored_with_warning(tmp_path, caplog):
    csv = write(tmp_path / "m.csv", "path,report,finding\na.png,big heart,1\n")
    with caplog.at_level(logging.WARNING):
        m = load_manifest(str(csv))
    assert m.label_names == ("finding",) and "ignored column 'report'" in caplog.text


def test_missing_csv_and_bad_parameters(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(str(tmp_path / "nope.csv"))
    csv = write(tmp_path / "m.csv", "path\na.png\n")
    for kw, match in (({"uncertain": "half"}, "'uncertain'"), ({"views": "lateral"}, "'views'"),
                      ({"split": "random"}, "patient:SEED"), ({"split": "patient:0:0.5,0.5,0.5"}, "sum to 1")):
        with pytest.raises(DataError, match=match):
            load_manifest(str(csv), **kw)


def test_registry_and_data_strings(tmp_path):
    assert ADAPTERS["dicom"] == "embedkit.data.adapters.dicom_dir"
    assert set(ADAPTERS) >= {"nih", "chexpert", "mimic", "padchest", "vindr", "vindr-pcxr"}
    src = parse_data("vindr:/data/v?readers=any")
    assert (src.adapter, str(src.root), src.options) == ("vindr", "/data/v", {"readers": "any"})
    assert parse_data("cxr14:/data/nih").adapter == "nih"
    csv = write(tmp_path / "a:b.csv", "path\nx.png\n")  # an existing file is a CSV, even with a colon
    assert parse_data(str(csv)).adapter is None
    with pytest.raises(DataError, match="Did you mean 'padchest'"):
        parse_data("padchets:/x")


def test_spec_and_summary(nih_root):
    m = load_manifest(f"nih:{nih_root}", labels="paper", split="official")
    spec = m.spec()
    assert spec["data"] == f"nih:{nih_root}" and spec["adapter"] == "nih" and spec["labels"] == "paper"
    assert spec["uncertain"] == "zeros" and spec["views"] == "frontal" and spec["split"] == "official"
    assert (spec["n_rows"], spec["n_missing"]) == (7, 1) and len(spec["label_names"]) == 14
    summary = m.summary()
    assert summary["rows"] == 7 and summary["patients"] == 5 and summary["missing"] == 1
    train = summary["splits"]["train"]
    assert (train["rows"], train["patients"], train["missing"]) == (5, 3, 0)
    assert train["prevalence"]["cardiomegaly"] == {"pos": 2, "neg": 3, "unknown": 0, "rate": 0.4}
    assert summary["splits"]["test"]["missing"] == 1
    json.dumps(summary)


# -------------------------------------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_manifest_table_and_csv(chexpert_root, tmp_path):
    out = tmp_path / "m.csv"
    result = runner.invoke(app, ["manifest", f"chexpert:{chexpert_root}", "--out", str(out), "--labels", "paper",
                                 "--uncertain", "ones"])
    assert result.exit_code == 0, result.output
    assert "6 rows" in result.stdout and "1 missing" in result.stdout and "cardiomegaly" in result.stdout
    assert "train" in result.stdout and "val" in result.stdout
    header = out.read_text().splitlines()[0].split(",")
    assert header[:2] == ["id", "path"] and header[-10:][0] == "cardiomegaly"


def test_cli_manifest_json(vindr_root, tmp_path):
    out = tmp_path / "m.csv"
    result = runner.invoke(app, ["manifest", f"vindr:{vindr_root}", "--out", str(out), "--readers", "any",
                                 "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rows"] == 5 and doc["missing"] == 1 and doc["out"] == str(out)
    assert doc["spec"]["adapter_options"] == {"readers": "any"}
    assert doc["splits"]["train"]["prevalence"]["aortic_enlargement"]["pos"] == 1
    assert out.is_file()


def test_cli_manifest_errors(fx, tmp_path):
    root = fx.make_nih(tmp_path / "nih", bad_split=True)
    leak = runner.invoke(app, ["manifest", f"nih:{root}", "--out", str(tmp_path / "m.csv")])
    assert leak.exit_code == 2 and "error:" in leak.output and "--allow-leak" in leak.output
    assert not (tmp_path / "m.csv").exists()
    ok = runner.invoke(app, ["manifest", f"nih:{root}", "--out", str(tmp_path / "m.csv"), "--allow-leak", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["leakage"]["leaks"]["patient_id"] == 1
    strict = runner.invoke(app, ["manifest", f"nih:{root}", "--out", str(tmp_path / "s.csv"), "--strict",
                                 "--allow-leak"])
    assert strict.exit_code == 2 and "not found" in strict.output
    unknown = runner.invoke(app, ["manifest", f"chexpret:{root}", "--out", str(tmp_path / "u.csv")])
    assert unknown.exit_code == 2 and "Did you mean 'chexpert'" in unknown.output
    with pytest.raises(LeakageError):
        load_manifest(f"nih:{root}")


def test_phantom_manifest_and_dicom_adapter(tmp_path, monkeypatch):
    """The phantoms' manifest (written by another module) reads under this format; ``dicom:`` goes through the
    registry to the generic DICOM-folder adapter."""
    import pandas as pd

    from embedkit.data.phantoms import make_phantoms

    monkeypatch.setenv("EMBEDKIT_SALT", "test-salt")
    csv = make_phantoms(tmp_path / "ph", n=9, size=32, seed=0)
    m = load_manifest(str(csv), views="all")
    raw = pd.read_csv(csv)
    assert m.ids.tolist() == raw["id"].astype(str).tolist() and m.spec()["n_missing"] == 0
    np.testing.assert_array_equal(m.labels, raw[list(m.label_names)].to_numpy(np.float32))
    assert set(m.split) <= {"train", "val", "test"} and m.leakage.ok
    dicoms = load_manifest(f"dicom:{tmp_path / 'ph'}", views="all", split="patient:0:0.6,0.2,0.2")
    assert len(dicoms) == sum(p.suffix == ".dcm" for p in (tmp_path / "ph").rglob("*"))
    assert dicoms.label_names == () and dicoms.labels.shape == (len(dicoms), 0)
    assert dicoms.spec()["adapter"] == "dicom" and dicoms.leakage.ok


# ------------------------------------------------------------------------------------------ no silent loss
def test_one_invalid_label_cell_is_an_error_naming_column_line_id_and_value(tmp_path):
    csv = write(tmp_path / "m.csv", "id,path,finding,other\na,a.png,1,0\nb,b.png,yes,1\nc,c.png,0,\n")
    with pytest.raises(DataError, match=r"label column 'finding' has value 'yes' \(line 3, id 'b'\)") as info:
        load_manifest(str(csv), views="all")  # used to drop the whole 'finding' label with a log line
    assert "\n" not in str(info.value)
    result = runner.invoke(app, ["manifest", str(csv), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "'yes'" in result.output and "finding" in result.output


def test_adapter_label_error_names_the_file_line(fx, tmp_path):
    root = fx.make_chexpert(tmp_path)
    train = root / "CheXpert-v1.0-small" / "train.csv"
    lines = train.read_text().splitlines()
    lines[3] = lines[3].replace("-1.0,1.0,", "-1.0,yes,", 1)
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"'Lung Opacity' has value 'yes' \(line 4\)"):
        load_manifest(f"chexpert:{root}")


UNKNOWN_VIEWS_CSV = "id,path,view,finding\na,a.png,PA,1\nb,b.png,LATERAL,0\nc,c.png,,1\nd,d.png,UNK,0\ne,e.png,AP,1\n"


def test_unknown_views_follow_an_explicit_rule_and_are_counted(tmp_path, caplog):
    csv = write(tmp_path / "m.csv", UNKNOWN_VIEWS_CSV)
    with caplog.at_level(logging.WARNING):
        dropped = load_manifest(str(csv))
    assert dropped.ids.tolist() == ["a", "e"]
    assert dropped.spec()["dropped"] == {"not frontal": 1, "unknown view": 2}
    assert dropped.spec()["n_unknown_view"] == 2 and "2 row(s) have an unknown view" in caplog.text
    kept = load_manifest(str(csv), unknown_view="keep")
    assert kept.ids.tolist() == ["a", "c", "d", "e"] and kept.spec()["dropped"] == {"not frontal": 1}
    # an unknown view stays unknown through the written CSV (blank 'frontal'), not "not frontal"
    again = load_manifest(str(kept.write_csv(tmp_path / "out.csv")), unknown_view="keep")
    assert again.ids.tolist() == ["a", "c", "d", "e"]
    with pytest.raises(DataError, match="'unknown_view'"):
        load_manifest(str(csv), unknown_view="maybe")


def test_cli_prints_one_line_per_drop_reason_and_the_view_rule(tmp_path):
    csv = write(tmp_path / "m.csv", UNKNOWN_VIEWS_CSV)
    result = runner.invoke(app, ["manifest", str(csv), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    assert "dropped 1 row(s): not frontal" in result.stdout and "dropped 2 row(s): unknown view" in result.stdout
    assert "--unknown-view" in result.stdout
    keep = runner.invoke(app, ["manifest", str(csv), "--out", str(tmp_path / "k.csv"), "--unknown-view", "keep",
                               "--json"])
    doc = json.loads(keep.stdout)
    assert doc["rows"] == 4 and doc["spec"]["unknown_view"] == "keep" and doc["spec"]["n_unknown_view"] == 2
    bad = runner.invoke(app, ["manifest", str(csv), "--out", str(tmp_path / "x.csv"), "--unknown-view", "x"])
    assert bad.exit_code == 2 and "unknown_view" in bad.output


def test_all_unknown_views_under_frontal_is_an_actionable_error(tmp_path):
    csv = write(tmp_path / "m.csv", "path,view\na.png,\nb.png,\n")
    with pytest.raises(DataError, match="--unknown-view keep"):
        load_manifest(str(csv))
    assert len(load_manifest(str(csv), unknown_view="keep")) == 2
    no_views = load_manifest(str(write(tmp_path / "n.csv", "path\na.png\n")))  # nothing to filter on
    assert len(no_views) == 1 and no_views.spec()["view_rule"].startswith("no view information")


def test_split_unit_is_recorded_and_shown(vindr_root, chexpert_root, tmp_path):
    csv = write(tmp_path / "m.csv", "path,patient_id,finding\na.png,p1,1\nb.png,,0\nc.png,p2,1\n")
    images = load_manifest(str(csv), split="patient:0:0.6,0.2,0.2")
    assert images.spec()["split_unit"] == "image"  # one row has no patient id: it is its own unit
    readers = load_manifest(f"vindr:{vindr_root}?readers=per-reader", split="patient:0:0.6,0.2,0.2")
    assert readers.spec()["split_unit"] == "study"  # VinDr: no patient ids; the image's readers stay together
    assert load_manifest(f"chexpert:{chexpert_root}", split="patient:0:0.6,0.2,0.2").spec()["split_unit"] == "patient"
    assert load_manifest(f"chexpert:{chexpert_root}", split="official").spec()["split_unit"] is None
    result = runner.invoke(app, ["manifest", f"vindr:{vindr_root}", "--out", str(tmp_path / "out.csv"), "--split",
                                 "patient:0:0.6,0.2,0.2"])
    assert result.exit_code == 0 and "split unit: study" in result.stdout and "no patient ids" in result.stdout
