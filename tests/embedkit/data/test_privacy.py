"""Privacy: identifying DICOM values never reach rows, manifests or logs; ids are salted hashes."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from embedkit.data.adapters.dicom_dir import build_rows
from embedkit.data.phantoms import make_phantoms
from embedkit.data.privacy import (
    IDENTIFYING_KEYWORDS,
    get_salt,
    identifying_tags,
    salted_hash,
    scrub,
    scrub_frame,
)
from embedkit.errors import DataError


@pytest.fixture(autouse=True)
def _salt(monkeypatch):
    monkeypatch.setenv("EMBEDKIT_SALT", "test-salt")
    monkeypatch.delenv("EMBEDKIT_SALT_FILE", raising=False)


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicoms")
    make_phantoms(root / "ph", n=8, size=32, seed=5, images_per_patient=2, formats=("dicom",))
    (root / "ph" / "notes.txt").write_text("not a dicom")
    return root


def identifying_values(root: Path) -> set[str]:
    """Every identifying value the phantom DICOMs carry (names split into parts too)."""
    values: set[str] = set()
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for key in IDENTIFYING_KEYWORDS:
            if key in ds and not isinstance(ds[key].value, pydicom.Sequence):
                text = str(ds[key].value)
                values.add(text)
                values.update(part for part in text.split("^") if len(part) >= 4)
        values.add(str(ds.file_meta.MediaStorageSOPInstanceUID))
    return {v for v in values if len(v) >= 4}


def test_salted_hash():
    h = salted_hash("12345", "salt-a")
    assert len(h) == 16 and int(h, 16) >= 0
    assert h == salted_hash(" 12345 ", "salt-a") and h != salted_hash("12345", "salt-b")
    assert h != salted_hash("12346", "salt-a")
    assert salted_hash(None, "s") == "" and salted_hash("", "s") == ""
    with pytest.raises(DataError, match="salt"):
        salted_hash("x", "")


def test_get_salt_sources(tmp_path, monkeypatch):
    assert get_salt(tmp_path) == "test-salt"
    monkeypatch.delenv("EMBEDKIT_SALT")
    (tmp_path / "s.txt").write_text("from-file\n")
    monkeypatch.setenv("EMBEDKIT_SALT_FILE", str(tmp_path / "s.txt"))
    assert get_salt(tmp_path) == "from-file"
    monkeypatch.delenv("EMBEDKIT_SALT_FILE")
    with pytest.raises(DataError, match="No salt"):
        get_salt(tmp_path, create=False)
    first = get_salt(tmp_path)
    path = tmp_path / ".embedkit" / "salt"
    assert len(first) == 64 and path.is_file() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert get_salt(tmp_path) == first  # reused, so hashed ids are stable across runs
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("EMBEDKIT_SALT_FILE", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="empty"):
        get_salt(tmp_path)


def test_identifying_keywords_are_real_dicom_keywords():
    from pydicom.datadict import tag_for_keyword

    unknown = sorted(k for k in IDENTIFYING_KEYWORDS if tag_for_keyword(k) is None)
    assert unknown == []
    tags = identifying_tags()
    assert 0x00100010 in tags and 0x00100020 in tags and 0x00100030 in tags  # name, id, birth date


def test_scrub_drops_identifying_keys_and_person_names():
    record = {"PatientName": "X^Y", "patient_id": "ab12", "age": 50,
              "nested": {"InstitutionName": "H", "keep": 1, "who": pydicom.valuerep.PersonName("A^B")},
              "list": [{"AccessionNumber": "1"}, pydicom.valuerep.PersonName("C^D"), 3]}
    assert scrub(record) == {"patient_id": "ab12", "age": 50, "nested": {"keep": 1}, "list": [{}, 3]}
    with pytest.raises(DataError, match="PatientName") as info:
        scrub(record, strict=True)
    assert "X^Y" not in str(info.value)
    frame = pd.DataFrame({"PatientID": ["1"], "patient_id": ["h"]})
    assert list(scrub_frame(frame).columns) == ["patient_id"]
    with pytest.raises(DataError):
        scrub_frame(frame, strict=True)


def test_dicom_rows_hash_ids_and_keep_safe_fields(dicom_dir):
    rows = build_rows(dicom_dir)
    assert len(rows) == 8 and rows.attrs["n_not_dicom"] == 2 and rows.attrs["n_unreadable"] == 0
    assert list(rows.columns) == ["path", "id", "patient_id", "study_id", "view", "sex", "age", "dataset"]
    assert rows["id"].is_unique and rows["patient_id"].nunique() == 4 and rows["study_id"].nunique() == 8
    assert rows["id"].str.fullmatch(r"[0-9a-f]{16}").all() and rows["patient_id"].str.fullmatch(r"[0-9a-f]{16}").all()
    manifest = pd.read_csv(dicom_dir / "ph" / "manifest.csv")
    by_name = dict(zip(manifest["path"].map(lambda p: Path(p).name), manifest["age"], strict=True))
    assert [by_name[Path(p).name] for p in rows["path"]] == rows["age"].astype(int).tolist()
    assert set(rows["view"]) <= {"PA", "AP"} and set(rows["sex"]) <= {"M", "F"}
    other = build_rows(dicom_dir, salt="another-salt")
    assert set(other["patient_id"]).isdisjoint(rows["patient_id"])


def test_no_identifying_value_reaches_the_rows_csv_or_logs(dicom_dir, tmp_path, caplog):
    secrets = identifying_values(dicom_dir)
    assert any("PHANTOM^" in v for v in secrets) and any(v.startswith("PHANTOM-ID-") for v in secrets)
    with caplog.at_level(logging.DEBUG):
        rows = build_rows(dicom_dir)
    out = tmp_path / "rows.csv"
    rows.to_csv(out, index=False)
    text = out.read_text() + "\n" + caplog.text
    found = sorted(v for v in secrets if v in text)
    assert found == []


def test_no_identifying_value_through_load_manifest(dicom_dir, tmp_path, caplog):
    from embedkit.data import load_manifest

    secrets = identifying_values(dicom_dir)
    with caplog.at_level(logging.DEBUG):
        manifest = load_manifest(f"dicom:{dicom_dir}", views="all", split="patient:0:0.6,0.2,0.2")
        written = manifest.write_csv(tmp_path / "m.csv")
    assert len(manifest) == 8
    text = Path(written).read_text() + caplog.text + repr(manifest.spec()) + repr(manifest.metadata())
    assert sorted(v for v in secrets if v in text) == []
