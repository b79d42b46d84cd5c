"""Synthetic chest-radiograph phantoms with labelled findings, for tests and the demo.

Each image is drawn in float [0, 1] (0 = air) from a few analytic shapes: a soft-tissue torso on air, two dark
lung fields with diaphragm domes, a bright mediastinum and heart, rib arcs across the lungs, smooth exposure
variation and noise. Findings, of deliberately different sizes:

- ``cardiomegaly`` (large structure, a patient trait: all of a patient's images agree): the heart's width grows
  from ~0.27 to ~0.47 of the chest width, a strong global intensity/shape signal;
- ``effusion`` (medium): a dense basal opacity with a meniscus filling the lower part of one lung;
- ``pneumothorax`` (medium, subtle): an apical/lateral rim of one lung without lung markings (darker, no ribs
  visible through tissue) bounded by a thin pleural line;
- ``nodule`` (small focal): a round opacity of radius ~``size/256`` pixels (about 4 px at 1024 px, so a few
  pixels wide; sub-pixel and nearly invisible at 64 px, by design).

Files: ``images/<id>.png`` (8-bit), ``images/<id>_16.png`` (16-bit, full-range uint16) and ``images/<id>.dcm``
(DX, 12 bits stored, rescale slope/intercept, a window that covers the data; every second DICOM is MONOCHROME1).
Formats rotate over the images. DICOMs carry FAKE identifying tags (``PatientName`` ``PHANTOM^ALICE`` …,
``PatientID`` ``PHANTOM-ID-…``, birth date, institution, accession) so that privacy tests can search outputs for
them; the manifest never contains them.

Determinism: everything derives from ``seed`` (per image from ``(seed, index)``), UIDs come from
``pydicom.uid.generate_uid(entropy_srcs=...)`` and no clock is read, so the same arguments give the same bytes.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import DataError

logger = logging.getLogger(__name__)

FINDINGS = ("cardiomegaly", "effusion", "pneumothorax", "nodule")
PREVALENCE = {"cardiomegaly": 0.35, "effusion": 0.25, "pneumothorax": 0.2, "nodule": 0.3}
FORMATS = ("png8", "png16", "dicom")
FAKE_NAMES = ("ALICE", "BOB", "CAROL", "DAVE", "ERIN", "FRANK", "GRACE", "HEIDI", "IVAN", "JUDY")
MANIFEST_NAME = "manifest.csv"
_SPLITS = ("train", "val", "test")


def make_phantoms(
    out_dir: str | os.PathLike[str],
    *,
    n: int = 200,
    size: int = 128,
    seed: int = 0,
    images_per_patient: int = 3,
    formats: Sequence[str] = FORMATS,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Path:
    """Write ``n`` phantom radiographs and their manifest; return the manifest path.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created; existing phantom files are overwritten).
    n : int
        Number of images (>= 1).
    size : int
        Image side in pixels (>= 16); images are square.
    seed : int
        Seed of everything: same arguments, same bytes.
    images_per_patient : int
        Images per patient (the last patient may have fewer); each image is its own study.
    formats : sequence of {"png8", "png16", "dicom"}
        File formats, assigned to images in turn.
    split_fractions : (float, float, float)
        Patient-level train/val/test fractions.

    Returns
    -------
    pathlib.Path
        ``out_dir/manifest.csv``: columns ``path`` (relative to the CSV), ``id``, ``patient_id``, ``study_id``,
        ``split``, ``view``, ``sex``, ``age``, ``dataset`` (``phantom``) and one 1/0 column per finding
        (``cardiomegaly``, ``effusion``, ``pneumothorax``, ``nodule``).

    Raises
    ------
    DataError
        For bad arguments.

    Examples
    --------
    >>> manifest = make_phantoms("phantoms", n=30, size=64)  # doctest: +SKIP
    """
    _check(n, size, images_per_patient, formats, split_fractions)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_patients = math.ceil(n / images_per_patient)
    patients = _patients(n_patients, seed, split_fractions)
    rows: list[dict[str, Any]] = []
    n_dicom = 0
    for i in range(n):
        pat = patients[i // images_per_patient]
        rng = np.random.default_rng([seed, i, 1])
        labels = {
            "cardiomegaly": pat["cardiomegaly"],
            **{f: int(rng.random() < PREVALENCE[f]) for f in FINDINGS if f != "cardiomegaly"},
        }
        view = "PA" if rng.random() < 0.75 else "AP"
        img = render(size, rng=rng, anatomy=pat["anatomy"], labels=labels, view=view)
        fmt = formats[i % len(formats)]
        image_id = f"ph{seed}-{i:05d}"
        study_id = f"{pat['patient_id']}-s{i % images_per_patient}"
        if fmt == "png8":
            rel = f"images/{image_id}.png"
            _write_png(out / rel, np.rint(img * 255).astype(np.uint8))
        elif fmt == "png16":
            rel = f"images/{image_id}_16.png"
            _write_png(out / rel, np.rint(img * 65535).astype(np.uint16))
        else:
            rel = f"images/{image_id}.dcm"
            _write_dicom(out / rel, img, seed=seed, index=i, patient=pat, view=view,
                         monochrome1=n_dicom % 2 == 1)
            n_dicom += 1
        rows.append({
            "path": rel, "id": image_id, "patient_id": pat["patient_id"], "study_id": study_id,
            "split": pat["split"], "view": view, "sex": pat["sex"], "age": pat["age"], "dataset": "phantom",
            **labels,
        })
    manifest = out / MANIFEST_NAME
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    logger.info("Wrote %d phantom images of %d patients to %s", n, n_patients, out)
    return manifest


def _check(n: int, size: int, per_patient: int, formats: Sequence[str], fractions: Sequence[float]) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"The 'n' parameter of make_phantoms must be an int >= 1. Got {n!r}.")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise DataError(f"The 'size' parameter of make_phantoms must be an int >= 16. Got {size!r}.")
    if not isinstance(per_patient, (int, np.integer)) or per_patient < 1:
        raise DataError(f"The 'images_per_patient' parameter of make_phantoms must be >= 1. Got {per_patient!r}.")
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise DataError(f"The 'formats' parameter of make_phantoms must be among {', '.join(FORMATS)}. Got {bad}.")
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(f"The 'split_fractions' of make_phantoms must be 3 values >= 0 summing to 1. Got {fractions}.")


def _patients(n_patients: int, seed: int, fractions: Sequence[float]) -> list[dict[str, Any]]:
    rng = np.random.default_rng([seed, 0])
    order = rng.permutation(n_patients)
    n_train = round(fractions[0] * n_patients)
    n_val = round(fractions[1] * n_patients)
    if n_patients >= 3:  # every split non-empty when possible
        n_val = max(1, n_val) if fractions[1] > 0 else 0
        n_train = min(max(1, n_train), n_patients - n_val - (1 if fractions[2] > 0 else 0))
    split_of = np.empty(n_patients, dtype=object)
    split_of[order[:n_train]] = "train"
    split_of[order[n_train:n_train + n_val]] = "val"
    split_of[order[n_train + n_val:]] = "test"
    out = []
    for p in range(n_patients):
        prng = np.random.default_rng([seed, p, 2])
        age = int(prng.integers(18, 90))
        out.append({
            "patient_id": f"pt{seed}-{p:04d}",
            "split": str(split_of[p]),
            "sex": "F" if prng.random() < 0.5 else "M",
            "age": age,
            "cardiomegaly": int(prng.random() < PREVALENCE["cardiomegaly"]),
            "anatomy": {
                "torso": float(prng.uniform(0.40, 0.46)),     # half-width of the torso (fraction of the side)
                "lung_w": float(prng.uniform(0.15, 0.18)),    # half-width of one lung
                "lung_h": float(prng.uniform(0.30, 0.35)),    # half-height of the lungs
                "dome": float(prng.uniform(0.70, 0.76)),      # diaphragm level
                "heart_x": float(prng.uniform(0.52, 0.56)),   # heart centre, a little to the patient's left
                "ribs": float(prng.uniform(0.085, 0.1)),      # rib spacing
            },
            "fake": {
                "name": f"PHANTOM^{FAKE_NAMES[p % len(FAKE_NAMES)]}",
                "id": f"PHANTOM-ID-{seed:03d}-{p:05d}",
                "birth": f"{2020 - age:04d}0{1 + p % 9}1{p % 10}",
            },
        })
    return out


def render(
    size: int,
    *,
    rng: np.random.Generator,
    anatomy: dict[str, float],
    labels: dict[str, int],
    view: str = "PA",
) -> np.ndarray:
    """Draw one phantom radiograph.

    Parameters
    ----------
    size : int
        Side S in pixels.
    rng : numpy.random.Generator
        Per-image randomness (pose, exposure, finding placement, noise).
    anatomy : dict
        Patient anatomy (see ``_patients``).
    labels : dict
        Finding name → 0/1.
    view : {"PA", "AP"}
        AP images are magnified a little (heart and mediastinum wider), as in real AP films.

    Returns
    -------
    numpy.ndarray
        float64, shape (S, S), values in [0, 1], 0 = air.
    """
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) / (s - 1)
    dx, dy = rng.normal(0.0, 0.012, 2)
    x, y = xx - dx, yy - dy
    mag = 1.06 if view == "AP" else 1.0
    a = anatomy
    img = np.full((s, s), 0.04)

    torso = ((x - 0.5) / (a["torso"] * mag)) ** 2 + ((y - 0.62) / 0.62) ** 2 < 1.0
    img[torso] = 0.55
    img += 0.08 * np.clip(1 - np.abs(y - 0.08) / 0.1, 0, 1) * torso  # shoulders

    lungs = np.zeros((s, s), dtype=bool)
    centres = (0.5 - a["lung_w"] - 0.035, 0.5 + a["lung_w"] + 0.035)
    for k, cx in enumerate(centres):
        field = ((x - cx) / a["lung_w"]) ** 2 + ((y - 0.42) / a["lung_h"]) ** 2 < 1.0
        dome = y < a["dome"] - 0.06 * ((x - cx) / a["lung_w"]) ** 2 - (0.015 if k == 0 else 0.0)
        lungs |= field & dome
    img[lungs] = 0.2

    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (y - 0.18 * (x - 0.5) ** 2 * 4) / a["ribs"])
    img += 0.09 * (ribs > 0.8) * lungs

    spine = (np.abs(x - 0.5) < 0.045 * mag) & torso
    img[spine] = np.maximum(img[spine], 0.68)
    medi = (np.abs(x - 0.5) < 0.06 * mag) & (y > 0.12) & (y < 0.55)
    img[medi] = np.maximum(img[medi], 0.7)

    grow = a["torso"] / 0.43 * mag
    heart_w = (0.24 if labels["cardiomegaly"] else 0.155) * grow
    heart_h = (0.15 if labels["cardiomegaly"] else 0.12) * mag
    heart = ((x - a["heart_x"]) / heart_w) ** 2 + ((y - 0.57) / heart_h) ** 2 < 1.0
    img[heart & torso] = np.maximum(img[heart & torso], 0.78)

    if labels.get("effusion"):
        k = int(rng.integers(0, 2))
        cx = centres[k]
        level = a["dome"] - rng.uniform(0.1, 0.16)
        meniscus = level + 0.05 * ((x - cx) / a["lung_w"]) * (1 if k == 0 else -1)
        fluid = lungs & (np.abs(x - cx) < a["lung_w"]) & (y > meniscus)
        img[fluid] = 0.62
    if labels.get("pneumothorax"):
        k = int(rng.integers(0, 2))
        cx = centres[k]
        r = ((x - cx) / a["lung_w"]) ** 2 + ((y - 0.42) / a["lung_h"]) ** 2
        rim = lungs & (r > 0.7) & (y < 0.5)
        img[rim] = 0.08
        line = lungs & (np.abs(r - 0.7) < 0.04) & (y < 0.5)
        img[line] = 0.4
    if labels.get("nodule"):
        inside = np.argwhere(lungs & ~heart)
        cy, cx_px = inside[int(rng.integers(0, len(inside)))] if len(inside) else (s // 3, s // 3)
        radius = max(s / 256.0, 0.6)
        d2 = (np.arange(s)[:, None] - cy) ** 2 + (np.arange(s)[None, :] - cx_px) ** 2
        img += 0.35 * np.exp(-d2 / (2 * radius**2))

    gain = rng.uniform(0.9, 1.05)
    gradient = 1.0 + rng.uniform(-0.06, 0.06) * (xx - 0.5) + rng.uniform(-0.04, 0.04) * (yy - 0.5)
    img = img * gain * gradient + rng.normal(0.0, 0.02, (s, s))
    return np.clip(img, 0.0, 1.0)


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    # Pillow writes no timestamp into PNGs and zlib is deterministic: same array, same bytes.
    Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)


def _write_dicom(path: Path, img: np.ndarray, *, seed: int, index: int, patient: dict[str, Any], view: str,
                 monochrome1: bool) -> None:
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["embedkit-phantom", str(seed), kind, str(index)])

    slope, intercept = (0.5, 100.0) if index % 4 < 2 else (1.0, 0.0)
    v = 1.0 - img if monochrome1 else img
    stored = np.rint(300 + v * 3500).astype(np.uint16)  # 12 bits stored: 300..3800
    lo, hi = 300 * slope + intercept, 3800 * slope + intercept

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = "DX"
    # FAKE identifying values, present on purpose: privacy tests search every output for them.
    ds.PatientName = patient["fake"]["name"]
    ds.PatientID = patient["fake"]["id"]
    ds.PatientBirthDate = patient["fake"]["birth"]
    ds.PatientSex = patient["sex"]
    ds.PatientAge = f"{patient['age']:03d}Y"
    ds.StudyDate = "20200102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"PHACC{seed:03d}{index:06d}"
    ds.InstitutionName = "PHANTOM GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "PHANTOM^DOCTOR"
    ds.StudyID = f"PHSTUDY{index:05d}"
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    ds.WindowCenter = (lo + hi) / 2
    ds.WindowWidth = hi - lo
    ds.VOILUTFunction = "LINEAR"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def summarize(manifest: str | os.PathLike[str]) -> dict[str, Any]:
    """Rows, patients and per-split label prevalence of a phantom manifest (for the CLI summary).

    Parameters
    ----------
    manifest : path-like
        A manifest written by ``make_phantoms``.

    Returns
    -------
    dict
        ``{"manifest", "rows", "patients", "splits": {split: {"rows", "patients", "prevalence": {finding: p}}}}``.
    """
    import pandas as pd

    frame = pd.read_csv(manifest)
    labels = [c for c in FINDINGS if c in frame.columns]
    splits = {}
    for name in _SPLITS:
        part = frame[frame["split"] == name]
        splits[name] = {
            "rows": int(len(part)),
            "patients": int(part["patient_id"].nunique()),
            "prevalence": {c: (round(float(part[c].mean()), 4) if len(part) else None) for c in labels},
        }
    return {"manifest": str(manifest), "rows": int(len(frame)), "patients": int(frame["patient_id"].nunique()),
            "splits": splits}
