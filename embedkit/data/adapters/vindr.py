"""VinDr-CXR (``vindr:ROOT``), PhysioNet and Kaggle layouts, with explicit reader aggregation.

PhysioNet 1.0.0: ``annotations/image_labels_{train,test}.csv`` (28 labels, 0/1). Train has one row per
(image, radiologist) with a reader column matched case-insensitively (``rad_id``/``rad_ID``); test is the
5-reader consensus, one row per image, and spells ``Other disease`` where train says ``Other diseases`` (both
-> ``other_diseases``). Kaggle (VinBigData): ``train.csv`` with one row per (image, class, reader) box
(``image_id,class_name,class_id,rad_id,x_min,…``); an image-reader's labels are the classes it named (14 local
+ ``No finding``); the challenge test images have no labels. Images: ``{train,test}/{image_id}.dicom``.

``readers``: ``majority`` (default; a label is 1 when more than half of the image's readers said 1, each column
voted on its own), ``any`` (union of the readers' findings; No finding only when the union is empty) or
``per-reader`` (one row per image and reader, ``id`` = ``image_id:reader``, ``reader_id`` set). There is no
patient id and no view column (all images are described as PA); the official split is train/test.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.data.adapters._common import (aggregate_readers, parse_label_values, read_csv, require_columns,
                                            snake)
from embedkit.errors import DataError

logger = logging.getLogger(__name__)

LOCAL = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
         "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
         "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
         "Pulmonary fibrosis", "Rib fracture", "Other lesion")
GLOBAL = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
LABELS = tuple(snake(x) for x in LOCAL + GLOBAL)
KAGGLE_CLASSES = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
                  "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
                  "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding")
KAGGLE_LABELS = tuple(snake(x) for x in KAGGLE_CLASSES)
BLANK = None
READERS = ("majority", "any", "per-reader")
OPTIONS: dict[str, tuple[str, ...] | None] = {"readers": READERS}
# The reference study (arXiv 2510.07191, github.com/tayebiarasteh/vit-med), vindr: 11 labels.
PAPER_LABELS = {name: (name,) for name in (
    "cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding", "consolidation", "pneumothorax",
    "pleural_thickening", "lung_opacity", "pulmonary_fibrosis", "nodule_mass")}
_RENAME = {"other_disease": "other_diseases"}


def build_rows(root: Path, *, blank: str | None = None, readers: str = "majority", **options) -> pd.DataFrame:
    """One row per image (or per image and reader) of VinDr-CXR (see the module docstring).

    Returns
    -------
    pd.DataFrame
        (N, 6 + 28) for the PhysioNet layout, (N, 6 + 15) for Kaggle.
    """
    root = Path(root)
    folder = root / "annotations"
    if (folder / "image_labels_train.csv").is_file() or (folder / "image_labels_test.csv").is_file():
        parts = [image_label_rows(folder / f"image_labels_{s}.csv", root / s, labels=LABELS, rename=_RENAME,
                                  split=s, readers=readers, dataset="vindr")
                 for s in ("train", "test") if (folder / f"image_labels_{s}.csv").is_file()]
        return pd.concat(parts, ignore_index=True)
    if (root / "train.csv").is_file():
        return _kaggle_rows(root, readers=readers)
    raise DataError(f"vindr: no annotations/image_labels_train.csv (PhysioNet) or train.csv (Kaggle) under "
                    f"'{root}'; point ROOT at the dataset's top folder.")


def image_label_rows(csv: Path, images: Path, *, labels: Sequence[str], rename: Mapping[str, str], split: str,
                     readers: str, dataset: str) -> pd.DataFrame:
    """Rows of one ``image_labels_*.csv`` (VinDr-CXR and VinDr-PCXR share the format), readers aggregated.

    Duplicated image ids (several readers) are aggregated per ``readers``; a file with one row per image is
    read as given.
    """
    raw = read_csv(csv, dataset=dataset)
    reader_col = next((c for c in raw.columns if c.strip().lower() == "rad_id"), None)
    require_columns(raw, ["image_id"], path=csv, dataset=dataset)
    by_name = {rename.get(snake(c), snake(c)): c for c in raw.columns if c not in ("image_id", reader_col)}
    missing = [name for name in labels if name not in by_name]
    if missing:
        raise DataError(f"{dataset}: '{csv}' lacks label column(s) for {missing}; found {sorted(by_name)[:10]}.")
    extra = sorted(set(by_name) - set(labels))
    if extra:
        logger.warning("%s: ignored unknown column(s) %s in %s", dataset, extra[:5], csv.name)
    image = raw["image_id"].str.strip()
    block = {name: parse_label_values(raw[by_name[name]], column=by_name[name], source=str(csv)) for name in labels}
    frame = pd.DataFrame({"image_id": image.to_numpy(),
                          "reader_id": raw[reader_col].str.strip().to_numpy() if reader_col else ""})
    frame = pd.concat([frame, pd.DataFrame(block)], axis=1)
    return _finish(frame, images, labels=labels, split=split, readers=readers, dataset=dataset)


def _kaggle_rows(root: Path, *, readers: str) -> pd.DataFrame:
    csv = root / "train.csv"
    raw = read_csv(csv, dataset="vindr")
    reader_col = next((c for c in raw.columns if c.strip().lower() == "rad_id"), None)
    require_columns(raw, ["image_id", "class_name"], path=csv, dataset="vindr")
    if reader_col is None:
        raise DataError(f"vindr: '{csv}' has no rad_id column; is this the VinBigData train.csv?")
    names = raw["class_name"].str.strip().map(snake)
    unknown = sorted(set(names) - set(KAGGLE_LABELS))
    if unknown:
        raise DataError(f"vindr: '{csv}' has unknown class_name(s) {unknown[:5]}; expected {KAGGLE_CLASSES}.")
    pairs = pd.DataFrame({"image_id": raw["image_id"].str.strip(), "reader_id": raw[reader_col].str.strip(),
                          "label": names})
    wide = pd.crosstab([pairs["image_id"], pairs["reader_id"]], pairs["label"]).clip(upper=1)
    wide = wide.reindex(columns=list(KAGGLE_LABELS), fill_value=0).astype(np.float32)
    frame = wide.reset_index()
    frame.columns.name = None
    # crosstab sorts; restore the CSV's order of images so ids follow the file.
    order = {k: i for i, k in enumerate(dict.fromkeys(pairs["image_id"]))}
    frame = frame.sort_values("image_id", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return _finish(frame, root / "train", labels=KAGGLE_LABELS, split="train", readers=readers, dataset="vindr")


def _finish(frame: pd.DataFrame, images: Path, *, labels: Sequence[str], split: str, readers: str,
            dataset: str) -> pd.DataFrame:
    if readers not in READERS:
        raise DataError(f"The 'readers' option must be one of {', '.join(READERS)}. Got {readers!r}.")
    repeated = frame["image_id"].duplicated().any()
    if repeated and readers != "per-reader":
        frame = aggregate_readers(frame, labels, mode=readers, key="image_id")
    ids = frame["image_id"]
    if readers == "per-reader" and repeated:
        ids = ids + ":" + frame["reader_id"]
    head = pd.DataFrame({
        "id": ids.to_numpy(),
        "path": [str(images / f"{i}.dicom") for i in frame["image_id"]],
        "study_id": frame["image_id"].to_numpy(),
        "split": split,
        "view": "PA",
        "frontal": True,
        "dataset": dataset,
    })
    if readers == "per-reader" and repeated:
        head["reader_id"] = frame["reader_id"].to_numpy()
    return pd.concat([head, frame[list(labels)].reset_index(drop=True).astype(np.float32)], axis=1)
