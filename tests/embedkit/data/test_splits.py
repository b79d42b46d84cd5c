"""Patient-level splits (determinism, disjointness) and the leakage audit (error vs warning)."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
import pytest

from embedkit.data import load_manifest
from embedkit.data.splits import (audit_leakage, audit_split, carve_val, group_keys, parse_split, patient_split,
                                  salted, split_units)
from embedkit.errors import DataError, LeakageError


def test_parse_split_rules():
    assert parse_split(None).kind == "keep" and parse_split("official").kind == "official"
    rule = parse_split("patient:7:0.8,0,0.2")
    assert (rule.kind, rule.seed, rule.fractions) == ("patient", 7, (0.8, 0.0, 0.2))
    assert str(rule) == "patient:7:0.8,0,0.2"
    for bad in ("patient:0:0.7,0.2", "patient:x:0.7,0.1,0.2", "patient:0:0.7,0.2,0.2", "patient:0:1.2,-0.1,-0.1",
                "random"):
        with pytest.raises(DataError):
            parse_split(bad)


def test_patient_split_is_deterministic_and_platform_free():
    keys = [f"p{i}" for i in range(10)]
    # Pure SHA-256 ranking: this exact assignment must come out on every platform and numpy version.
    assert patient_split(keys, seed=0, fractions=(0.6, 0.2, 0.2)).tolist() == EXPECTED_SEED0
    shuffled = np.random.default_rng(1).permutation(keys)
    again = dict(zip(shuffled, patient_split(shuffled, seed=0, fractions=(0.6, 0.2, 0.2))))
    assert [again[k] for k in keys] == EXPECTED_SEED0  # row order does not matter
    assert patient_split(keys, seed=1, fractions=(0.6, 0.2, 0.2)).tolist() != EXPECTED_SEED0


# Hand-derived: sorting sha256("0:p{i}") gives p2 p7 p4 p5 p0 p3 | p8 p6 | p1 p9 (6 / 2 / 2 groups).
EXPECTED_SEED0 = ["train", "test", "train", "train", "train", "train", "val", "train", "val", "test"]


def test_expected_assignment_matches_the_documented_rule():
    order = sorted(range(10), key=lambda i: hashlib.sha256(f"0:p{i}".encode()).hexdigest())
    expected = {**{i: "train" for i in order[:6]}, **{i: "val" for i in order[6:8]}, **{i: "test" for i in order[8:]}}
    assert [expected[i] for i in range(10)] == EXPECTED_SEED0


@pytest.mark.parametrize("n,fractions", [(1000, (0.7, 0.1, 0.2)), (5, (0.7, 0.1, 0.2)), (3, (0.5, 0.0, 0.5))])
def test_patient_split_fractions_and_disjointness(n, fractions):
    rng = np.random.default_rng(n)
    patients = rng.integers(0, n, size=3 * n).astype(str)  # several rows per patient, random order
    split = patient_split(patients, seed=3, fractions=fractions)
    frame = pd.DataFrame({"patient_id": patients, "split": split})
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    per_split = frame.drop_duplicates("patient_id")["split"].value_counts()
    n_patients = frame["patient_id"].nunique()
    for name, fraction in zip(("train", "val", "test"), fractions):
        got = int(per_split.get(name, 0))
        if fraction == 0:
            assert got == 0
        else:
            assert got >= 1 and abs(got - fraction * n_patients) <= 1


def test_audit_reports_counts_and_salted_ids(caplog):
    frame = pd.DataFrame({"patient_id": ["secret-1", "secret-1", "p2", "p3", "p3"],
                          "study_id": ["s1", "s2", "s3", "s4", "s4"],
                          "split": ["train", "test", "train", "val", ""]})
    with pytest.raises(LeakageError) as info:
        audit_leakage(frame)
    message = str(info.value)
    assert "1 patient(s) over 2 rows" in message and salted("secret-1") in message
    assert "secret-1" not in message and "\n" not in message
    with caplog.at_level(logging.WARNING):
        report = audit_leakage(frame, allow_leak=True)
    assert not report.ok and report.leaks == {"patient_id": 1, "study_id": 0}
    assert "more than one split" in caplog.text and "secret-1" not in caplog.text
    clean = audit_leakage(frame.assign(split=["train", "train", "val", "test", "test"]))
    assert clean.ok and clean.checked == ("patient_id", "study_id")


def test_audit_checks_studies_too():
    frame = pd.DataFrame({"study_id": ["s1", "s1"], "split": ["train", "val"]})
    with pytest.raises(LeakageError, match=r"1 study\(s\)"):
        audit_leakage(frame)


def test_manifest_split_column_is_audited_when_read(tmp_path, caplog):
    csv = tmp_path / "m.csv"
    csv.write_text("path,patient_id,split,finding\na.png,p1,train,1\nb.png,p1,validate,0\nc.png,p2,test,1\n")
    with pytest.raises(LeakageError, match="--allow-leak"):
        load_manifest(str(csv))
    with caplog.at_level(logging.WARNING):
        m = load_manifest(str(csv), allow_leak=True)
    assert m.split.tolist() == ["train", "val", "test"] and "allowed by --allow-leak" in caplog.text
    resplit = load_manifest(str(csv), split="patient:0:0.5,0,0.5")
    assert resplit.split[0] == resplit.split[1] and resplit.leakage.ok
    assert resplit.spec()["split"] == "patient:0:0.5,0,0.5"


def test_official_plus_val_carves_validation_from_official_train(chexpert_root, vindr_root):
    rule = parse_split("official+val:0:0.25")
    assert (rule.kind, rule.fractions, str(rule)) == ("official+val", (0.75, 0.25, 0.0), "official+val:0:0.25")
    official = load_manifest(f"chexpert:{chexpert_root}", views="all", split="official")
    carved = load_manifest(f"chexpert:{chexpert_root}", views="all", split="official+val:0:0.25")
    was_train = official.split == "train"
    assert (carved.split[~was_train] == official.split[~was_train]).all()  # official val/test untouched
    assert set(carved.split[was_train]) == {"train", "val"} and carved.leakage.ok
    per_patient = carved.frame[was_train].groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    vindr = load_manifest(f"vindr:{vindr_root}", split="official+val:0:0.34")
    assert vindr.split.tolist().count("val") == 1 and vindr.split.tolist()[3:] == ["test", "test"]
    with pytest.raises(DataError, match="between 0 and 1"):
        parse_split("official+val:0:1.5")


# ------------------------------------------------------------------------------------- units: patient + study
def _reference_units(patients, studies, images):
    """Brute-force union-find over the rows (the rule written out the slow way)."""
    parent = list(range(len(patients)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for column in (patients, studies):
        first = {}
        for i, value in enumerate(column):
            if value in (None, ""):
                continue
            if value in first:
                parent[find(i)] = find(first[value])
            else:
                first[value] = i
    members = {}
    for i in range(len(patients)):
        names = ([f"patient:{patients[i]}"] if patients[i] else []) + ([f"study:{studies[i]}"] if studies[i] else [])
        members.setdefault(find(i), []).extend(names or [images[i]])
    return [min(members[find(i)]) for i in range(len(patients))]


def test_split_units_links_patients_through_shared_studies():
    keys, unit = split_units(["P2", "P1", "P3", "P4", "P4"], ["S1", "S1", "S2", "S3", "S4"], list("abcde"))
    assert unit == "patient"
    assert keys.tolist() == ["patient:P1", "patient:P1", "patient:P3", "patient:P4", "patient:P4"]
    # a chain P5 - S5 - P6 - S6 - P7 is one unit
    keys, _ = split_units(["P7", "P6", "P6", "P5"], ["S6", "S6", "S5", "S5"], None)
    assert set(keys) == {"patient:P5"}


@pytest.mark.parametrize("patients,studies,unit", [
    (["p1", "p2"], ["s1", "s2"], "patient"),
    (["p1", None], ["s1", "s2"], "study"),
    ([float("nan"), ""], ["s1", "s2"], "study"),
    (None, ["s1", "s2"], "study"),
    (["p1", "nan"], ["s1", ""], "image"),
    (None, None, "image"),
])
def test_split_units_names_the_unit(patients, studies, unit):
    keys, got = split_units(patients, studies, ["a.png", "b.png"])
    assert got == unit
    if unit == "image" and patients is None:
        assert keys.tolist() == ["a.png", "b.png"]  # a lone row is keyed by its id


def test_split_units_matches_brute_force_and_ignores_row_order():
    rng = np.random.default_rng(0)
    n = 3000
    patients = [f"P{x}" if x >= 0 else "" for x in rng.integers(-50, 800, n)]
    studies = [f"S{x}" if x >= 0 else "" for x in rng.integers(-300, 1200, n)]
    images = [f"img{i}" for i in range(n)]
    keys, unit = split_units(patients, studies, images)
    assert unit == "image" and keys.tolist() == _reference_units(patients, studies, images)
    order = rng.permutation(n)
    shuffled, _ = split_units(np.array(patients)[order], np.array(studies)[order], np.array(images)[order])
    assert shuffled.tolist() == keys[order].tolist()


def test_split_units_rejects_mismatched_lengths():
    with pytest.raises(DataError, match="one entry per row"):
        split_units(["p1", "p2"], ["s1"], None)


def test_group_keys_keeps_the_patient_key_when_no_study_is_shared():
    frame = pd.DataFrame({"id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"], "study_id": ["s1", "s2", "s3"]})
    keys, unit = group_keys(frame)
    # the same keys as before components existed, so existing patient splits do not move
    assert keys.tolist() == ["patient:p1", "patient:p1", "patient:p2"] and unit == "patient"


def test_carve_val_moves_whole_training_units_by_the_hash_ranking():
    keys = np.array([f"patient:p{i // 2}" for i in range(40)], dtype=object)  # 20 units of 2 rows
    split = np.array(["train"] * 30 + ["test"] * 10, dtype=object)
    carved = carve_val(split, keys, seed=4, fraction=0.2)
    assert (carved[30:] == "test").all() and set(carved[:30]) == {"train", "val"}
    per_unit = pd.Series(carved).groupby(keys).nunique()
    assert (per_unit == 1).all() and len(set(keys[carved == "val"])) == 3  # 20% of 15 training units
    expected = patient_split(keys[:30], seed=4, fractions=(0.8, 0.2, 0.0))
    assert carved[:30].tolist() == expected.tolist()  # the one split rule, not a second random one
    with pytest.raises(DataError, match="between 0 and 1"):
        carve_val(split, keys, seed=0, fraction=1.0)
    with pytest.raises(DataError, match="fewer than 2"):
        carve_val(["train", "train", "test"], ["u1", "u1", "u2"], seed=0, fraction=0.5)


def test_audit_split_works_on_arrays_and_agrees_with_the_frame_audit():
    split = np.array(["train", "test", "train", "val", "", "test"], dtype=object)
    patients = np.array(["p1", "p1", "p2", "p3", "p3", None], dtype=object)
    studies = np.array(["s1", "s2", "s3", "s4", "s4", "s3"], dtype=object)
    report = audit_split(split, patients, studies, allow_leak=True)
    assert report.leaks == {"patient_id": 1, "study_id": 1} and report.rows == {"patient_id": 2, "study_id": 2}
    frame = pd.DataFrame({"split": split, "patient_id": patients, "study_id": studies})
    assert audit_leakage(frame, allow_leak=True) == report
    with pytest.raises(LeakageError, match=r"1 patient\(s\) over 2 rows"):
        audit_split(split, patients, None, source="store")
    assert audit_split(split, None, None).checked == ()


def test_real_padchest_quirk_splits_without_allow_leak(fx, tmp_path):
    """The real CSV has a StudyID shared by two PatientIDs; a split by components keeps both on one side."""
    from embedkit.cli.main import app
    from typer.testing import CliRunner

    root = fx.make_padchest(tmp_path / "pc", shared_study=True)
    out = tmp_path / "m.csv"
    rule = "patient:0:0.7,0.1,0.2"
    result = CliRunner().invoke(app, ["manifest", f"padchest:{root}", "--out", str(out), "--split", rule])
    assert result.exit_code == 0, result.output
    assert "split unit: patient" in result.stdout
    m = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    assert (m.groupby("study_id")["split"].nunique() == 1).all()
    p4, p7 = fx.padchest_patient_id(4), fx.padchest_patient_id(7)
    assert m.loc[m["patient_id"].isin([p4, p7]), "split"].nunique() == 1 and m["patient_id"].isin([p7]).any()
    # The fixture is the failing case: splitting by PatientID alone would put the shared study in two splits.
    by_patient = patient_split("patient:" + m["patient_id"], seed=0, fractions=(0.7, 0.1, 0.2))
    assert not audit_split(by_patient, m["patient_id"], m["study_id"], allow_leak=True).ok
