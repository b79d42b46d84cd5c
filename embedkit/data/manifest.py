"""Manifests: the table of images (and their labels, patients, splits) that every command reads.

Manifest CSV format
-------------------
One row per image, UTF-8, comma-separated, header required. Columns (any order; only ``path`` is required):

=============  ===============================================================================================
``path``       image file, relative to the CSV's folder or absolute
``id``         unique row id (default: ``path`` as written); becomes the store's row id
``patient_id`` patient identifier (pseudonymous); the unit of patient-level splits and of the leakage audit
``study_id``   study identifier; also audited for leakage
``split``      ``train`` / ``val`` / ``test`` or blank (``valid``, ``validate``, ``validation`` read as ``val``)
``view``       the dataset's view string (PA, AP, LATERAL, LL, AP_horizontal, ...)
``frontal``    1 / 0 (optional; when absent it is inferred from ``view``: PA, AP, AP_horizontal, ... are frontal)
``sex``        M / F / O / blank
``age``        years (float) or blank
``dataset``    the source dataset (e.g. ``chexpert``); lets ``labels='paper'`` find the study's label subset
``reader_id``  the reader of a per-reader row (VinDr)
*anything*     every other column is a label: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank unknown
=============  ===============================================================================================

A column with non-numeric text is not a label and is ignored with a warning; a numeric column with values
other than 1 / 0 / -1 is an error. Blank label cells read as unknown (``blank='nan'``) unless ``blank='zeros'``.
Manifests written by :meth:`Manifest.write_csv` hold the labels *after* the uncertainty policy (1 / 0 / blank),
so reading one back gives the same matrix whatever policy is passed.

``data`` strings: a manifest CSV path, or ``ADAPTER:ROOT`` with ADAPTER one of nih, chexpert, mimic, padchest,
vindr, vindr-pcxr, dicom (options as ``ADAPTER:ROOT?key=value&...``, e.g. ``vindr:/data/vindr?readers=any``).
Building a manifest never opens an image; missing files are counted from directory listings and reported.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd

from embedkit.data.adapters import canonical_name, get_adapter, parse_data
from embedkit.data.adapters._common import (META_COLUMNS, SPLIT_ALIASES, DirIndex, check_options,
                                            parse_ages, parse_label_values, read_csv, resolve_blanks)
from embedkit.data.adapters._labels import select_labels
from embedkit.data.splits import LeakageReport, apply_split, audit_leakage, parse_split
from embedkit.errors import DataError

logger = logging.getLogger(__name__)

METADATA = ("patient_id", "study_id", "view", "sex", "age", "dataset")
FRONTAL_VIEWS = frozenset({"PA", "AP", "AP_HORIZONTAL", "AP SUPINE", "AP_SUPINE", "FRONTAL", "POSTEROANTERIOR",
                           "ANTEROPOSTERIOR"})
_UNCERTAIN = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


@dataclass(frozen=True, eq=False)
class Manifest:
    """A resolved manifest: rows, absolute paths, a label matrix under an explicit policy, splits, provenance.

    Attributes
    ----------
    frame : pd.DataFrame
        (N, ...) columns ``id``, ``path`` (absolute), the metadata present, ``split``, then the label columns.
    label_names : tuple of str
        (K,) label column names, in matrix order.
    missing : np.ndarray
        (N,) bool, True where the image file was not found.
    leakage : LeakageReport
    """

    frame: pd.DataFrame
    label_names: tuple[str, ...]
    missing: np.ndarray
    leakage: LeakageReport
    _spec: Mapping[str, Any]

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def labels(self) -> np.ndarray:
        """(N, K) float32; 1 positive, 0 negative, NaN unknown (the uncertainty policy already applied)."""
        return self.frame[list(self.label_names)].to_numpy(dtype=np.float32).reshape(len(self.frame), -1)

    @property
    def ids(self) -> np.ndarray:
        """(N,) str row ids."""
        return self.frame["id"].to_numpy(dtype=str)

    @property
    def paths(self) -> np.ndarray:
        """(N,) str absolute image paths."""
        return self.frame["path"].to_numpy(dtype=str)

    @property
    def split(self) -> np.ndarray:
        """(N,) str: 'train' / 'val' / 'test' / ''."""
        return self.frame["split"].to_numpy(dtype=str)

    def spec(self) -> dict[str, Any]:
        """Provenance: the data string, adapter, label set, policies, view filter, split rule, counts."""
        return dict(self._spec)

    def metadata(self) -> dict[str, list]:
        """Per-row metadata present among patient_id, study_id, view, sex, age, dataset (lists of length N)."""
        return {c: self.frame[c].tolist() for c in METADATA if c in self.frame}

    def summary(self) -> dict[str, Any]:
        """Rows, patients, studies, missing files, and label prevalence per split (JSON-ready)."""
        out: dict[str, Any] = {"rows": len(self.frame), "missing": int(self.missing.sum()),
                               "label_names": list(self.label_names), "leakage": self.leakage.to_dict()}
        out.update(_counts(self.frame))
        splits = {}
        for name in ("train", "val", "test", ""):
            rows = self.frame[self.frame["split"] == name]
            if len(rows) == 0:
                continue
            block = rows[list(self.label_names)].to_numpy(dtype=np.float32).reshape(len(rows), -1)
            prevalence = {}
            for j, label in enumerate(self.label_names):
                pos, neg = int((block[:, j] == 1).sum()), int((block[:, j] == 0).sum())
                prevalence[label] = {"pos": pos, "neg": neg, "unknown": len(rows) - pos - neg,
                                     "rate": pos / (pos + neg) if pos + neg else None}
            splits[name or "unassigned"] = {"rows": len(rows), **_counts(rows),
                                            "missing": int(self.missing[(self.frame["split"] == name).to_numpy()]
                                                           .sum()), "prevalence": prevalence}
        out["splits"] = splits
        return out

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write the manifest CSV atomically (temp file + rename); paths relative to its folder where inside it.

        Returns
        -------
        Path
            The written file.
        """
        out = Path(path).expanduser().resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        frame = self.frame.copy()
        frame["path"] = [_relative_to(p, out.parent) for p in frame["path"]]
        if "frontal" in frame:
            frame["frontal"] = frame["frontal"].astype(bool).astype(int)
        for name in self.label_names:
            values = frame[name].to_numpy(dtype=np.float64)
            frame[name] = np.where(np.isnan(values), "", np.nan_to_num(values).astype(np.int8).astype(str))
        if "age" in frame:
            frame["age"] = [f"{v:g}" if v == v else "" for v in frame["age"].astype(np.float64)]
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
                frame.to_csv(handle, index=False)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out


def load_manifest(data: str | os.PathLike, *, labels: str | Sequence[str] = "full",
                  uncertain: Literal["zeros", "ones", "ignore"] = "zeros",
                  views: Literal["frontal", "all"] = "frontal", split: str | None = None, strict: bool = False,
                  allow_leak: bool = False, blank: Literal["zeros", "nan"] | None = None,
                  adapter_options: Mapping[str, str] | None = None) -> Manifest:
    """Build a :class:`Manifest` from a manifest CSV or an ``ADAPTER:ROOT`` string, without opening images.

    Parameters
    ----------
    data : str
        Manifest CSV path, or ``ADAPTER:ROOT`` (nih, chexpert, mimic, padchest, vindr, vindr-pcxr, dicom).
    labels : 'full', 'paper' or list of str
        All label columns, the reference study's subset for this dataset, or the named columns (K of them).
    uncertain : {'zeros', 'ones', 'ignore'}
        What -1 becomes: 0, 1, or unknown (NaN).
    views : {'frontal', 'all'}
    split : None, 'official' or 'patient:SEED:TRAIN,VAL,TEST'
        See :mod:`embedkit.data.splits`. The result is always audited for patient/study leakage.
    strict : bool
        Missing image files are an error instead of a warning.
    allow_leak : bool
        A patient or study in two splits is a warning instead of an error.
    blank : {'zeros', 'nan'} or None
        How blank label cells read; None = the dataset's convention (CheXpert/MIMIC/PadChest: 0, CSV: unknown).
    adapter_options : mapping
        Adapter-specific options, e.g. ``{"readers": "any"}`` for VinDr, ``{"label_source": "negbio"}`` for MIMIC.

    Returns
    -------
    Manifest
        ``labels`` is (N, K) float32.

    Raises
    ------
    DataError
        Unreadable CSV, unknown adapter or label, duplicate ids, missing files with ``strict``.
    LeakageError
        A patient or study in two splits without ``allow_leak``.

    Examples
    --------
    >>> m = load_manifest("chexpert:/data/CheXpert-v1.0-small", labels="paper", split="official")  # doctest: +SKIP
    >>> m.labels.shape  # doctest: +SKIP
    (191229, 10)
    """
    if uncertain not in _UNCERTAIN:
        raise DataError(f"The 'uncertain' parameter must be one of zeros, ones, ignore. Got {uncertain!r}.")
    if views not in ("frontal", "all"):
        raise DataError(f"The 'views' parameter must be 'frontal' or 'all'. Got {views!r}.")
    if blank not in (None, "zeros", "nan"):
        raise DataError(f"The 'blank' parameter must be 'zeros' or 'nan'. Got {blank!r}.")
    rule = parse_split(split)
    src = parse_data(os.fspath(data))
    if src.adapter is None:
        frame, module, blank_used, source = _from_csv(src.root, blank=blank or "nan")
        options: dict[str, str] = {}
    else:
        options = {**src.options, **dict(adapter_options or {})}
        frame, module, blank_used = _from_adapter(src.adapter, src.root, blank=blank, options=options)
        source = f"{src.adapter}:{src.root}"
    full = [c for c in frame.columns if c not in META_COLUMNS]
    _check_ids(frame, source)

    n_before = len(frame)
    if views == "frontal":
        frame = frame[_frontal_mask(frame)].reset_index(drop=True)
    n_dropped = n_before - len(frame)
    if len(frame) == 0:
        raise DataError(f"{source}: no rows left after the view filter (views={views}); try --views all.")

    names, block = select_labels(frame, full, labels, module=module, source=source)
    block = block.copy()
    block[block == -1] = _UNCERTAIN[uncertain]

    frame = frame.assign(split=_normalise_split(apply_split(frame, rule, source=source), source))
    leakage = audit_leakage(frame, allow_leak=allow_leak, source=source)

    missing = ~DirIndex().exists_many(frame["path"].astype(str))
    n_missing = int(missing.sum())
    if n_missing:
        example = frame["path"].iloc[int(np.flatnonzero(missing)[0])]
        msg = f"{source}: {n_missing} of {len(frame)} image file(s) not found (e.g. '{example}')"
        if strict:
            raise DataError(msg + "; fix ROOT or drop --strict to record them as failures.")
        logger.warning("%s", msg)

    meta = [c for c in META_COLUMNS if c in frame.columns and c != "split"]
    out = pd.concat([frame[meta].reset_index(drop=True), frame[["split"]].reset_index(drop=True),
                     pd.DataFrame(block, columns=names)], axis=1)
    spec = {"data": src.data, "source": str(src.root.resolve()), "adapter": src.adapter or "manifest",
            "adapter_options": options, "labels": labels if isinstance(labels, str) else list(labels),
            "label_names": list(names), "uncertain": uncertain, "blank": blank_used, "views": views,
            "split": str(rule), "n_rows": len(out), "n_missing": n_missing, "n_dropped_views": n_dropped,
            "n_unlabelled": int(np.isnan(block).all(axis=1).sum()) if names else len(out),
            "leakage": leakage.to_dict()}
    return Manifest(frame=out, label_names=tuple(names), missing=missing, leakage=leakage, _spec=spec)


def _from_adapter(name: str, root: Path, *, blank: str | None,
                  options: Mapping[str, str]) -> tuple[pd.DataFrame, ModuleType, str | None]:
    module = get_adapter(name)
    if hasattr(module, "OPTIONS"):  # an adapter without the attribute takes any keyword it likes
        check_options(options, module.OPTIONS, dataset=name)
    if not root.is_dir():
        raise DataError(f"{name}: ROOT '{root}' is not a folder; pass {name}:/path/to/dataset.")
    kwargs = dict(options)
    blank_used = blank or getattr(module, "BLANK", None)
    if hasattr(module, "BLANK"):
        kwargs["blank"] = blank_used or "zeros"
    frame = module.build_rows(root, **kwargs)
    return _conform(frame, source=f"{name}:{root}"), module, blank_used


def _from_csv(path: Path, *, blank: str) -> tuple[pd.DataFrame, ModuleType | None, str, str]:
    source = str(path)
    if not path.is_file():
        raise DataError(f"Manifest '{path}' does not exist; pass a manifest CSV or ADAPTER:ROOT "
                        f"(e.g. chexpert:/data/CheXpert-v1.0-small).")
    raw = read_csv(path, dataset="manifest")
    raw.columns = [str(c).strip() for c in raw.columns]
    if "path" not in raw.columns:
        raise DataError(f"Manifest '{path}' has no 'path' column (columns: {list(raw.columns)[:8]}); "
                        f"a manifest needs at least 'path'.")
    if len(raw) == 0:
        raise DataError(f"Manifest '{path}' has no rows.")
    base = path.resolve().parent
    rel = raw["path"].str.strip()
    if (rel == "").any():
        raise DataError(f"Manifest '{path}' has an empty 'path' on row {int(np.flatnonzero(rel == '')[0]) + 2}.")
    frame = pd.DataFrame({"id": raw["id"].str.strip().where(raw["id"].str.strip() != "", rel)
                          if "id" in raw else rel,
                          "path": [str(Path(p) if Path(p).is_absolute() else base / p) for p in rel]})
    for column in META_COLUMNS[2:]:
        if column in raw:
            frame[column] = raw[column].str.strip()
    if "age" in frame:
        frame["age"] = parse_ages(frame["age"].tolist())
    if "frontal" in frame:
        frame["frontal"] = _parse_frontal(frame["frontal"], frame.get("view"), source)
    labels = {}
    for column in raw.columns:
        if column in META_COLUMNS:
            continue
        values = raw[column].to_numpy(dtype=object)
        unread = np.flatnonzero(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").isna().to_numpy())
        if any(str(values[i]).strip().lower() not in ("", "nan", "none") for i in unread):
            logger.warning("manifest %s: ignored column '%s' (not a label: values must be 1, 0, -1 or blank)",
                           path.name, column)
            continue
        labels[column] = parse_label_values(raw[column], column=column, source=source)
    if labels:
        block = resolve_blanks(np.stack(list(labels.values()), axis=1), blank)
        frame = pd.concat([frame, pd.DataFrame(block, columns=list(labels))], axis=1)
    module = None
    if "dataset" in frame:
        names = set(frame["dataset"]) - {""}
        if len(names) == 1:
            try:
                module = get_adapter(canonical_name(names.pop()))
            except (DataError, ImportError):
                module = None
    return frame, module, blank, source


def _conform(frame: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Adapter output -> the manifest's column types (ids/paths str, labels float32)."""
    if "path" not in frame:
        raise DataError(f"{source}: the adapter returned no 'path' column.")
    frame = frame.reset_index(drop=True).copy()
    frame["path"] = frame["path"].astype(str)
    frame["id"] = frame["id"].astype(str) if "id" in frame else frame["path"]
    for column in frame.columns:
        if column in META_COLUMNS:
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        known = ~np.isnan(values)
        if np.isnan(values).sum() > frame[column].isna().sum() or not np.isin(values[known], (1, 0, -1)).all():
            logger.warning("%s: ignored column '%s' (not a label: values must be 1, 0, -1 or blank)", source, column)
            frame = frame.drop(columns=column)
        else:
            frame[column] = values.astype(np.float32)
    return frame


def _check_ids(frame: pd.DataFrame, source: str) -> None:
    dup = frame["id"].duplicated(keep=False)
    if dup.any():
        first = frame["id"][dup].iloc[0]
        raise DataError(f"{source}: {int(frame['id'][dup].nunique())} id(s) repeat (e.g. {first!r}); ids must be "
                        f"unique: add an 'id' column or fix the duplicate rows.")


def _frontal_mask(frame: pd.DataFrame) -> np.ndarray:
    if "frontal" in frame:
        return frame["frontal"].fillna(False).astype(bool).to_numpy()
    if "view" in frame and (frame["view"].fillna("") != "").any():
        return frame["view"].fillna("").str.upper().isin(FRONTAL_VIEWS).to_numpy()
    logger.info("no view information; keeping every row as frontal")
    return np.ones(len(frame), dtype=bool)


def _parse_frontal(values: pd.Series, view: pd.Series | None, source: str) -> np.ndarray:
    text = values.str.lower()
    bad = ~text.isin(_TRUE | _FALSE | {""})
    if bad.any():
        raise DataError(f"{source}: column 'frontal' has value {values[bad].iloc[0]!r}; use 1, 0 or blank.")
    inferred = view.fillna("").str.upper().isin(FRONTAL_VIEWS) if view is not None else pd.Series(True,
                                                                                                  index=text.index)
    return np.where(text == "", inferred, text.isin(_TRUE)).astype(bool)


def _normalise_split(values: np.ndarray, source: str) -> np.ndarray:
    text = pd.Series(values, dtype=object).fillna("").astype(str).str.strip().str.lower()
    mapped = text.map(SPLIT_ALIASES)
    if mapped.isna().any():
        i = int(np.flatnonzero(mapped.isna().to_numpy())[0])
        raise DataError(f"{source}: split value {values[i]!r} on row {i + 1}; use train, val, test or blank.")
    return mapped.to_numpy(dtype=object)


def _counts(rows: pd.DataFrame) -> dict[str, int]:
    out = {}
    for column, name in (("patient_id", "patients"), ("study_id", "studies")):
        if column in rows:
            values = rows[column].fillna("")
            out[name] = int(values[values != ""].nunique())
    return out


def _relative_to(path: str, base: Path) -> str:
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return path
