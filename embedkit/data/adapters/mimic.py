"""MIMIC-CXR-JPG 2.0/2.1 (``mimic:ROOT``): metadata, split and CheXpert/NegBio label files joined per study.

ROOT holds ``mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz`` (plain ``.csv`` accepted) and ``files/``.
Rows are images (``id`` = ``dicom_id``, path ``files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg``);
labels are **study-level** and joined on ``study_id`` onto every image of the study. Values 1 / 0 / -1 /
blank as in CheXpert (blank read as 0 by default); a study with no label row, or an all-blank row, is unknown
(all NaN) under every policy. Options: ``label_source`` = ``chexpert`` (default) or ``negbio``;
``test_labels`` = ``labeler`` (default) or ``radiologist`` (2.1.0's ``mimic-cxr-2.1.0-test-set-labeled.csv``
replaces the labels of the studies it covers; its ``Airspace Opacity`` is ``lung_opacity``). Frontal =
``ViewPosition`` PA or AP (LATERAL, AP AXIAL… are not; empty is an unknown view). Official split: train /
validate (-> val) / test.
StudyDate/StudyTime are never read into the manifest.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.data.adapters._common import (find_file, parse_label_values, read_csv, require_columns,
                                            UNKNOWN_VIEWS, resolve_blanks, snake)

logger = logging.getLogger(__name__)

OBSERVATIONS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                "Pneumothorax", "Support Devices")
LABELS = tuple(snake(x) for x in OBSERVATIONS)
BLANK = "zeros"
OPTIONS: dict[str, tuple[str, ...] | None] = {"label_source": ("chexpert", "negbio"),
                                              "test_labels": ("labeler", "radiologist")}
# The reference study (arXiv 2510.07191, github.com/tayebiarasteh/vit-med), mimic: the 10 CheXpert labels of the feature loader.
PAPER_LABELS = {name: (name,) for name in (
    "cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding", "consolidation", "pneumothorax",
    "lung_opacity", "lung_lesion", "fracture")}
_FRONTAL = {"PA", "AP"}
_SPLIT = {"train": "train", "validate": "val", "test": "test"}


def _csv(root: Path, stem: str) -> Path:
    return find_file(root, [f"mimic-cxr-2.0.0-{stem}.csv.gz", f"mimic-cxr-2.0.0-{stem}.csv",
                            f"mimic-cxr-*-{stem}.csv.gz", f"mimic-cxr-*-{stem}.csv"],
                     what=f"mimic-cxr-2.0.0-{stem}.csv.gz", dataset="mimic")


def build_rows(root: Path, *, blank: str = BLANK, label_source: str = "chexpert", test_labels: str = "labeler",
               **options) -> pd.DataFrame:
    """One row per image of MIMIC-CXR-JPG, labels joined per study (see the module docstring).

    Returns
    -------
    pd.DataFrame
        (N, 9 + 14).
    """
    root = Path(root)
    meta_csv = _csv(root, "metadata")
    meta = read_csv(meta_csv, dataset="mimic")
    require_columns(meta, ["dicom_id", "subject_id", "study_id", "ViewPosition"], path=meta_csv, dataset="mimic")
    split_csv = _csv(root, "split")
    split = read_csv(split_csv, dataset="mimic")
    require_columns(split, ["dicom_id", "split"], path=split_csv, dataset="mimic")
    split_of = dict(zip(split["dicom_id"].str.strip(), split["split"].str.strip().str.lower()))

    study_labels = _study_labels(_csv(root, label_source), blank=blank)
    if test_labels == "radiologist":
        study_labels.update(_radiologist_labels(root, blank=blank))

    subject = meta["subject_id"].str.strip()
    study = meta["study_id"].str.strip()
    dicom = meta["dicom_id"].str.strip()
    unknown = np.full(len(LABELS), np.nan, dtype=np.float32)
    block = np.stack([study_labels.get(s, unknown) for s in study]) if len(meta) else np.empty((0, len(LABELS)))
    n_unlabelled = int(np.isnan(block).all(axis=1).sum())
    if n_unlabelled:
        logger.info("mimic: %d image(s) belong to studies without labels (kept, labels unknown)", n_unlabelled)
    view = meta["ViewPosition"].str.strip().str.upper()
    frame = pd.DataFrame({
        "id": dicom.to_numpy(),
        "path": [str(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg")
                 for s, t, d in zip(subject, study, dicom)],
        "patient_id": subject.to_numpy(),
        "study_id": study.to_numpy(),
        "split": [_SPLIT.get(split_of.get(d, ""), "") for d in dicom],
        "view": view.to_numpy(),
        # A blank ViewPosition is an unknown view (None): load_manifest's unknown_view rule decides.
        "frontal": np.where(view.isin(UNKNOWN_VIEWS), None, view.isin(_FRONTAL)).astype(object),
        "dataset": "mimic",
    })
    return pd.concat([frame, pd.DataFrame(block.astype(np.float32), columns=list(LABELS))], axis=1)


def _study_labels(csv: Path, *, blank: str) -> dict[str, np.ndarray]:
    raw = read_csv(csv, dataset="mimic")
    require_columns(raw, ["study_id", *OBSERVATIONS], path=csv, dataset="mimic")
    block = np.stack([parse_label_values(raw[c], column=c, source=str(csv)) for c in OBSERVATIONS], axis=1)
    return dict(zip(raw["study_id"].str.strip(), resolve_blanks(block, blank)))


def _radiologist_labels(root: Path, *, blank: str) -> dict[str, np.ndarray]:
    csv = find_file(root, ["mimic-cxr-2.1.0-test-set-labeled.csv", "mimic-cxr-*-test-set-labeled.csv*"],
                    what="mimic-cxr-2.1.0-test-set-labeled.csv (MIMIC-CXR-JPG 2.1.0)", dataset="mimic")
    raw = read_csv(csv, dataset="mimic").rename(columns={"Airspace Opacity": "Lung Opacity"})
    require_columns(raw, ["study_id", *OBSERVATIONS], path=csv, dataset="mimic")
    block = np.stack([parse_label_values(raw[c], column=c, source=str(csv)) for c in OBSERVATIONS], axis=1)
    # study ids can be written as s5xxxxxxx in some copies; the metadata uses the bare number.
    ids = raw["study_id"].str.strip().str.lstrip("s")
    return dict(zip(ids, resolve_blanks(block, blank)))
