"""PadChest (``padchest:ROOT``): the 36-column ``PADCHEST_chest_x_ray_images_labels_160K*.csv[.gz]``.

The leading unnamed column (a saved pandas index) is ignored. ``Labels`` is a stringified Python list parsed with
``ast.literal_eval``; entries are stripped, lower-cased and ``''`` dropped, so ``' pleural effusion'`` and
``'pleural effusion'`` are one term. The full label set is every term found in the CSV (snake_case columns, e.g.
``copd_signs``, ``normal``), positives only: a term absent from a row is 0 by default (``blank='nan'``: unknown).
A literal ``nan`` Labels cell makes the whole row unknown. Literal ``nan``/``None`` cells are missing values.
Paths are ``ROOT/{ImageDir}/{ImageID}``, falling back to the flat ``ROOT/{ImageID}`` of resized copies.
``view`` = ``Projection``; frontal = PA, AP, AP_horizontal; UNK / blank is an unknown view (``frontal`` None,
see ``unknown_view`` in :mod:`embedkit.data.manifest`). Age = StudyDate year - PatientBirth (NaN if either is
missing). There is no official split: use ``patient:SEED:...`` (patient = ``PatientID``).
"""
from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.data.adapters._common import (UNKNOWN_VIEWS, DirIndex, find_file, read_csv, require_columns,
                                            snake)

logger = logging.getLogger(__name__)

LABELS = None  # data-driven: every term in the CSV
BLANK = "zeros"
OPTIONS: dict[str, tuple[str, ...] | None] = {}
# The reference study (arXiv 2510.07191, github.com/tayebiarasteh/vit-med), padchest: 17 labels. The source terms are our reading of PadChest's vocabulary: the
# reference code's master list was built elsewhere, so the term -> label groups are an assumption (see README).
PAPER_LABELS = {
    "cardiomegaly": ("cardiomegaly",),
    "pleural_effusion": ("pleural_effusion",),
    "pneumonia": ("pneumonia",),
    "atelectasis": ("atelectasis", "laminar_atelectasis", "lobar_atelectasis", "segmental_atelectasis",
                    "round_atelectasis", "total_atelectasis"),
    "no_finding": ("normal",),
    "consolidation": ("consolidation",),
    "pneumothorax": ("pneumothorax",),
    "emphysema": ("emphysema",),
    "hernia": ("hiatal_hernia", "hernia"),
    "scoliosis": ("scoliosis",),
    "congestion": ("congestion", "hilar_congestion", "vascular_redistribution", "central_vascular_redistribution"),
    "aortic_elongation": ("aortic_elongation", "descendent_aortic_elongation", "ascendent_aortic_elongation",
                          "supra_aortic_elongation"),
    "kyphosis": ("kyphosis",),
    "copd_signs": ("copd_signs",),
    "pleural_thickening": ("pleural_thickening", "apical_pleural_thickening", "calcified_pleural_thickening"),
    "nodule_mass": ("nodule", "multiple_nodules", "mass", "pulmonary_mass"),
    "infiltrates": ("infiltrates",),
}
_FRONTAL = {"PA", "AP", "AP_HORIZONTAL"}
_MISSING = {"", "nan", "none"}


def build_rows(root: Path, *, blank: str = BLANK, **options) -> pd.DataFrame:
    """One row per image of PadChest (see the module docstring).

    Returns
    -------
    pd.DataFrame
        (N, 9 + number of distinct terms).
    """
    root = Path(root)
    csv = find_file(root, ["PADCHEST_chest_x_ray_images_labels_160K*.csv*", "PADCHEST*.csv*"],
                    what="PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]", dataset="padchest")
    raw = read_csv(csv, dataset="padchest")
    require_columns(raw, ["ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Labels"], path=csv,
                    dataset="padchest")
    terms = [_terms(text, row=i, source=csv) for i, text in enumerate(raw["Labels"])]
    vocabulary = sorted({t for row in terms if row is not None for t in row})
    column = {t: j for j, t in enumerate(vocabulary)}
    block = np.full((len(raw), len(vocabulary)), 0.0 if blank == "zeros" else np.nan, dtype=np.float32)
    for i, row in enumerate(terms):
        if row is None:
            block[i] = np.nan
            continue
        for t in row:
            block[i, column[t]] = 1.0

    index = DirIndex()
    image = raw["ImageID"].str.strip()
    folder = raw["ImageDir"].str.strip().str.replace(r"\.0$", "", regex=True)
    nested = [root / d / f for d, f in zip(folder, image)]
    paths = [str(p) if index.exists(p) or not index.exists(root / f) else str(root / f)
             for p, f in zip(nested, image)]
    projection = raw["Projection"].str.strip()
    sex = raw["PatientSex_DICOM"].str.strip().str.upper() if "PatientSex_DICOM" in raw else ""
    frame = pd.DataFrame({
        "id": image.to_numpy(),
        "path": paths,
        "patient_id": raw["PatientID"].str.strip().to_numpy(),
        "study_id": raw["StudyID"].str.strip().to_numpy(),
        "split": "",
        "view": projection.to_numpy(),
        # UNK / blank / nan Projection is an unknown view (None): load_manifest's unknown_view rule decides.
        "frontal": np.where(projection.str.upper().isin(UNKNOWN_VIEWS), None,
                            projection.str.upper().isin(_FRONTAL)).astype(object),
        "sex": np.where(pd.Series(sex).isin(["M", "F", "O"]), sex, "") if "PatientSex_DICOM" in raw else "",
        "age": _ages(raw),
        "dataset": "padchest",
    })
    return pd.concat([frame, pd.DataFrame(block, columns=vocabulary)], axis=1)


def _terms(text: str, *, row: int, source: Path) -> set[str] | None:
    text = str(text).strip()
    if text.lower() in _MISSING:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        logger.warning("padchest: row %d of %s has an unreadable Labels cell; labels unknown", row + 1, source.name)
        return None
    if not isinstance(value, (list, tuple)):
        return None
    return {snake(str(t)) for t in value if snake(str(t))}


def _ages(raw: pd.DataFrame) -> np.ndarray:
    if "PatientBirth" not in raw or "StudyDate_DICOM" not in raw:
        return np.full(len(raw), np.nan)
    birth = pd.to_numeric(raw["PatientBirth"].str.strip(), errors="coerce")
    year = pd.to_numeric(raw["StudyDate_DICOM"].str.strip().str[:4], errors="coerce")
    age = (year - birth).to_numpy(dtype=np.float64, copy=True)
    age[(age < 0) | (age > 120)] = np.nan
    return age
