"""Phantoms: determinism to the byte, manifest format, patient-level splits, decodable files, a learnable finding."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from embedkit.data.decode import decode_image
from embedkit.data.phantoms import FINDINGS, make_phantoms
from embedkit.errors import DataError


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return make_phantoms(tmp_path_factory.mktemp("ph") / "a", n=60, size=64, seed=3)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_phantoms(tmp_path / "a", n=9, size=32, seed=1)
    b = make_phantoms(tmp_path / "b", n=9, size=32, seed=1)
    c = make_phantoms(tmp_path / "c", n=9, size=32, seed=2)
    ta, tb, tc = tree_bytes(a.parent), tree_bytes(b.parent), tree_bytes(c.parent)
    assert len(ta) == 10 and ta == tb  # 9 images + manifest, DICOM included
    assert {k for k in ta if k.endswith(".dcm")}
    for name in ("images/ph1-00000.png", "images/ph1-00002.dcm"):
        assert ta[name] != tc[name.replace("ph1", "ph2")]


def test_manifest_format_and_patient_level_splits(phantoms):
    frame = pd.read_csv(phantoms)
    assert list(frame.columns) == ["path", "id", "patient_id", "study_id", "split", "view", "sex", "age", "dataset",
                                   *FINDINGS]
    assert len(frame) == 60 and frame["id"].is_unique and (frame["dataset"] == "phantom").all()
    assert frame.groupby("patient_id").size().max() == 3
    assert set(frame["split"]) == {"train", "val", "test"}
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()  # no patient in two splits
    assert (frame.groupby("patient_id")["cardiomegaly"].nunique() == 1).all()  # a patient trait
    for finding in FINDINGS:
        assert set(frame[finding]) == {0, 1}
    assert set(frame["view"]) <= {"PA", "AP"} and set(frame["sex"]) <= {"M", "F"}
    for rel in frame["path"]:
        assert not Path(rel).is_absolute() and (phantoms.parent / rel).is_file()


def test_every_format_decodes_with_air_dark(phantoms):
    frame = pd.read_csv(phantoms)
    suffixes = {Path(p).name.split(".")[0].endswith("_16") * "16" + Path(p).suffix for p in frame["path"]}
    assert suffixes == {".png", "16.png", ".dcm"}
    photometric = set()
    for rel in frame["path"]:
        img = decode_image(phantoms.parent / rel)
        assert img.shape == (64, 64)
        assert img[:4, :4].mean() < 0.2 and img[28:36, 4:12].mean() < img[24:40, 28:36].mean()  # air < mediastinum
        if rel.endswith(".dcm"):
            ds = pydicom.dcmread(phantoms.parent / rel)
            photometric.add(ds.PhotometricInterpretation)
            assert "WindowCenter" in ds and ds.BitsStored == 12
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_png16_carries_more_than_8_bits(phantoms):
    rel = next(p for p in pd.read_csv(phantoms)["path"] if p.endswith("_16.png"))
    img = decode_image(phantoms.parent / rel)
    assert not np.allclose(img * 255, np.round(img * 255), atol=1e-3)


def test_cardiomegaly_is_a_strong_global_signal(phantoms):
    from sklearn.metrics import roc_auc_score

    frame = pd.read_csv(phantoms)
    imgs = np.stack([decode_image(phantoms.parent / p) for p in frame["path"]])
    lower_middle = imgs[:, 32:48, 20:44].mean(axis=(1, 2))  # where the heart sits
    assert roc_auc_score(frame["cardiomegaly"], lower_middle) > 0.9


def test_dicom_carries_fake_identifiers_that_the_manifest_does_not(phantoms):
    frame = pd.read_csv(phantoms)
    rel = next(p for p in frame["path"] if p.endswith(".dcm"))
    ds = pydicom.dcmread(phantoms.parent / rel)
    assert str(ds.PatientName).startswith("PHANTOM^") and ds.PatientID.startswith("PHANTOM-ID-")
    text = phantoms.read_text()
    for value in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber, ds.SOPInstanceUID):
        assert value not in text


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(size=8), dict(formats=("png8", "tiff")),
                                    dict(images_per_patient=0), dict(split_fractions=(0.5, 0.5, 0.5))])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(DataError):
        make_phantoms(tmp_path, **kwargs)


def test_cli_summary_and_json(tmp_path):
    from embedkit.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["phantoms", "--n", "12", "--size", "32", "--out", str(tmp_path / "p"),
                              "--formats", "png8,dicom"])
    assert res.exit_code == 0, res.output
    assert "12 images of 4 patients" in res.stdout and "manifest.csv" in res.stdout
    assert sorted(p.suffix for p in (tmp_path / "p" / "images").iterdir()).count(".dcm") == 6
    res = runner.invoke(app, ["phantoms", "--n", "6", "--size", "32", "--out", str(tmp_path / "q"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rows"] == 6 and doc["patients"] == 2 and set(doc["splits"]) == {"train", "val", "test"}
    res = runner.invoke(app, ["phantoms", "--out", str(tmp_path / "r"), "--formats", "png8,bmp"])
    assert res.exit_code == 2 and "formats" in res.output
