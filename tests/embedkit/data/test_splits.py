"""Patient-level splits (determinism, disjointness) and the leakage audit (error vs warning)."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
import pytest

from embedkit.data import load_manifest
from embedkit.data.splits import audit_leakage, parse_split, patient_split, salted
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
