"""``dicom:ROOT`` — any folder tree of DICOM files, read header-only, with every identifier pseudonymised.

Each file under ROOT (recursively, in sorted order) is opened with ``stop_before_pixels=True``; files that are not
DICOM (no ``DICM`` marker and no ``.dcm``/``.dicom`` suffix) are skipped and counted, so are files whose header
cannot be read and files that repeat another file's SOPInstanceUID (the first in sorted path order is kept; a
warning gives the count). One row per image:

- ``path``: absolute path (the folder layout is the user's; it is not read for identifiers),
- ``id``: salted hash of SOPInstanceUID, else of the path relative to ROOT,
- ``patient_id``, ``study_id``: salted hashes of PatientID and StudyInstanceUID,
- ``view`` (ViewPosition), ``sex``, ``age`` (years), ``dataset`` = ``"dicom"``.

No label columns: such a folder has none. No DICOM identifying value (names, ids, dates, UIDs, institution…)
reaches the rows; the salt is ``privacy.get_salt()`` unless given.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from embedkit.errors import DataError, DecodeError

logger = logging.getLogger(__name__)

COLUMNS = ("path", "id", "patient_id", "study_id", "view", "sex", "age", "dataset")
_SUFFIXES = {".dcm", ".dicom", ".dic"}


def build_rows(root: Path, *, salt: str | None = None, **_options: Any) -> Any:
    """Walk ``root`` and return one manifest row per DICOM image.

    Parameters
    ----------
    root : pathlib.Path
        Folder to walk (recursively; symlinked folders are not followed).
    salt : str, optional
        Salt for the hashed ids (default: ``privacy.get_salt()``).
    **_options
        Label/view policy options the adapter registry passes to every adapter; a plain DICOM folder has no
        labels, so they do not apply here.

    Returns
    -------
    pandas.DataFrame
        Columns ``path, id, patient_id, study_id, view, sex, age, dataset`` (``age`` float, NaN if unknown).
        ``frame.attrs`` holds ``n_files``, ``n_not_dicom``, ``n_unreadable``, ``n_duplicates`` and ``dropped``
        (those counts per reason, for the manifest's drop summary).

    Raises
    ------
    DataError
        If ``root`` is not a folder.
    """
    import pandas as pd

    from embedkit.data.decode import read_dicom_header
    from embedkit.data.privacy import get_salt, salted_hash, scrub_frame

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dicom:{root} is not a folder. Give the folder that holds the DICOM files.")
    salt = salt or get_salt()
    rows: list[dict[str, Any]] = []
    n_files = n_not_dicom = n_unreadable = 0
    for path in _walk(root):
        n_files += 1
        if not _looks_dicom(path):
            n_not_dicom += 1
            continue
        try:
            header = read_dicom_header(path, salt=salt)
        except DecodeError as exc:
            n_unreadable += 1
            logger.warning("%s", exc)
            continue
        rel = path.relative_to(root).as_posix()
        rows.append({
            "path": str(path.resolve()),
            "id": header["image_id"] or salted_hash(rel, salt),
            "patient_id": header["patient_id"],
            "study_id": header["study_id"],
            "view": header["view"],
            "sex": header["sex"],
            "age": header["age"],
            "dataset": "dicom",
        })
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    # A copy of an image (same SOPInstanceUID) would be counted twice and could sit in two splits: the first
    # file in sorted path order is kept, the rest are skipped and counted.
    dup = frame["id"].duplicated(keep="first").to_numpy()
    n_duplicates = int(dup.sum())
    if n_duplicates:
        logger.warning("dicom:%s: skipped %d file(s) that repeat another file's SOPInstanceUID (copies?); kept the "
                       "first in path order", root, n_duplicates)
        frame = frame[~dup].reset_index(drop=True)
    scrub_frame(frame, strict=True)  # guard: only the safe columns above may leave this function
    frame.attrs.update(n_files=n_files, n_not_dicom=n_not_dicom, n_unreadable=n_unreadable,
                       n_duplicates=n_duplicates,
                       dropped={"duplicate SOPInstanceUID": n_duplicates, "unreadable DICOM header": n_unreadable,
                                "not DICOM (file skipped)": n_not_dicom})
    if n_not_dicom or n_unreadable:
        logger.info("dicom:%s: %d files, %d not DICOM, %d unreadable", root, n_files, n_not_dicom, n_unreadable)
    return frame


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _looks_dicom(path: Path) -> bool:
    if path.suffix.lower() in _SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"
