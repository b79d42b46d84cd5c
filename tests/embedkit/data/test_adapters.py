"""Each adapter against a synthetic copy of its dataset's real format (builders in fixtures.py)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from embedkit.data import load_manifest
from embedkit.errors import DataError, LeakageError

NAN = np.nan


def labels_of(m, row_id: str) -> dict[str, float]:
    i = m.ids.tolist().index(row_id)
    return dict(zip(m.label_names, m.labels[i].tolist()))


def positives(m, row_id: str) -> set[str]:
    return {k for k, v in labels_of(m, row_id).items() if v == 1}


# ---------------------------------------------------------------------------------------------------------- NIH
NIH_POSITIVES = {
    "00000001_000.png": {"cardiomegaly"}, "00000001_001.png": {"cardiomegaly", "emphysema"},
    "00000002_000.png": {"no_finding"}, "00000003_000.png": {"infiltration", "pleural_thickening", "effusion"},
    "00000004_000.png": {"mass", "nodule"}, "00000005_000.png": {"hernia"},
    "00000005_002.png": {"pneumonia", "infiltration"},
}


@pytest.mark.parametrize("variant", ["v2020", "2017"])
def test_nih_labels_ids_views_split(fx, tmp_path, variant):
    root = fx.make_nih(tmp_path, variant=variant)
    m = load_manifest(f"nih:{root}", split="official")
    assert m.ids.tolist() == list(NIH_POSITIVES)
    assert m.labels.shape == (7, 15) and not np.isnan(m.labels).any()
    for row_id, expected in NIH_POSITIVES.items():
        assert positives(m, row_id) == expected
    meta = m.metadata()
    assert meta["patient_id"] == ["1", "1", "2", "3", "4", "5", "5"]  # unpadded in both variants
    assert meta["view"] == ["PA", "PA", "AP", "PA", "AP", "PA", "AP"]
    assert meta["sex"] == ["M", "M", "M", "F", "F", "F", "F"]
    assert meta["age"][0] == 57.0 and meta["age"][3] == 74.0
    if variant == "2017":
        assert meta["age"][6] == 1.0  # "012M"
    assert m.split.tolist() == ["train", "train", "train", "test", "test", "train", "train"]
    assert m.spec()["n_missing"] == 1 and m.missing.tolist() == [False] * 4 + [True] + [False] * 2
    # files are found by name in images_001/images and images_002/images
    assert m.paths[5].endswith("images_002/images/00000005_000.png")


def test_nih_paper_labels(nih_root):
    m = load_manifest(f"nih:{nih_root}", labels="paper")
    assert m.label_names == ("cardiomegaly", "effusion", "pneumonia", "atelectasis", "no_finding", "consolidation",
                             "pneumothorax", "fibrosis", "emphysema", "hernia", "pleural_thickening", "edema",
                             "nodule", "mass")
    assert "infiltration" not in m.label_names
    assert positives(m, "00000005_002.png") == {"pneumonia"}


def test_nih_overlapping_split_lists_leak(fx, tmp_path, caplog):
    root = fx.make_nih(tmp_path, bad_split=True)
    with pytest.raises(LeakageError, match=r"1 patient\(s\)"):
        load_manifest(f"nih:{root}", split="official")
    with caplog.at_level(logging.WARNING):
        m = load_manifest(f"nih:{root}", split="official", allow_leak=True)
    assert "more than one split" in caplog.text
    assert m.split[-1] == "test" and m.split[-2] == "train"
    assert m.leakage.leaks["patient_id"] == 1


# ----------------------------------------------------------------------------------------------------- CheXpert
ROW1 = "train/patient00001/study1/view1_frontal.jpg"
ROW2 = "train/patient00002/study2/view1_frontal.jpg"
ROW5 = "train/patient00004/study1/view1_frontal.jpg"
UNCERTAIN_ROW2 = ("cardiomegaly", "edema", "consolidation", "atelectasis", "pleural_effusion")


@pytest.mark.parametrize("policy,value", [("ignore", NAN), ("ones", 1.0), ("zeros", 0.0)])
def test_chexpert_uncertainty_policies(chexpert_root, policy, value):
    m = load_manifest(f"chexpert:{chexpert_root}", uncertain=policy)
    row = labels_of(m, ROW2)
    for name in UNCERTAIN_ROW2:
        assert row[name] == value or (np.isnan(value) and np.isnan(row[name])), name
    assert row["lung_opacity"] == 1 and row["fracture"] == 1
    assert row["no_finding"] == 0 and row["pneumonia"] == 0  # blank = not mentioned = 0 by default


def test_chexpert_blank_policy_and_metadata(chexpert_root):
    zeros = load_manifest(f"chexpert:{chexpert_root}")
    unknown = load_manifest(f"chexpert:{chexpert_root}", blank="nan")
    assert labels_of(zeros, ROW1)["enlarged_cardiomediastinum"] == 0
    assert np.isnan(labels_of(unknown, ROW1)["enlarged_cardiomediastinum"])
    assert labels_of(unknown, ROW1)["support_devices"] == 1 and labels_of(unknown, ROW1)["pneumothorax"] == 0
    # frontal-only keeps rows 1, 2, 4, 5 of train (5 is an LL frontal) and both valid rows
    assert zeros.ids.tolist() == [ROW1, ROW2, "train/patient00003/study1/view1_frontal.jpg", ROW5,
                                  "valid/patient64541/study1/view1_frontal.jpg",
                                  "valid/patient64542/study1/view1_frontal.jpg"]
    meta = zeros.metadata()
    assert meta["patient_id"][:4] == ["00001", "00002", "00003", "00004"]
    assert meta["study_id"][1] == "patient00002/study2"
    assert meta["view"][3] == "LL" and meta["sex"][3] == "" and np.isnan(meta["age"][3])
    assert zeros.split.tolist() == ["train"] * 4 + ["val"] * 2
    valid = unknown.labels[unknown.split == "val"]
    assert valid.shape == (2, 14) and set(np.unique(valid)) <= {0.0, 1.0}  # binary, no blanks
    assert zeros.spec()["n_missing"] == 1


def test_chexpert_views_all_and_full_folder(fx, tmp_path):
    root = fx.make_chexpert(tmp_path, folder="CheXpert-v1.0")
    for given in (root, root / "CheXpert-v1.0"):
        m = load_manifest(f"chexpert:{given}", views="all")
        assert len(m) == 8
        lateral = m.frame[m.frame["id"] == "train/patient00002/study2/view2_lateral.jpg"].iloc[0]
        assert lateral["view"] == "LATERAL" and not lateral["frontal"]
        # study-level labels repeat on the lateral row
        assert np.array_equal(m.labels[1], m.labels[2], equal_nan=True)
        assert m.paths[0] == str(root / "CheXpert-v1.0" / ROW1)


def test_chexpert_paper_labels(chexpert_root):
    m = load_manifest(f"chexpert:{chexpert_root}", labels="paper", uncertain="ones")
    assert m.label_names == ("cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding",
                             "consolidation", "pneumothorax", "lung_opacity", "lung_lesion", "fracture")
    assert positives(m, ROW2) == {"cardiomegaly", "pleural_effusion", "atelectasis", "consolidation",
                                  "lung_opacity", "fracture"}


# -------------------------------------------------------------------------------------------------------- MIMIC
def test_mimic_study_labels_joined_views_split(fx, mimic_root):
    m = load_manifest(f"mimic:{mimic_root}", views="all", uncertain="ignore")
    ids = [fx.mimic_dicom_id(i) for i, *_ in fx.MIMIC_IMAGES]
    assert m.ids.tolist() == ids
    assert m.paths[0] == str(mimic_root / "files" / "p10" / "p10000032" / "s50000001" / f"{ids[0]}.jpg")
    assert labels_of(m, ids[0])["no_finding"] == 1 and labels_of(m, ids[1])["no_finding"] == 1
    assert labels_of(m, ids[0])["atelectasis"] == 0  # blank -> 0 by default
    row = labels_of(m, ids[2])
    assert np.isnan(row["cardiomegaly"]) and row["atelectasis"] == 1 and row["edema"] == 0
    assert row["support_devices"] == 1 and row["pleural_effusion"] == 1
    for unlabelled in (ids[3], ids[5], ids[6]):  # no label row / all-blank row: unknown under every policy
        assert np.isnan(list(labels_of(m, unlabelled).values())).all()
    assert m.split.tolist() == ["train"] * 3 + ["val"] * 2 + ["test"] * 2
    assert m.metadata()["patient_id"][3] == "10000764" and m.metadata()["study_id"][6] == "50000005"
    assert m.spec()["n_missing"] == 1

    frontal = load_manifest(f"mimic:{mimic_root}", uncertain="ones")
    assert frontal.ids.tolist() == [ids[0], ids[2], ids[5], ids[6]]  # drops LATERAL, empty view, AP AXIAL
    assert labels_of(frontal, ids[2])["cardiomegaly"] == 1
    assert np.isnan(labels_of(frontal, ids[5])["no_finding"])


def test_mimic_label_sources(fx, mimic_root):
    study2 = fx.mimic_dicom_id(3)
    negbio = load_manifest(f"mimic:{mimic_root}", uncertain="zeros", adapter_options={"label_source": "negbio"})
    chexpert = load_manifest(f"mimic:{mimic_root}", uncertain="zeros")
    assert labels_of(chexpert, study2)["cardiomegaly"] == 0 and labels_of(negbio, study2)["cardiomegaly"] == 1
    radiologist = load_manifest(f"mimic:{mimic_root}?test_labels=radiologist", uncertain="ignore")
    row = labels_of(radiologist, fx.mimic_dicom_id(6))  # study 50000004 from the 2.1.0 test-set CSV
    assert row["lung_opacity"] == 1 and row["cardiomegaly"] == 1 and np.isnan(row["pleural_effusion"])
    assert radiologist.spec()["adapter_options"] == {"test_labels": "radiologist"}
    with pytest.raises(DataError, match="label_source"):
        load_manifest(f"mimic:{mimic_root}", adapter_options={"label_source": "chexbert"})


# ----------------------------------------------------------------------------------------------------- PadChest
def test_padchest_terms_views_ages(fx, padchest_root):
    m = load_manifest(f"padchest:{padchest_root}", views="all")
    ids = [fx.padchest_image_id(r) for r in range(1, 9)]
    assert m.ids.tolist() == ids and not any(n.startswith("unnamed") for n in m.label_names)
    assert positives(m, ids[2]) == {"cardiomegaly", "pleural_effusion", "unchanged"}
    assert positives(m, ids[3]) == {"pneumonia", "infiltrates"}
    assert positives(m, ids[7]) == {"copd_signs", "nodule"}
    assert not np.isnan(list(labels_of(m, ids[6]).values())).any() and positives(m, ids[6]) == set()
    assert np.isnan(list(labels_of(m, ids[5]).values())).all()  # Labels = literal nan
    meta = m.metadata()
    assert meta["age"][0] == 64.0 and np.isnan(meta["age"][6]) and meta["sex"][6] == "O"
    assert meta["view"][2] == "AP_horizontal"
    assert m.paths[2] == str(padchest_root / "54" / ids[2])
    assert m.spec()["n_missing"] == 1
    frontal = load_manifest(f"padchest:{padchest_root}")
    assert frontal.ids.tolist() == [ids[i] for i in (0, 2, 3, 5, 7)]


def test_padchest_flat_layout_and_blank(fx, tmp_path):
    root = fx.make_padchest(tmp_path, flat=True)
    m = load_manifest(f"padchest:{root}", views="all", blank="nan")
    assert m.paths[0] == str(root / fx.padchest_image_id(1)) and m.spec()["n_missing"] == 1
    row = labels_of(m, fx.padchest_image_id(4))
    assert row["pneumonia"] == 1 and np.isnan(row["cardiomegaly"])


def test_padchest_paper_labels_and_patient_split(fx, padchest_root):
    with pytest.raises(DataError, match="no official split"):
        load_manifest(f"padchest:{padchest_root}", split="official")
    m = load_manifest(f"padchest:{padchest_root}", labels="paper", views="all", split="patient:3:0.5,0.25,0.25")
    assert len(m.label_names) == 17 and m.label_names[4] == "no_finding"
    assert positives(m, fx.padchest_image_id(1)) == {"no_finding"}
    assert positives(m, fx.padchest_image_id(8)) == {"copd_signs", "nodule_mass"}
    p1 = m.frame["patient_id"] == fx.padchest_patient_id(1)
    assert p1.sum() == 3 and m.frame.loc[p1, "split"].nunique() == 1  # dirs 0 and 54, one side of the split
    assert set(m.split) == {"train", "val", "test"}


# -------------------------------------------------------------------------------------------------------- VinDr
def test_vindr_reader_aggregation(fx, vindr_root):
    img = fx.VINDR_IMAGES
    major = load_manifest(f"vindr:{vindr_root}")
    assert major.ids.tolist() == [img[k] for k in "ABCDE"] and len(major.label_names) == 28
    assert positives(major, img["A"]) == {"no_finding"}
    assert positives(major, img["B"]) == {"cardiomegaly"}
    assert positives(major, img["C"]) == {"no_finding"}
    assert positives(major, img["D"]) == {"pleural_effusion", "other_diseases"}  # test's "Other disease"
    assert major.split.tolist() == ["train"] * 3 + ["test"] * 2
    assert "patient_id" not in major.frame and major.spec()["n_missing"] == 1

    union = load_manifest(f"vindr:{vindr_root}?readers=any")
    assert positives(union, img["B"]) == {"cardiomegaly", "aortic_enlargement", "other_lesion", "other_diseases"}
    assert positives(union, img["C"]) == {"nodule_mass", "lung_tumor"}
    assert positives(union, img["A"]) == {"no_finding"}

    per = load_manifest(f"vindr:{vindr_root}", adapter_options={"readers": "per-reader"})
    assert len(per) == 11 and per.frame["reader_id"].tolist()[:3] == ["R8", "R9", "R10"]
    assert per.ids[0] == f"{img['A']}:R8" and positives(per, f"{img['C']}:R9") == {"nodule_mass", "lung_tumor"}


def test_vindr_reader_column_case_and_paper(fx, tmp_path):
    root = fx.make_vindr(tmp_path, reader_column="rad_ID")
    m = load_manifest(f"vindr:{root}", labels="paper")
    assert m.label_names == ("cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding",
                             "consolidation", "pneumothorax", "pleural_thickening", "lung_opacity",
                             "pulmonary_fibrosis", "nodule_mass")
    assert positives(m, fx.VINDR_IMAGES["B"]) == {"cardiomegaly"}


def test_vindr_kaggle_layout(fx, tmp_path):
    root = fx.make_vindr(tmp_path, layout="kaggle")
    img = fx.VINDR_IMAGES
    m = load_manifest(f"vindr:{root}")
    assert m.ids.tolist() == [img[k] for k in "ABC"] and len(m.label_names) == 15
    assert positives(m, img["B"]) == {"cardiomegaly"} and positives(m, img["C"]) == {"no_finding"}
    union = load_manifest(f"vindr:{root}", adapter_options={"readers": "any"})
    assert positives(union, img["B"]) == {"cardiomegaly", "aortic_enlargement", "other_lesion"}
    assert positives(union, img["C"]) == {"nodule_mass"}
    assert m.spec()["n_missing"] == 1
    with pytest.raises(DataError, match="pneumonia"):
        load_manifest(f"vindr:{root}", labels="paper")


def test_vindr_patient_split_falls_back_to_images(vindr_root, caplog):
    with caplog.at_level(logging.WARNING):
        m = load_manifest(f"vindr:{vindr_root}?readers=per-reader", split="patient:0:0.4,0.3,0.3")
    assert "no patient ids" in caplog.text
    per_image = m.frame.groupby("study_id")["split"].nunique()
    assert (per_image == 1).all()  # an image's readers stay together


# --------------------------------------------------------------------------------------------------- VinDr-PCXR
def test_vindr_pcxr(fx, pcxr_root):
    m = load_manifest(f"vindr-pcxr:{pcxr_root}", split="official")
    train = [fx.pcxr_image_id("train", i) for i in range(5)]
    test = [fx.pcxr_image_id("test", i) for i in range(2)]
    assert m.ids.tolist() == train + test and m.split.tolist() == ["train"] * 5 + ["test"] * 2
    assert "bronchopneumonia" in m.label_names and "diaphragmatic_hernia" in m.label_names
    assert positives(m, train[1]) == {"bronchitis", "bronchopneumonia"}
    assert positives(m, train[3]) == {"diaphragmatic_hernia"}
    assert positives(m, train[4]) == set() and labels_of(m, train[4])["no_finding"] == 0  # no label, not normal
    assert m.spec()["n_missing"] == 1
    paper = load_manifest(f"vindr-pcxr:{pcxr_root}", labels="paper")
    assert paper.label_names == ("no_finding", "pneumonia", "bronchitis_bronchiolitis")
    assert positives(paper, train[1]) == {"bronchitis_bronchiolitis"}
    assert positives(paper, test[0]) == {"bronchitis_bronchiolitis"}


def test_adapter_errors(tmp_path, nih_root):
    with pytest.raises(DataError, match="Did you mean 'chexpert'"):
        load_manifest(f"chexpret:{tmp_path}")
    with pytest.raises(DataError, match="no Data_Entry_2017"):
        load_manifest(f"nih:{tmp_path}")
    with pytest.raises(DataError, match="is not a folder"):
        load_manifest(f"nih:{tmp_path / 'absent'}")
    with pytest.raises(DataError, match="takes no option 'readers'"):
        load_manifest(f"nih:{nih_root}?readers=any")


# -------------------------------------------------------------------------------------------------- DICOM folder
def test_dicom_duplicates_are_skipped_and_counted_and_blank_views_follow_the_rule(tmp_path, monkeypatch, caplog):
    import shutil

    import pydicom

    from embedkit.data.phantoms import make_phantoms

    monkeypatch.setenv("EMBEDKIT_SALT", "test-salt")
    make_phantoms(tmp_path / "ph", n=6, size=32, seed=0)
    files = sorted((tmp_path / "ph").rglob("*.dcm"))
    shutil.copy(files[0], tmp_path / "ph" / "zz_copy.dcm")  # same SOPInstanceUID: used to refuse the folder
    blank = pydicom.dcmread(files[1])
    blank.ViewPosition = ""
    blank.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["blank-view"])
    blank.save_as(tmp_path / "ph" / "zz_blank_view.dcm")
    with caplog.at_level(logging.WARNING):
        m = load_manifest(f"dicom:{tmp_path / 'ph'}")
    assert "skipped 1 file(s) that repeat another file's SOPInstanceUID" in caplog.text
    n_other = sum(p.is_file() and p.suffix != ".dcm" for p in (tmp_path / "ph").rglob("*"))  # PNGs, the CSV
    assert len(m) == len(files) and m.spec()["dropped"] == {"duplicate SOPInstanceUID": 1, "unknown view": 1,
                                                            "not DICOM (file skipped)": n_other}
    kept = load_manifest(f"dicom:{tmp_path / 'ph'}", unknown_view="keep")
    assert len(kept) == len(files) + 1 and kept.spec()["dropped"]["duplicate SOPInstanceUID"] == 1
    assert "unknown view" not in kept.spec()["dropped"]
    assert kept.spec()["n_unknown_view"] == 1
