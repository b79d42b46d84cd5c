"""VinDr-PCXR / PediCXR (``vindr-pcxr:ROOT``): ``image_labels_{train,test}.csv`` at ROOT (or ``annotations/``).

The header keeps the dataset's own spellings (``Brocho-pneumonia``, ``Diagphramatic hernia``); columns are
canonicalised (``bronchopneumonia``, ``diaphragmatic_hernia``) so either spelling reads. Values 0/1, one row per
image; ``rad_ID`` (any case) is metadata. Should an image id repeat (several readers), the rows are aggregated
per ``readers`` exactly as for VinDr-CXR. An all-zero row is "no positive label", not "No finding". Images:
``{train,test}/{image_id}.dicom``; official split train/test. There is no patient id (``study_id`` = image id,
which patient-level splits fall back to) and no view column (all images are described as PA). Ages live only in
the DICOM headers, which a manifest does not open.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from embedkit.data.adapters._common import snake
from embedkit.data.adapters.vindr import READERS, image_label_rows
from embedkit.errors import DataError

DIAGNOSES = ("No finding", "Bronchitis", "Brocho-pneumonia", "Other disease", "Bronchiolitis", "Situs inversus",
             "Pneumonia", "Pleuro-pneumonia", "Diagphramatic hernia", "Tuberculosis", "Congenital emphysema", "CPAM",
             "Hyaline membrane disease", "Mediastinal tumor", "Lung tumor")
_RENAME = {"brocho_pneumonia": "bronchopneumonia", "bronchopneumonia": "bronchopneumonia",
           "broncho_pneumonia": "bronchopneumonia", "diagphramatic_hernia": "diaphragmatic_hernia",
           "pleuro_pneumonia": "pleuropneumonia", "other_diseases": "other_disease"}
LABELS = tuple(_RENAME.get(snake(x), snake(x)) for x in DIAGNOSES)
BLANK = None
OPTIONS: dict[str, tuple[str, ...] | None] = {"readers": READERS}
# The reference study (arXiv 2510.07191, github.com/tayebiarasteh/vit-med), pedi: No finding, Pneumonia, Bronchitis/Bronchiolitis (merged).
PAPER_LABELS = {"no_finding": ("no_finding",), "pneumonia": ("pneumonia",),
                "bronchitis_bronchiolitis": ("bronchitis", "bronchiolitis")}


def build_rows(root: Path, *, blank: str | None = None, readers: str = "majority", **options) -> pd.DataFrame:
    """One row per image of VinDr-PCXR (see the module docstring).

    Returns
    -------
    pd.DataFrame
        (N, 6 + 15).
    """
    root = Path(root)
    parts = []
    for split in ("train", "test"):
        for folder in (root, root / "annotations"):
            csv = folder / f"image_labels_{split}.csv"
            if csv.is_file():
                parts.append(image_label_rows(csv, root / split, labels=LABELS, rename=_RENAME, split=split,
                                              readers=readers, dataset="vindr-pcxr"))
                break
    if not parts:
        raise DataError(f"vindr-pcxr: no image_labels_train.csv / image_labels_test.csv under '{root}'; point ROOT "
                        f"at the folder that holds them (vindr-pcxr/1.0.0).")
    return pd.concat(parts, ignore_index=True)
