"""NIH ChestX-ray14 (``nih:ROOT``): ``Data_Entry_2017*.csv`` + PNGs found anywhere under ROOT by file name.

Reads both CSV variants: v2020 (11 fields, ``Patient Gender`` or ``Patient Sex``, integer ages) and the 2017 copy
(trailing comma, zero-padded ids, ages like ``058Y``). ``Finding Labels`` is split on ``|`` into whole tokens
(absence = negative: the dataset has no uncertainty and no blanks); ``No Finding`` becomes the ``no_finding``
column. Official split: names in ``test_list.txt`` -> test, in ``train_val_list.txt`` -> train (NIH publishes no
validation list); the leakage audit checks the two lists are patient-disjoint. All images are frontal (PA/AP).
The CSV stores bare file names, so images are located with one recursive listing of ROOT (the Box release's
``images/`` and the Kaggle ``images_0NN/images/`` layouts both work).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.data.adapters._common import find_file, parse_ages, read_csv, require_columns, snake, walk_files
from embedkit.errors import DataError

logger = logging.getLogger(__name__)

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
LABELS = tuple(snake(x) for x in FINDINGS) + ("no_finding",)
BLANK = None
OPTIONS: dict[str, tuple[str, ...] | None] = {}
# The reference study (arXiv 2510.07191, github.com/tayebiarasteh/vit-med), cxr14: 14 labels, no infiltration, no_finding included.
PAPER_LABELS = {name: (name,) for name in (
    "cardiomegaly", "effusion", "pneumonia", "atelectasis", "no_finding", "consolidation", "pneumothorax",
    "fibrosis", "emphysema", "hernia", "pleural_thickening", "edema", "nodule", "mass")}
_TOKENS = {**{x: snake(x) for x in FINDINGS}, "No Finding": "no_finding"}


def build_rows(root: Path, *, blank: str | None = None, **options) -> pd.DataFrame:
    """One row per image of ChestX-ray14 (see the module docstring).

    Returns
    -------
    pd.DataFrame
        (N, 9 + 15) rows in CSV order.
    """
    root = Path(root)
    csv = find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017*.csv", "*/Data_Entry_2017*.csv"],
                    what="Data_Entry_2017*.csv", dataset="nih")
    raw = read_csv(csv, dataset="nih")
    if "Patient Sex" in raw.columns and "Patient Gender" not in raw.columns:
        raw = raw.rename(columns={"Patient Sex": "Patient Gender"})
    require_columns(raw, ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
                          "View Position"], path=csv, dataset="nih")
    names = raw["Image Index"].str.strip()
    found = walk_files(root, suffixes=(".png",))
    paths = [found.get(n, str(root / "images" / n)) for n in names]

    labels = np.zeros((len(raw), len(LABELS)), dtype=np.float32)
    column = {name: j for j, name in enumerate(LABELS)}
    unknown: set[str] = set()
    for i, text in enumerate(raw["Finding Labels"]):
        for token in (t.strip() for t in str(text).split("|")):
            if token in _TOKENS:
                labels[i, column[_TOKENS[token]]] = 1.0
            elif token:
                unknown.add(token)
    if unknown:
        logger.warning("nih: ignored unknown finding token(s) %s in %s", sorted(unknown)[:5], csv.name)

    patient = raw["Patient ID"].str.strip().str.lstrip("0").replace("", "0")
    frame = pd.DataFrame({
        "id": names.to_numpy(),
        "path": paths,
        "patient_id": patient.to_numpy(),
        "split": _official_split(root, names, csv),
        "view": raw["View Position"].str.strip().str.upper().to_numpy(),
        "frontal": True,
        "sex": raw["Patient Gender"].str.strip().str.upper().str[:1].to_numpy(),
        "age": parse_ages(raw["Patient Age"].tolist()),
        "dataset": "nih",
    })
    return pd.concat([frame, pd.DataFrame(labels, columns=list(LABELS))], axis=1)


def _official_split(root: Path, names: pd.Series, csv: Path) -> np.ndarray:
    split = np.full(len(names), "", dtype=object)
    lists = {}
    for key, file in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        hits = [p for p in (root / file, csv.parent / file) if p.is_file()]
        if hits:
            lists[key] = {line.strip() for line in hits[0].read_text().splitlines() if line.strip()}
    if not lists:
        return split
    both = lists.get("train", set()) & lists.get("test", set())
    if both:
        raise DataError(f"nih: {len(both)} image(s) are in both train_val_list.txt and test_list.txt; "
                        f"fix the split lists.")
    for key, members in lists.items():
        split[names.isin(members).to_numpy()] = key
    return split
