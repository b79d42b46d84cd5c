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
``frontal``    1 / 0 / blank (optional; blank or absent: inferred from ``view``: PA, AP, AP_horizontal, ... are
               frontal; a blank / UNK / UNKNOWN view is an *unknown* view, see below)
``sex``        M / F / O / blank
``age``        years (float) or blank
``dataset``    the source dataset (e.g. ``chexpert``); lets ``labels='paper'`` find the study's label subset
``reader_id``  the reader of a per-reader row (VinDr)
*anything*     every other column is a label: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank unknown
=============  ===============================================================================================

A column with no numeric value at all (free text such as a report) is not a label and is ignored with a
warning. In a label column (one with at least one number) every non-blank cell must be 1 / 0 / -1: any other
value (``yes``, ``2``) is an error naming the column, the file line, the row id and the value -- one bad cell
never silently removes a label. Blank label cells read as unknown (``blank='nan'``) unless ``blank='zeros'``.
Manifests written by :meth:`Manifest.write_csv` hold the labels *after* the uncertainty policy (1 / 0 / blank),
so reading one back gives the same matrix whatever policy is passed.

``data`` strings: a manifest CSV path, or ``ADAPTER:ROOT`` with ADAPTER one of nih, chexpert, mimic, padchest,
vindr, vindr-pcxr, dicom (options as ``ADAPTER:ROOT?key=value&...``, e.g. ``vindr:/data/vindr?readers=any``).
Building a manifest never opens an image; missing files are counted from directory listings and reported.

No silent loss
--------------
Every row that does not reach the manifest is counted per reason in ``spec()["dropped"]`` (and printed by
``embedkit manifest``, one line per reason): ``not frontal`` (``views='frontal'``), ``unknown view``, and the
adapter's own (``dicom:``: ``duplicate SOPInstanceUID``, ``unreadable DICOM header``, ``not DICOM``).

View rule of ``views='frontal'``: a row is frontal when its ``frontal`` value (adapter or CSV) says so, else when
its ``view`` is one of :data:`FRONTAL_VIEWS`; a row whose view is blank / ``UNK`` / ``UNKNOWN`` (and whose
``frontal`` is blank) has an *unknown* view and follows ``unknown_view``: ``'drop'`` (the default: frontal-only
means known frontal, as in the reference study, e.g. PadChest ``UNK``, MIMIC's blank ViewPosition) or ``'keep'``
(e.g. DICOM folders whose ViewPosition is often empty). Their count is reported either way
(``spec()["n_unknown_view"]``). A source with no view information at all (no ``view`` and no ``frontal``
column) cannot be filtered: every row is kept and ``spec()["view_rule"]`` says so.

``spec()["split_unit"]`` records the unit a split made here used (``patient``, or ``study`` / ``image`` when
the data lacks patient ids -- also logged as a warning), ``null`` when the split came with the data.
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
from embedkit.data.adapters._common import (META_COLUMNS, SPLIT_ALIASES, UNKNOWN_VIEWS, DirIndex, check_options,
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
            frontal = pd.Series(frame["frontal"], dtype=object)
            frame["frontal"] = np.where(frontal.isna(), "", frontal.fillna(False).astype(bool).astype(int).astype(str))
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
                  adapter_options: Mapping[str, str] | None = None,
                  unknown_view: Literal["keep", "drop"] = "drop") -> Manifest:
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
    split : None, 'official', 'official+val:SEED:FRACTION' or 'patient:SEED:TRAIN,VAL,TEST'
        See :mod:`embedkit.data.splits` (units are connected components of patient and study ids). The result
        is always audited for patient/study leakage.
    strict : bool
        Missing image files are an error instead of a warning.
    allow_leak : bool
        A patient or study in two splits is a warning instead of an error.
    blank : {'zeros', 'nan'} or None
        How blank label cells read; None = the dataset's convention (CheXpert/MIMIC/PadChest: 0, CSV: unknown).
    adapter_options : mapping
        Adapter-specific options, e.g. ``{"readers": "any"}`` for VinDr, ``{"label_source": "negbio"}`` for MIMIC.
    unknown_view : {'drop', 'keep'}
        Under ``views='frontal'``, what happens to rows whose view is unknown (see the module docstring).

    Returns
    -------
    Manifest
        ``labels`` is (N, K) float32.

    Raises
    ------
    DataError
        Unreadable CSV, unknown adapter or label, an invalid label value, duplicate ids, missing files with
        ``strict``, no rows left after the view filter.
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
    if unknown_view not in ("keep", "drop"):
        raise DataError(f"The 'unknown_view' parameter must be 'keep' or 'drop'. Got {unknown_view!r}.")
    rule = parse_split(split)
    src = parse_data(os.fspath(data))
    if src.adapter is None:
        frame, module, blank_used, source = _from_csv(src.root, blank=blank or "nan")
        options: dict[str, str] = {}
        dropped: dict[str, int] = {}
    else:
        options = {**src.options, **dict(adapter_options or {})}
        frame, module, blank_used, dropped = _from_adapter(src.adapter, src.root, blank=blank, options=options)
        source = f"{src.adapter}:{src.root}"
    full = [c for c in frame.columns if c not in META_COLUMNS]
    _check_ids(frame, source)

    status = _view_status(frame)
    n_unknown = int(np.isnan(status).sum()) if status is not None else 0
    view_rule = "no view information: every row kept" if status is None else f"unknown views: {unknown_view}"
    if views == "frontal" and status is not None:
        keep = (status == 1) | (np.isnan(status) & (unknown_view == "keep"))
        dropped["not frontal"] = int((status == 0).sum())
        if unknown_view == "drop":
            dropped["unknown view"] = n_unknown
        if n_unknown:
            logger.warning("%s: %d row(s) have an unknown view (blank/UNK); %s (--unknown-view %s%s)", source,
                           n_unknown, "dropped" if unknown_view == "drop" else "kept as frontal", unknown_view,
                           ", the default" if unknown_view == "drop" else "")
        frame = frame[keep].reset_index(drop=True)
    elif views == "frontal":
        logger.warning("%s: no view information; --views frontal keeps every row", source)
    dropped = {k: v for k, v in dropped.items() if v}
    for reason, count in dropped.items():
        logger.info("%s: dropped %d row(s): %s", source, count, reason)
    if len(frame) == 0:
        hint = " or --unknown-view keep" if views == "frontal" and n_unknown else ""
        raise DataError(f"{source}: no rows left after the view filter (views={views}; dropped: "
                        f"{', '.join(f'{v} {k}' for k, v in dropped.items())}); try --views all{hint}.")

    names, block = select_labels(frame, full, labels, module=module, source=source)
    block = block.copy()
    block[block == -1] = _UNCERTAIN[uncertain]

    split_values, split_unit = apply_split(frame, rule, source=source)
    frame = frame.assign(split=_normalise_split(split_values, source))
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
            "split": str(rule), "split_unit": split_unit, "unknown_view": unknown_view, "view_rule": view_rule,
            "n_rows": len(out), "n_missing": n_missing, "dropped": dropped, "n_unknown_view": n_unknown,
            "n_dropped_views": dropped.get("not frontal", 0) + dropped.get("unknown view", 0),
            "n_unlabelled": int(np.isnan(block).all(axis=1).sum()) if names else len(out),
            "leakage": leakage.to_dict()}
    return Manifest(frame=out, label_names=tuple(names), missing=missing, leakage=leakage, _spec=spec)


def _from_adapter(name: str, root: Path, *, blank: str | None,
                  options: Mapping[str, str]) -> tuple[pd.DataFrame, ModuleType, str | None, dict[str, int]]:
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
    # An adapter that skips candidate rows says how many, per reason, in frame.attrs["dropped"].
    dropped = {str(k): int(v) for k, v in dict(frame.attrs.get("dropped", {})).items()}
    return _conform(frame, source=f"{name}:{root}"), module, blank_used, dropped


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
        if not _has_number(raw[column]):
            logger.warning("manifest %s: ignored column '%s' (text without any number: not a label)",
                           path.name, column)
            continue
        labels[column] = parse_label_values(raw[column], column=column, source=source, ids=frame["id"].tolist())
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
        if not _has_number(frame[column]):
            logger.warning("%s: ignored column '%s' (text without any number: not a label)", source, column)
            frame = frame.drop(columns=column)
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero((np.isnan(values) & frame[column].notna().to_numpy()
                              & ~frame[column].astype(str).str.strip().str.lower().isin(("", "nan", "none")).to_numpy())
                             | (~np.isnan(values) & ~np.isin(values, (1, 0, -1))))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{source}: label column '{column}' has value {frame[column].iloc[i]!r} (id "
                            f"{frame['id'].iloc[i]!r}); labels must be 1, 0, -1 or blank ({len(bad)} bad cell(s)).")
        frame[column] = values.astype(np.float32)
    return frame


def _has_number(values: pd.Series) -> bool:
    """True when any cell reads as a number: such a column is a label column and must hold only 1/0/-1/blank."""
    return bool(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").notna().any())


def _check_ids(frame: pd.DataFrame, source: str) -> None:
    dup = frame["id"].duplicated(keep=False)
    if dup.any():
        first = frame["id"][dup].iloc[0]
        raise DataError(f"{source}: {int(frame['id'][dup].nunique())} id(s) repeat (e.g. {first!r}); ids must be "
                        f"unique: add an 'id' column or fix the duplicate rows.")


def _view_status(frame: pd.DataFrame) -> np.ndarray | None:
    """(N,) float64: 1 frontal, 0 not frontal, NaN unknown view; None when the source has no view information."""
    inferred = None
    if "view" in frame:
        view = frame["view"].fillna("").astype(str).str.strip().str.upper()
        inferred = np.where(view.isin(UNKNOWN_VIEWS), np.nan, view.isin(FRONTAL_VIEWS).astype(np.float64))
    if "frontal" in frame:
        given = pd.Series(frame["frontal"], dtype=object)
        known = given.notna().to_numpy()
        out = np.where(known, given.fillna(False).astype(bool).astype(np.float64), np.nan)
        return out if inferred is None else np.where(known, out, inferred)
    return inferred


def _parse_frontal(values: pd.Series, view: pd.Series | None, source: str) -> np.ndarray:
    """CSV ``frontal`` cells -> (N,) object True / False / None (blank: inferred from ``view``, else unknown)."""
    text = values.str.lower()
    bad = ~text.isin(_TRUE | _FALSE | {""})
    if bad.any():
        raise DataError(f"{source}: column 'frontal' has value {values[bad].iloc[0]!r}; use 1, 0 or blank.")
    out = pd.Series(text.isin(_TRUE).to_numpy(), dtype=object)
    if view is not None:
        status = _view_status(pd.DataFrame({"view": view.to_numpy()}))
        inferred = pd.Series([None if s != s else bool(s) for s in status], dtype=object)
    else:
        inferred = pd.Series([None] * len(text), dtype=object)
    blank = (text == "").to_numpy()
    out[blank] = inferred[blank]
    return out.to_numpy(dtype=object)


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
