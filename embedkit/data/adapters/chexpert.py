"""CheXpert v1.0, small or full (``chexpert:ROOT``): ``train.csv`` / ``valid.csv`` (/ ``test.csv`` if present).

ROOT may be the ``CheXpert-v1.0-small`` (or ``CheXpert-v1.0``) folder or its parent. Every ``Path`` starts with
that folder name, which is stripped before joining with the folder; ``id`` is the rest
(``train/patient00001/study1/view1_frontal.jpg``). ``patient_id`` is the 5-digit number, ``study_id`` is
``patientNNNNN/studyN``. Labels are study-level and repeated on each image row: 1.0 / 0.0 / -1.0 (uncertain) /
blank (not mentioned; read as 0 by default, ``blank='nan'`` keeps it unknown). Frontal = ``Frontal/Lateral ==
Frontal`` (keeps the LL/RL frontals); ``view`` is the ``AP/PA`` value, or ``LATERAL``. Official split:
train.csv -> train, valid.csv -> val, test.csv -> test. Sex Male/Female/Unknown -> M/F/''; Age 0 -> unknown.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.data.adapters._common import (parse_ages, parse_label_values, read_csv, require_columns,
                                            resolve_blanks, snake)
from embedkit.errors import DataError

OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")
LABELS = tuple(snake(x) for x in OBSERVATIONS)
BLANK = "zeros"
OPTIONS: dict[str, tuple[str, ...] | None] = {}
# The reference study (arXiv 2510.07191, github.com/tayebiarasteh/vit-med), chexpert: 10 labels.
PAPER_LABELS = {name: (name,) for name in (
    "cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding", "consolidation", "pneumothorax",
    "lung_opacity", "lung_lesion", "fracture")}
_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_SPLITS = (("train.csv", "train"), ("valid.csv", "val"), ("test.csv", "test"))
_SEX = {"male": "M", "female": "F"}


def dataset_folder(root: Path) -> Path:
    """The folder holding ``train.csv`` (ROOT itself or its ``CheXpert-v1.0[-small]`` child)."""
    for candidate in (root, *(root / f for f in _FOLDERS)):
        if any((candidate / name).is_file() for name, _ in _SPLITS):
            return candidate
    raise DataError(f"chexpert: no train.csv/valid.csv under '{root}' or its CheXpert-v1.0[-small] folder; "
                    f"point ROOT at the folder that holds train.csv.")


def build_rows(root: Path, *, blank: str = BLANK, **options) -> pd.DataFrame:
    """One row per image of CheXpert (see the module docstring).

    Returns
    -------
    pd.DataFrame
        (N, 9 + 14).
    """
    base = dataset_folder(Path(root))
    parts = []
    for name, split in _SPLITS:
        csv = base / name
        if not csv.is_file():
            continue
        raw = read_csv(csv, dataset="chexpert")
        require_columns(raw, ["Path", *OBSERVATIONS], path=csv, dataset="chexpert")
        parts.append(_rows(raw, base, split=split, blank=blank, source=str(csv)))
    return pd.concat(parts, ignore_index=True)


def _rows(raw: pd.DataFrame, base: Path, *, split: str, blank: str, source: str) -> pd.DataFrame:
    rel = pd.Series([_strip_prefix(p.strip()) for p in raw["Path"].tolist()], dtype=object)
    ids = re.compile(r"patient(\d+)/(study\d+)/")
    matches = [ids.search(p) for p in rel]
    if any(m is None for m in matches):
        bad = rel[[m is None for m in matches]].iloc[0]
        raise DataError(f"chexpert: Path {bad!r} in {source} does not look like "
                        f"train/patientNNNNN/studyN/viewN_frontal.jpg.")
    n = len(raw)
    orient = raw["Frontal/Lateral"].str.strip() if "Frontal/Lateral" in raw else pd.Series([""] * n)
    # The CheXlocalize test CSV has no Frontal/Lateral column; the file name suffix always agrees with it.
    frontal = np.where(orient != "", orient.str.lower() == "frontal", rel.str.endswith("_frontal.jpg"))
    appa = raw["AP/PA"].str.strip().str.upper() if "AP/PA" in raw else pd.Series([""] * n)
    view = np.where(frontal, appa.to_numpy(), "LATERAL")
    sex = raw["Sex"].str.strip().str.lower().map(_SEX).fillna("") if "Sex" in raw else ""
    age = parse_ages(raw["Age"].tolist()) if "Age" in raw else np.full(n, np.nan)
    age[age == 0] = np.nan  # three train rows say 0: unknown, not newborn
    block = np.stack([parse_label_values(raw[c], column=c, source=source) for c in OBSERVATIONS], axis=1)
    frame = pd.DataFrame({
        "id": rel.to_numpy(),
        "path": (f"{base}{os.sep}" + rel).to_numpy(),
        "patient_id": [m.group(1) for m in matches],
        "study_id": [f"patient{m.group(1)}/{m.group(2)}" for m in matches],
        "split": split,
        "view": view,
        "frontal": frontal.astype(bool),
        "sex": sex,
        "age": age,
        "dataset": "chexpert",
    })
    return pd.concat([frame, pd.DataFrame(resolve_blanks(block, blank), columns=list(LABELS))], axis=1)


def _strip_prefix(path: str) -> str:
    head, sep, tail = path.partition("/")
    return tail if sep and head in _FOLDERS else path
