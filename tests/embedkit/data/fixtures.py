"""Builders of synthetic dataset folders that reproduce each public dataset's real on-disk format.

Everything follows each dataset's published files: exact headers (with their quirks), path conventions, value
encodings; all ids are fake but have the real ids' shape. Image files are a few bytes (the
manifest never opens them); in every fixture exactly one image listed in the label files is NOT written, so the
missing-file count is exercised. Each builder returns the ROOT to pass as ``ADAPTER:ROOT``.
"""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

FAKE_BYTES = b"\x89PNG-not-a-real-image"


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FAKE_BYTES)


def _write(path: Path, text: str, *, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", newline="") as handle:
            handle.write(text)
    else:
        path.write_text(text)


def _rows(header: list[str] | None, rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------- NIH
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,M,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Infiltration|Pleural_Thickening|Effusion,0,3,74,F,PA,2048,2500,0.168,0.168",
    "00000004_000.png,Mass|Nodule,0,4,45,F,AP,3056,2544,0.139,0.139",
    "00000005_000.png,Hernia,0,5,0,F,PA,2500,2048,0.168,0.168",
    "00000005_002.png,Pneumonia|Infiltration,1,5,1,F,AP,2500,2048,0.168,0.168",
]
NIH_MISSING = "00000004_000.png"


def make_nih(root: Path, *, variant: str = "v2020", bad_split: bool = False) -> Path:
    """ChestX-ray14: Data_Entry CSV (v2020 11-field header, or the 2017 12-field variant), BBox list, split lists.

    Images live in ``images_001/images`` and ``images_002/images`` (Kaggle layout) to exercise the lookup by
    file name. ``bad_split`` moves ``00000005_002.png`` into test_list.txt (patient 5 then leaks).
    """
    root.mkdir(parents=True, exist_ok=True)
    if variant == "v2020":
        _write(root / "Data_Entry_2017_v2020.csv", "\n".join([NIH_HEADER, *NIH_ROWS]) + "\n")
    elif variant == "2017":
        header = NIH_HEADER.replace("Patient Gender", "Patient Sex") + ","
        rows = []
        for line in NIH_ROWS:
            f = line.split(",")
            f[2] = f"{int(f[2]):03d}"
            f[3] = f"{int(f[3]):08d}"
            f[4] = f"{int(f[4]):03d}Y" if f[4] != "1" else "012M"  # one age in months
            rows.append(",".join(f) + ",")
        _write(root / "Data_Entry_2017.csv", "\n".join([header, *rows]) + "\n")
    else:
        raise ValueError(variant)
    _write(root / "BBox_List_2017.csv", "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
           "00000003_000.png,Infiltrate,225.08,547.02,86.78,79.19\n"
           "00000004_000.png,Nodule,686.1,131.5,185.5,313.5\n")
    names = [r.split(",")[0] for r in NIH_ROWS]
    test = [n for n in names if n.startswith(("00000003", "00000004"))]
    if bad_split:
        test.append("00000005_002.png")
    train = [n for n in names if n not in test]
    _write(root / "train_val_list.txt", "\n".join(train) + "\n")
    _write(root / "test_list.txt", "\n".join(test) + "\n")
    for i, name in enumerate(names):
        if name != NIH_MISSING:
            _touch(root / ("images_001" if i < 4 else "images_002") / "images" / name)
    return root


# ---------------------------------------------------------------------------------------------------- CheXpert
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")
CHEXPERT_TRAIN = [
    ("patient00001/study1/view1_frontal.jpg", "Female", "68", "Frontal", "AP", "1.0,,,,,,,,,0.0,,,,1.0"),
    ("patient00002/study2/view1_frontal.jpg", "Female", "87", "Frontal", "AP",
     ",,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,"),
    ("patient00002/study2/view2_lateral.jpg", "Female", "87", "Lateral", "",
     ",,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,"),
    ("patient00003/study1/view1_frontal.jpg", "Male", "41", "Frontal", "PA", ",,,,,1.0,,,,0.0,,,,"),
    ("patient00004/study1/view1_frontal.jpg", "Unknown", "0", "Frontal", "LL", ",,,,,,,,,,1.0,,,"),
    ("patient00005/study1/view1_lateral.jpg", "Male", "90", "Lateral", "", ",,,,,,,,,,,,,0.0"),
]
CHEXPERT_VALID = [
    ("patient64541/study1/view1_frontal.jpg", "Male", "55", "Frontal", "PA",
     "0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0,0.0,0.0"),
    ("patient64542/study1/view1_frontal.jpg", "Female", "73", "Frontal", "AP",
     "1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0"),
]
CHEXPERT_MISSING = "valid/patient64542/study1/view1_frontal.jpg"


def make_chexpert(root: Path, *, folder: str = "CheXpert-v1.0-small") -> Path:
    """CheXpert v1.0: ``{folder}/train.csv`` + ``valid.csv`` with the 19-column header; Path prefixed by folder.

    Returns the parent of ``folder`` (the adapter accepts either).
    """
    base = root / folder
    for name, split, rows in (("train.csv", "train", CHEXPERT_TRAIN), ("valid.csv", "valid", CHEXPERT_VALID)):
        lines = [CHEXPERT_HEADER]
        for tail, sex, age, fl, appa, labels in rows:
            lines.append(f"{folder}/{split}/{tail},{sex},{age},{fl},{appa},{labels}")
            rel = f"{split}/{tail}"
            if rel != CHEXPERT_MISSING:
                _touch(base / rel)
        _write(base / name, "\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------------------------------------- MIMIC
MIMIC_LABELS_HEADER = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
                       "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
                       "Pneumothorax,Support Devices")
MIMIC_META_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
                     "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                     "PatientOrientationCodeSequence_CodeMeaning")


def mimic_dicom_id(i: int) -> str:
    """A fake dicom_id with the real shape: five dash-separated groups of 8 hex characters."""
    return "-".join(f"{(i * 2654435761 + k * 40503) % 16**8:08x}" for k in range(5))


#: (dicom index, subject, study, ViewPosition, view code meaning)
MIMIC_IMAGES = [
    (1, "10000032", "50000001", "PA", "postero-anterior"),
    (2, "10000032", "50000001", "LATERAL", "lateral"),
    (3, "10000032", "50000002", "AP", "antero-posterior"),
    (4, "10000764", "50000003", "", ""),
    (5, "10000764", "50000003", "AP AXIAL", "antero-posterior"),
    (6, "11000011", "50000004", "PA", "postero-anterior"),
    (7, "11000011", "50000005", "PA", "postero-anterior"),
]
MIMIC_MISSING = 7
MIMIC_SPLIT = {"10000032": "train", "10000764": "validate", "11000011": "test"}


def make_mimic(root: Path) -> Path:
    """MIMIC-CXR-JPG 2.x: the four gzipped 2.0.0 CSVs, the 2.1.0 test-set CSV, ``files/p1X/pSUBJECT/sSTUDY/*.jpg``."""
    meta, split = [], []
    for i, subject, study, view, meaning in MIMIC_IMAGES:
        dicom = mimic_dicom_id(i)
        meta.append([dicom, subject, study, "CHEST (PA AND LAT)", view, "3056", "2544", "21800506", "213014.531",
                     "CHEST (PA AND LAT)", meaning, "Erect" if view else ""])
        split.append([dicom, study, subject, MIMIC_SPLIT[subject]])
        if i != MIMIC_MISSING:
            _touch(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    _write(root / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_META_HEADER + "\n" + _rows(None, meta), gz=True)
    _write(root / "mimic-cxr-2.0.0-split.csv.gz", _rows(["dicom_id", "study_id", "subject_id", "split"], split),
           gz=True)
    chexpert = ["10000032,50000001,,,,,,,,,1.0,,,,,",
                "10000032,50000002,1.0,-1.0,,0.0,,,,,,1.0,,,0.0,1.0",
                "11000011,50000004,,,,,,,,,,,,,,"]
    negbio = [chexpert[0], chexpert[1].replace("1.0,-1.0,", "1.0,1.0,", 1), chexpert[2]]
    _write(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "\n".join([MIMIC_LABELS_HEADER, *chexpert]) + "\n", gz=True)
    _write(root / "mimic-cxr-2.0.0-negbio.csv.gz", "\n".join([MIMIC_LABELS_HEADER, *negbio]) + "\n", gz=True)
    test_header = ("study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
                   "Lung Lesion,Airspace Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,"
                   "Support Devices")
    _write(root / "mimic-cxr-2.1.0-test-set-labeled.csv",
           test_header + "\n50000004,0.0,1.0,,,,,,1.0,,-1.0,,,0.0,\n")
    _write(root / "IMAGE_FILENAMES", "\n".join(
        f"files/p{s[:2]}/p{s}/s{t}/{mimic_dicom_id(i)}.jpg" for i, s, t, _, _ in MIMIC_IMAGES) + "\n")
    return root


# ---------------------------------------------------------------------------------------------------- PadChest
PADCHEST_HEADER = [
    "", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS"]


def padchest_ids(n: int) -> tuple[str, str]:
    """Fake (ImageID, PatientID/StudyID-shaped number) for patient/study ``n``."""
    digits = f"{(n * 7919 + 12345678901234567) ** 2:038d}"[-38:]
    return f"{digits}_{'abcdef'[n % 6]}{n % 10}ga2{n % 7}.png", digits[:36]


#: (row, ImageDir, patient, study, Projection, ViewPosition_DICOM, Labels, extra overrides)
PADCHEST_ROWS = [
    (1, "0", 1, 1, "PA", "POSTEROANTERIOR", "['normal']", {"PatientBirth": "1950.0", "MethodLabel": "Physician"}),
    (2, "0", 1, 1, "L", "LATERAL", "['normal']", {"PatientBirth": "1950.0"}),
    (3, "54", 1, 2, "AP_horizontal", "nan", "['cardiomegaly', ' pleural effusion', '', 'unchanged']",
     {"PatientBirth": "1950.0", "StudyDate_DICOM": "20160102"}),
    (4, "1", 2, 3, "PA", "PA", "['pneumonia', ' pneumonia', 'infiltrates']", {}),
    (5, "1", 3, 4, "COSTAL", "nan", "['rib fracture']", {}),
    (6, "2", 4, 5, "PA", "PA", "nan", {"Report": "nan", "Localizations": "nan",
                                       "LabelsLocalizationsBySentence": "nan", "labelCUIS": ""}),
    (7, "2", 5, 6, "UNK", "nan", "['']", {"PatientBirth": "", "PatientSex_DICOM": "O"}),
    (8, "3", 6, 7, "AP", "AP", "['COPD signs', 'nodule']", {"labelCUIS": "['C0000001' 'C0000002']"}),
]
PADCHEST_MISSING = 5  # row number whose image is not written (an EXCLUDEd/unreadable file in the real data)
#: The real CSV's quirk (one StudyID maps to two PatientIDs): row 9 is patient P7 in P4's
#: study 5. Under seed 0 and 0.7/0.1/0.2 a split by PatientID alone puts P4 in test and P7 in train.
PADCHEST_SHARED_STUDY_ROWS = [(9, "3", 7, 5, "PA", "PA", "['normal']", {})]
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def make_padchest(root: Path, *, flat: bool = False, shared_study: bool = False) -> Path:
    """PadChest: the gzipped 36-field CSV (leading empty index field, literal nan/None), 16-bit-PNG paths
    ``{ImageDir}/{ImageID}`` (or all flat in ROOT with ``flat=True``); ``shared_study`` adds
    :data:`PADCHEST_SHARED_STUDY_ROWS` (a StudyID shared by two PatientIDs, as in the real CSV)."""
    rows = []
    table = PADCHEST_ROWS + (PADCHEST_SHARED_STUDY_ROWS if shared_study else [])
    for k, (row, folder, patient, study, proj, viewpos, labels, extra) in enumerate(table):
        image, _ = padchest_ids(100 + row)
        _, pid = padchest_ids(patient)
        _, sid = padchest_ids(1000 + study)
        values = {
            "": str(k), "ImageID": image, "ImageDir": folder, "StudyDate_DICOM": "20140915", "StudyID": sid,
            "PatientID": pid, "PatientBirth": "1960.0", "PatientSex_DICOM": "F" if patient % 2 else "M",
            "ViewPosition_DICOM": viewpos, "Projection": proj, "MethodProjection": "Manual review of DICOM fields",
            "Pediatric": "No", "Modality_DICOM": "CR", "Manufacturer_DICOM": "ImagingDynamicsCompanyLtd",
            "PhotometricInterpretation_DICOM": "MONOCHROME2", "PixelRepresentation_DICOM": "0",
            "PixelAspectRatio_DICOM": "None", "SpatialResolution_DICOM": "None", "BitsStored_DICOM": "12",
            "WindowCenter_DICOM": "2092", "WindowWidth_DICOM": "2251", "Rows_DICOM": "1728",
            "Columns_DICOM": "1872", "XRayTubeCurrent_DICOM": "250", "Exposure_DICOM": "2",
            "ExposureInuAs_DICOM": "None", "ExposureTime": "10", "RelativeXRayExposure_DICOM": "-1.42",
            "ReportID": str(4765777 + row), "Report": " sin hallazg patolog edad pacient .",
            "MethodLabel": "RNN_model", "Labels": labels, "Localizations": "[]",
            "LabelsLocalizationsBySentence": "[['normal'], ['normal']]", "labelCUIS": "[]",
            "LocalizationsCUIS": "[]"}
        values.update(extra)
        rows.append([values[c] for c in PADCHEST_HEADER])
        if row != PADCHEST_MISSING:
            _touch(root / image if flat else root / folder / image)
    _write(root / PADCHEST_CSV, _rows(PADCHEST_HEADER, rows), gz=True)
    return root


def padchest_image_id(row: int) -> str:
    """The ImageID of fixture row ``row`` (1-based, as in the recipe table)."""
    return padchest_ids(100 + row)[0]


def padchest_patient_id(patient: int) -> str:
    """The PatientID of fixture patient ``patient`` (P1..P7)."""
    return padchest_ids(patient)[1]


# ------------------------------------------------------------------------------------------------------- VinDr
VINDR_LOCAL = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
               "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
               "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
               "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion"]
VINDR_GLOBAL = ["COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
VINDR_IMAGES = {k: f"{(i + 1) * 0x1f3a5c7e9b:032x}"[-32:] for i, k in enumerate("ABCDE")}
#: image -> reader -> positive labels (train, 3 readers each)
VINDR_TRAIN = {
    "A": {"R8": ["No finding"], "R9": ["No finding"], "R10": ["No finding"]},
    "B": {"R8": ["Cardiomegaly", "Aortic enlargement"], "R9": ["Cardiomegaly"],
          "R10": ["Other lesion", "Other diseases"]},
    "C": {"R8": ["No finding"], "R9": ["Nodule/Mass", "Lung tumor"], "R10": ["No finding"]},
}
VINDR_TEST = {"D": ["Pleural effusion", "Other diseases"], "E": ["No finding"]}
VINDR_MISSING = "E"
KAGGLE_CLASSES = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
                  "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
                  "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding"]


def make_vindr(root: Path, *, layout: str = "physionet", reader_column: str = "rad_id") -> Path:
    """VinDr-CXR: PhysioNet ``annotations/image_labels_*.csv`` (one row per image and reader in train; test spells
    ``Other disease``) + ``annotations_*.csv``, or the Kaggle ``train.csv`` of boxes. Images ``{split}/{id}.dicom``."""
    labels = VINDR_LOCAL + VINDR_GLOBAL
    if layout == "physionet":
        train = [[VINDR_IMAGES[img], rad] + [int(x in pos) for x in labels]
                 for img, readers in VINDR_TRAIN.items() for rad, pos in readers.items()]
        _write(root / "annotations" / "image_labels_train.csv",
               _rows(["image_id", reader_column, *labels], train))
        test_labels = [("Other disease" if x == "Other diseases" else x) for x in labels]
        test = [[VINDR_IMAGES[img]] + [int(x in pos) for x in labels] for img, pos in VINDR_TEST.items()]
        _write(root / "annotations" / "image_labels_test.csv", _rows(["image_id", *test_labels], test))
        boxes = [[VINDR_IMAGES["B"], "R8", "Cardiomegaly", "691.0", "1375.0", "1653.0", "1831.0"],
                 [VINDR_IMAGES["B"], "R9", "Cardiomegaly", "700.0", "1380.0", "1650.0", "1820.0"],
                 [VINDR_IMAGES["B"], "R10", "Other lesion", "100.0", "200.0", "150.0", "260.0"],
                 [VINDR_IMAGES["C"], "R9", "Nodule/Mass", "300.0", "300.0", "340.0", "345.0"],
                 [VINDR_IMAGES["A"], "R8", "No finding", "", "", "", ""]]
        _write(root / "annotations" / "annotations_train.csv",
               _rows(["image_id", reader_column, "class_name", "x_min", "y_min", "x_max", "y_max"], boxes))
        _write(root / "annotations" / "annotations_test.csv",
               _rows(["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
                     [[VINDR_IMAGES["D"], "Pleural effusion", "10.0", "20.0", "30.0", "40.0"],
                      [VINDR_IMAGES["E"], "No finding", "", "", "", ""]]))
        for img in VINDR_TEST:
            if img != VINDR_MISSING:
                _touch(root / "test" / f"{VINDR_IMAGES[img]}.dicom")
    elif layout == "kaggle":
        rows = []
        for img, readers in VINDR_TRAIN.items():
            for rad, pos in readers.items():
                for name in pos:
                    if name in KAGGLE_CLASSES:
                        box = ["", "", "", ""] if name == "No finding" else ["691.0", "1375.0", "1653.0", "1831.0"]
                        rows.append([VINDR_IMAGES[img], name, KAGGLE_CLASSES.index(name), rad, *box])
        _write(root / "train.csv", _rows(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min",
                                          "x_max", "y_max"], rows))
    else:
        raise ValueError(layout)
    for img in VINDR_TRAIN:
        if not (layout == "kaggle" and img == "C"):
            _touch(root / "train" / f"{VINDR_IMAGES[img]}.dicom")
    return root


# -------------------------------------------------------------------------------------------------- VinDr-PCXR
PCXR_HEADER = ["image_id", "rad_ID", "No finding", "Bronchitis", "Brocho-pneumonia", "Other disease",
               "Bronchiolitis", "Situs inversus", "Pneumonia", "Pleuro-pneumonia", "Diagphramatic hernia",
               "Tuberculosis", "Congenital emphysema", "CPAM", "Hyaline membrane disease", "Mediastinal tumor",
               "Lung tumor"]
PCXR_TRAIN = [["No finding"], ["Bronchitis", "Brocho-pneumonia"], ["Pneumonia"], ["Diagphramatic hernia"], []]
PCXR_TEST = [["Bronchiolitis"], ["No finding"]]
PCXR_MISSING = ("train", 3)


def pcxr_image_id(split: str, i: int) -> str:
    """Fake 32-hex image id of row ``i`` of ``split``."""
    return f"{0xabc123 * (i + 1) + (7 if split == 'test' else 0):032x}"


def make_vindr_pcxr(root: Path) -> Path:
    """VinDr-PCXR: root-level ``image_labels_*.csv`` with the real misspellings, annotations, ``{split}/*.dicom``."""
    for split, rows in (("train", PCXR_TRAIN), ("test", PCXR_TEST)):
        out = [[pcxr_image_id(split, i), f"R{i % 3 + 1}"] + [int(x in pos) for x in PCXR_HEADER[2:]]
               for i, pos in enumerate(rows)]
        _write(root / f"image_labels_{split}.csv", _rows(PCXR_HEADER, out))
        for i in range(len(rows)):
            if (split, i) != PCXR_MISSING:
                _touch(root / split / f"{pcxr_image_id(split, i)}.dicom")
    _write(root / "annotations_train.csv", _rows(
        ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
        [[pcxr_image_id("train", 2), "R3", "Reticulonodular opacity", "10", "20", "30", "40"],
         [pcxr_image_id("train", 0), "R1", "No finding", "", "", "", ""]]))
    _write(root / "annotations_test.csv", _rows(
        ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
        [[pcxr_image_id("test", 1), "R2", "No finding", "", "", "", ""]]))
    return root
