"""Helpers shared by the dataset adapters: column names, label parsing, reader aggregation, file listings.

Nothing here opens an image. File existence is answered from directory listings (one ``os.scandir`` per
directory, cached) because a per-file ``stat`` over 800k files on network storage is what makes naive loaders slow.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.errors import DataError

logger = logging.getLogger(__name__)

#: Columns with a fixed meaning in adapter frames and manifest CSVs; every other column is a label.
META_COLUMNS = ("id", "path", "patient_id", "study_id", "split", "view", "frontal", "sex", "age", "dataset",
                "reader_id")

#: View strings that say nothing about the view (compared stripped, upper-case): such a row's view is unknown.
UNKNOWN_VIEWS = frozenset({"", "UNK", "UNKNOWN", "NAN", "NONE"})

#: Split names after normalisation; '' = not in any split.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test", "": ""}


def snake(name: str) -> str:
    """Canonical label column name: lower case, runs of non-alphanumerics -> one underscore.

    >>> snake("Pleural Effusion"), snake("Nodule/Mass"), snake("Pleural_Thickening")
    ('pleural_effusion', 'nodule_mass', 'pleural_thickening')
    """
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def find_file(root: Path, names: Sequence[str], *, what: str, dataset: str) -> Path:
    """The first of ``names`` (relative to ``root``, glob patterns allowed) that exists, else a DataError."""
    for name in names:
        hits = sorted(root.glob(name))
        if hits:
            return hits[0]
    raise DataError(f"{dataset}: no {what} under '{root}' (looked for {', '.join(names)}); "
                    f"point ROOT at the dataset's top folder.")


def read_csv(path: Path, *, dataset: str, **kw) -> pd.DataFrame:
    """Read a CSV (``.gz`` too) as strings with no NA guessing; malformed files become one-line DataErrors."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{dataset}: cannot read '{path}': {first}") from None


def require_columns(frame: pd.DataFrame, columns: Iterable[str], *, path: Path, dataset: str) -> None:
    """DataError naming the first missing column (the reference's exact header is the fix)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{dataset}: '{path}' lacks column(s) {missing}; found {list(frame.columns)[:12]}.")


def parse_label_values(values: pd.Series, *, column: str, source: str, first_line: int = 2,
                       ids: Sequence[str] | None = None) -> np.ndarray:
    """Strings ``1``/``1.0``/``0``/``-1``/blank -> float32 1/0/-1/NaN; anything else is a DataError.

    One bad cell stops the read (it never drops the label or the row): the message names the column, the
    file line (``first_line`` is the line of the first value: 2 under a header row), the row id when ``ids``
    is given, and the value.

    Parameters
    ----------
    values : pd.Series
        (N,) str cells of one label column.
    ids : sequence of str, optional
        (N,) row ids, named in the message.

    Returns
    -------
    np.ndarray
        (N,) float32.
    """
    raw = values.to_numpy(dtype=object)
    # to_numeric runs in C; only the cells it could not read are looked at one by one.
    out = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    unread = np.flatnonzero(np.isnan(out))
    unread = unread[~pd.Series(raw[unread], dtype=object).isin(_BLANK_TEXT).to_numpy()]
    bad = [i for i in unread if str(raw[i]).strip().lower() not in _BLANK_TEXT]
    bad += np.flatnonzero(~np.isnan(out) & ~np.isin(out, (1.0, 0.0, -1.0))).tolist()
    if bad:
        i = int(min(bad))
        where = f"line {i + first_line}" + (f", id {str(ids[i])!r}" if ids is not None else "")
        raise DataError(f"{source}: label column '{column}' has value {raw[i]!r} ({where}); "
                        f"labels must be 1, 0, -1 or blank. Fix the cell ({len(bad)} bad cell(s) in this column).")
    return out.astype(np.float32)


_BLANK_TEXT = frozenset({"", "nan", "none", "NaN", "None", "NA"})


def resolve_blanks(block: np.ndarray, blank: str) -> np.ndarray:
    """Blank (NaN) cells -> 0 under ``blank='zeros'``; rows that are blank everywhere stay unknown.

    Parameters
    ----------
    block : np.ndarray
        (N, K) float32 raw labels, NaN = blank.
    blank : {'zeros', 'nan'}

    Returns
    -------
    np.ndarray
        (N, K) float32.
    """
    if blank == "nan":
        return block
    out = block.copy()
    # A row with no mention at all carries no information (e.g. a MIMIC report without findings): not "all negative".
    labelled = ~np.isnan(block).all(axis=1)
    fill = np.isnan(out) & labelled[:, None]
    out[fill] = 0.0
    return out


def aggregate_readers(frame: pd.DataFrame, labels: Sequence[str], *, mode: str, key: str = "image_id",
                      reader: str = "reader_id", no_finding: str | None = "no_finding") -> pd.DataFrame:
    """Aggregate one-row-per-(image, reader) labels into one row per image.

    ``majority``: each column is 1 when more than half of the image's readers said 1 (each column, No finding
    included, is voted on its own). ``any``: each finding is the union over readers, and No finding is 1 only when
    the union holds no finding. ``per-reader``: no aggregation (one row per image and reader).

    Parameters
    ----------
    frame : pd.DataFrame
        Rows per (image, reader) with float label columns ``labels``.
    """
    if mode == "per-reader":
        return frame
    values = frame[list(labels)].astype(np.float32)
    grouped = values.groupby(frame[key].to_numpy(), sort=False)
    if mode == "majority":
        votes = grouped.sum(min_count=1)
        n = grouped.count()
        agg = (votes * 2 > n).astype(np.float32).where(n > 0)
    elif mode == "any":
        agg = grouped.max()
        if no_finding and no_finding in agg.columns:
            findings = [c for c in labels if c != no_finding]
            agg[no_finding] = (agg[findings].fillna(0).max(axis=1) < 1).astype(np.float32)
    else:
        raise DataError(f"The 'readers' option must be one of majority, any, per-reader. Got {mode!r}.")
    # Whole first rows for the metadata (groupby().first() would mix columns of different rows).
    first = frame.drop(columns=list(labels) + [reader], errors="ignore").drop_duplicates(subset=key)
    return first.set_index(key, drop=False).join(agg).reset_index(drop=True)


def merge_labels(block: np.ndarray) -> np.ndarray:
    """Merge source columns into one: 1 if any is 1, else -1 if any is -1, else 0 if any is 0, else NaN.

    Parameters
    ----------
    block : np.ndarray
        (N, M) float32, M source columns.

    Returns
    -------
    np.ndarray
        (N,) float32.
    """
    out = np.full(block.shape[0], np.nan, dtype=np.float32)
    for value in (0.0, -1.0, 1.0):  # later values win: positive > uncertain > negative > unknown
        out[(block == value).any(axis=1)] = value
    return out


def parse_ages(values: Sequence[str]) -> np.ndarray:
    """Vectorised :func:`parse_age`: plain numbers in C, the rest (``058Y``, ``007M``) one by one.

    Returns
    -------
    np.ndarray
        (N,) float64 years, NaN where unknown.
    """
    raw = np.asarray(values, dtype=object)
    out = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    out[(out < 0) | (out > 120)] = np.nan
    for i in np.flatnonzero(np.isnan(out)):
        out[i] = parse_age(raw[i])
    return out


def parse_age(text: str) -> float:
    """Ages such as ``58``, ``058Y``, ``007M``, ``012D``, ``58.0`` -> years (float); blank/odd -> NaN."""
    text = str(text).strip().upper()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([YMWD]?)", text)
    if not match:
        return float("nan")
    value = float(match.group(1))
    years = value / {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}[match.group(2)]
    return years if 0 <= years <= 120 else float("nan")


class DirIndex:
    """Answers "does this file exist?" from cached directory listings (one scandir per directory).

    Examples
    --------
    >>> idx = DirIndex()
    >>> idx.exists("/nonexistent/file.png")
    False
    """

    def __init__(self) -> None:
        self._listing: dict[str, frozenset[str]] = {}

    def listing(self, directory: str | os.PathLike) -> frozenset[str]:
        """Names of the plain files (and links) in ``directory``; empty when it does not exist."""
        key = os.fspath(directory)
        found = self._listing.get(key)
        if found is not None:
            return found
        try:
            with os.scandir(key) as it:
                found = frozenset(e.name for e in it if not e.is_dir())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            found = frozenset()
        self._listing[key] = found
        return found

    def exists(self, path: str | os.PathLike) -> bool:
        """True when ``path`` is listed in its directory."""
        head, tail = os.path.split(os.fspath(path))
        return tail in self.listing(head)

    def exists_many(self, paths: Iterable[str]) -> np.ndarray:
        """(N,) bool, one listing per distinct directory (no per-file stat)."""
        parts = [os.fspath(p).rpartition(os.sep) for p in paths]
        out = np.zeros(len(parts), dtype=bool)
        for i, (head, _, tail) in enumerate(parts):
            out[i] = tail in self.listing(head or os.curdir)
        return out


def walk_files(root: Path, *, suffixes: Sequence[str]) -> dict[str, str]:
    """Basename -> absolute path of every file under ``root`` with one of ``suffixes`` (one recursive scandir).

    Used where a dataset's CSV stores bare file names (NIH). The first path found wins for a repeated name.
    """
    found: dict[str, str] = {}
    stack = [os.fspath(root)]
    lowered = tuple(s.lower() for s in suffixes)
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=True):
                        stack.append(entry.path)
                    elif entry.name.lower().endswith(lowered):
                        found.setdefault(entry.name, entry.path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return found


def check_options(options: Mapping[str, object], allowed: Mapping[str, Sequence[str] | None], *,
                  dataset: str) -> None:
    """DataError for an option the adapter does not take, or a value outside its choices."""
    for key, value in options.items():
        if key not in allowed:
            takes = ", ".join(sorted(allowed)) or "no options"
            raise DataError(f"Adapter '{dataset}' takes no option '{key}'; it takes: {takes}.")
        choices = allowed[key]
        if choices is not None and value not in choices:
            raise DataError(f"The '{key}' option of adapter '{dataset}' must be one of {', '.join(choices)}. "
                            f"Got {value!r}.")
