"""Splits and the leakage audit: the one split implementation of embedkit (manifest, extract, probe, ...).

Split units (:func:`split_units`)
    Rows that share a patient id or a study id belong to one unit, transitively (connected components of the
    patient--study graph), so no patient and no study can cross splits -- even where one study id is shared by
    two patient ids, as in the real PadChest CSV. A row with neither id is its own unit. The unit is named
    ``'patient'`` when every row has a patient id, ``'study'`` when every row has a study id but not a patient id,
    else ``'image'``; a fallback to study or image units is logged as a warning and recorded by callers (the
    manifest's ``split_unit``) so reports can state it.

Split rules (the ``split=`` argument of :func:`embedkit.data.load_manifest`, ``--split`` on the CLI):

``None``
    Keep whatever split the data carries (an adapter's official split, a manifest's ``split`` column) or none.
``"official"``
    The dataset's own split; an error where it has none (PadChest) -- use a patient split there.
``"official+val:SEED:FRACTION"``
    The official split, with a validation set carved out of the official *train* units (:func:`carve_val`, e.g.
    ``official+val:0:0.1``): for datasets whose official validation set is tiny (CheXpert) or absent (NIH,
    VinDr, VinDr-PCXR: the reference study carved its validation set out of the official training set).
``"patient:SEED:TRAIN,VAL,TEST"``
    Unit-level split with fractions summing to 1 (e.g. ``patient:0:0.7,0.1,0.2``). Each unit is ranked by
    SHA-256 of ``"SEED:unit key"`` and the ranking is cut at the fractions (largest-remainder rounding; every
    split with a non-zero fraction gets at least one unit when there are enough). Pure hashing: the same on
    every platform, numpy version and row order (:func:`patient_split`).

Whenever a split is made or read, :func:`audit_split` checks that no patient and no study sits in two splits.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from embedkit.errors import DataError, LeakageError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_RULE_RE = re.compile(r"^patient:(-?\d+):([0-9.eE+-]+),([0-9.eE+-]+),([0-9.eE+-]+)$")
_CARVE_RE = re.compile(r"^official\+val:(-?\d+):([0-9.eE+-]+)$")
_SALT = "embedkit-leakage-audit:"
_MISSING_IDS = frozenset({"", "nan", "none", "<na>"})


@dataclass(frozen=True)
class SplitRule:
    """A parsed split rule: ``kind`` is 'keep', 'official', 'official+val' or 'patient'."""

    kind: str
    seed: int = 0
    fractions: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __str__(self) -> str:
        if self.kind == "patient":
            return f"patient:{self.seed}:" + ",".join(f"{f:g}" for f in self.fractions)
        if self.kind == "official+val":
            return f"official+val:{self.seed}:{self.fractions[1]:g}"
        return self.kind


def parse_split(rule: str | None) -> SplitRule:
    """Parse ``None`` / ``'official'`` / ``'patient:SEED:TRAIN,VAL,TEST'``; DataError naming the form otherwise.

    >>> parse_split("patient:0:0.7,0.1,0.2")
    SplitRule(kind='patient', seed=0, fractions=(0.7, 0.1, 0.2))
    """
    if rule is None or str(rule).strip().lower() in ("", "none", "keep"):
        return SplitRule("keep")
    text = str(rule).strip()
    if text.lower() == "official":
        return SplitRule("official")
    carve = _CARVE_RE.match(text)
    if carve is not None:
        fraction = float(carve.group(2))
        if not 0 < fraction < 1:
            raise DataError(f"The validation fraction of split rule {rule!r} must be between 0 and 1.")
        return SplitRule("official+val", seed=int(carve.group(1)), fractions=(1 - fraction, fraction, 0.0))
    match = _RULE_RE.match(text)
    if match is None:
        raise DataError(f"The 'split' parameter must be 'official', 'official+val:SEED:FRACTION' or "
                        f"'patient:SEED:TRAIN,VAL,TEST' (e.g. patient:0:0.7,0.1,0.2). Got {rule!r}.")
    try:
        fractions = tuple(float(x) for x in match.groups()[1:])
    except ValueError:
        raise DataError(f"The fractions of split rule {rule!r} must be numbers, e.g. 0.7,0.1,0.2.") from None
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"The fractions of split rule {rule!r} must be >= 0 and sum to 1. Got sum "
                        f"{sum(fractions):g}.")
    return SplitRule("patient", seed=int(match.group(1)), fractions=fractions)  # type: ignore[arg-type]


def _id_codes(values, n: int | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 codes (-1 = missing) and the (U,) str ids they index, stripped; None / NaN / '' / 'nan' /
    'None' are missing. Strings are cleaned once per distinct value (hashing first), not once per row."""
    if values is None:
        if n is None:
            raise DataError(f"The '{what}' parameter is required here.")
        return np.full(n, -1, dtype=np.int64), np.empty(0, dtype=object)
    raw = np.asarray(values, dtype=object).reshape(-1)
    if n is not None and len(raw) != n:
        raise DataError(f"The '{what}' parameter must have one entry per row ({n}). Got {len(raw)}.")
    codes, uniques = pd.factorize(raw)
    clean = pd.Index(uniques, dtype=object).astype(str).str.strip()
    clean = np.where(clean.str.lower().isin(_MISSING_IDS), None, clean.to_numpy(dtype=object))
    recode, names = pd.factorize(clean)  # ' P1' and 'P1' are one id; missing -> -1
    out = np.where(codes >= 0, recode[codes], -1) if len(recode) else np.full(len(raw), -1)
    return out.astype(np.int64), np.asarray(names, dtype=object)


def split_units(patient_ids, study_ids, image_ids=None) -> tuple[np.ndarray, str]:
    """The unit of a split per row: connected components of rows linked by a shared patient or study id.

    Two rows are in one unit when they share a patient id or a study id, transitively; so no patient and no
    study can cross splits even where the data links them oddly (the real PadChest CSV has a StudyID shared by
    two PatientIDs). A row with neither id is its own unit.

    Parameters
    ----------
    patient_ids : array-like (N,) or None
        Missing ids may be None, NaN, '' (or the strings 'nan' / 'None').
    study_ids : array-like (N,) or None
    image_ids : array-like (N,) or None
        Row ids, the key of a row with neither id (default: the row number).

    Returns
    -------
    keys : np.ndarray
        (N,) object array of str: one key per unit, the smallest member key of the component
        (``"patient:ID"`` before ``"study:ID"``, then the row id for a lone row) -- deterministic and
        independent of row order.
    unit : str
        ``'patient'`` when every row has a patient id, ``'study'`` when every row has a study id (but not a
        patient id), ``'image'`` otherwise (rows without either id are single images).

    Raises
    ------
    DataError
        Arrays of different lengths, or all three None.

    Examples
    --------
    >>> keys, unit = split_units(["P1", "P2", "P3"], ["S1", "S1", "S2"], ["a", "b", "c"])
    >>> keys.tolist(), unit
    (['patient:P1', 'patient:P1', 'patient:P3'], 'patient')
    """
    n = next((len(np.asarray(v, dtype=object).reshape(-1)) for v in (image_ids, patient_ids, study_ids)
              if v is not None), None)
    if n is None:
        raise DataError("split_units needs at least one of patient_ids, study_ids, image_ids.")
    p_codes, p_names = _id_codes(patient_ids, n, "patient_ids")
    s_codes, s_names = _id_codes(study_ids, n, "study_ids")
    has_p, has_s = p_codes >= 0, s_codes >= 0
    have = has_p | has_s
    keys = np.empty(n, dtype=object)
    lone = np.flatnonzero(~have)
    keys[lone] = lone.astype(str)
    if image_ids is not None and len(lone):
        i_codes, i_names = _id_codes(np.asarray(image_ids, dtype=object).reshape(-1)[lone], len(lone), "image_ids")
        keys[lone[i_codes >= 0]] = i_names[i_codes[i_codes >= 0]]
    unit = "patient" if has_p.all() else "study" if has_s.all() else "image"
    if not have.any():
        return keys, unit
    n_p, n_s = len(p_names), len(s_names)
    # Graph over id nodes (patients, then studies); a row holding both ids is an edge between them.
    both = has_p & has_s
    edges = (p_codes[both], n_p + s_codes[both])
    graph = coo_matrix((np.ones(int(both.sum()), dtype=np.int8), edges), shape=(n_p + n_s, n_p + n_s))
    n_comp, component = connected_components(graph, directed=False)
    names = np.concatenate([np.char.add("patient:", p_names.astype(str)),
                            np.char.add("study:", s_names.astype(str))])
    # Smallest name per component: sort by (component, name) in C and take each component's first node.
    order = np.lexsort((names, component))
    first = order[np.r_[True, component[order][1:] != component[order][:-1]]]
    label_of = np.empty(n_comp, dtype=object)
    label_of[component[first]] = names[first].astype(object)
    node = np.where(has_p, p_codes, n_p + s_codes)
    keys[have] = label_of[component[node[have]]]
    return keys, unit


def group_keys(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """:func:`split_units` over a frame's ``patient_id`` / ``study_id`` / ``id`` columns (each optional).

    Returns
    -------
    keys : np.ndarray
        (N,) str.
    unit : str
        'patient', 'study' or 'image'.
    """
    image = frame["id"] if "id" in frame else np.arange(len(frame)).astype(str)
    return split_units(frame["patient_id"] if "patient_id" in frame else None,
                       frame["study_id"] if "study_id" in frame else None, image)


def patient_split(keys: Sequence[str], *, seed: int, fractions: Sequence[float]) -> np.ndarray:
    """Assign each row to train/val/test so that rows sharing a key share a split.

    Parameters
    ----------
    keys : sequence of str
        (N,) group key per row (patient id).
    seed : int
    fractions : sequence of 3 floats
        Fractions of *groups* for train, val, test; sum 1.

    Returns
    -------
    np.ndarray
        (N,) object array of 'train' / 'val' / 'test'.

    Examples
    --------
    >>> patient_split(["a", "a", "b"], seed=0, fractions=(0.5, 0.0, 0.5)).tolist()
    ['train', 'train', 'test']
    """
    keys = np.asarray(keys, dtype=object).astype(str)
    unique, inverse = np.unique(keys, return_inverse=True)
    ranks = np.argsort([hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in unique], kind="stable")
    counts = _counts(len(unique), fractions)
    bounds = np.cumsum(counts)
    group_split = np.empty(len(unique), dtype=object)
    position = np.empty(len(unique), dtype=np.int64)
    position[ranks] = np.arange(len(unique))
    group_split[:] = np.array(SPLITS, dtype=object)[np.searchsorted(bounds, position, side="right")]
    return group_split[inverse]


def _counts(n: int, fractions: Sequence[float]) -> np.ndarray:
    exact = np.asarray(fractions, dtype=np.float64) * n
    counts = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # A split asked for must not come out empty when there are enough groups to go round.
    for i in np.flatnonzero((counts == 0) & (np.asarray(fractions) > 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


def carve_val(split, keys, *, seed: int, fraction: float) -> np.ndarray:
    """Move ``fraction`` of the training *units* to 'val' by the same SHA-256 ranking as :func:`patient_split`.

    Parameters
    ----------
    split : array-like (N,) of str
        'train' / 'val' / 'test' / ''; only 'train' rows can move.
    keys : array-like (N,) of str
        Unit key per row (from :func:`split_units`); a unit moves whole.
    seed : int
    fraction : float
        Fraction of the training units that become validation units, 0 < fraction < 1.

    Returns
    -------
    np.ndarray
        (N,) object array: ``split`` with the carved rows set to 'val'.

    Raises
    ------
    DataError
        ``fraction`` outside (0, 1), lengths differ, or fewer than 2 training units.

    Examples
    --------
    >>> carve_val(["train"] * 4 + ["test"], ["a", "a", "b", "c", "d"], seed=0, fraction=0.5).tolist()
    ['train', 'train', 'val', 'train', 'test']
    """
    if not 0 < float(fraction) < 1:
        raise DataError(f"The 'fraction' parameter of carve_val must be between 0 and 1. Got {fraction!r}.")
    out = pd.Series(np.asarray(split, dtype=object).reshape(-1), dtype=object).fillna("").astype(str)
    out = out.to_numpy(dtype=object)
    keys = np.asarray(keys, dtype=object).reshape(-1).astype(str)
    if len(keys) != len(out):
        raise DataError(f"carve_val needs one key per row ({len(out)}). Got {len(keys)}.")
    train = np.flatnonzero(out == "train")
    if len(np.unique(keys[train])) < 2:
        raise DataError("Cannot carve a validation set from fewer than 2 training units (patients/studies/"
                        "images); give a split with a validation set or more training data.")
    out[train] = patient_split(keys[train], seed=seed, fractions=(1.0 - fraction, fraction, 0.0))
    return out


def apply_split(frame: pd.DataFrame, rule: SplitRule, *, source: str) -> tuple[np.ndarray, str | None]:
    """The split column that ``rule`` gives ``frame`` (official passthrough, a carve or a unit split).

    Returns
    -------
    split : np.ndarray
        (N,) object array of 'train' / 'val' / 'test' / ''.
    unit : str or None
        'patient', 'study' or 'image': the unit embedkit split by; None when the split came with the data.
    """
    current = frame["split"].fillna("").astype(str).to_numpy(dtype=object) if "split" in frame else None
    if rule.kind == "keep":
        return (current if current is not None else np.full(len(frame), "", dtype=object)), None
    if rule.kind in ("official", "official+val"):
        if current is None or not (current != "").any():
            raise DataError(f"{source} has no official split; use --split patient:SEED:TRAIN,VAL,TEST "
                            f"(e.g. patient:0:0.7,0.1,0.2).")
        if rule.kind == "official":
            return current, None
        keys, unit = group_keys(frame)
        if unit != "patient":
            logger.warning("%s: no patient ids on every row; carving the validation set by %s units", source, unit)
        return carve_val(current, keys, seed=rule.seed, fraction=rule.fractions[1]), unit
    keys, unit = group_keys(frame)
    if unit != "patient":
        logger.warning("%s: no patient ids on every row; splitting by %s units, so one patient's images may land "
                       "in different splits (split_unit=%s)", source, unit, unit)
    return patient_split(keys, seed=rule.seed, fractions=rule.fractions), unit


@dataclass(frozen=True)
class LeakageReport:
    """What :func:`audit_split` found. ``leaks`` maps 'patient_id'/'study_id' to the number of leaked ids."""

    checked: tuple[str, ...]
    leaks: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no id is in two splits."""
        return not any(self.leaks.values())

    def message(self) -> str:
        """One line naming counts and (salted) example ids."""
        parts = [f"{self.leaks[c]} {c.removesuffix('_id')}(s) over {self.rows[c]} rows "
                 f"(e.g. {', '.join(self.examples[c])})" for c in self.checked if self.leaks.get(c)]
        return "; ".join(parts) + " appear in more than one split"

    def to_dict(self) -> dict:
        """JSON-ready form for summaries."""
        return {"ok": self.ok, "checked": list(self.checked), "leaks": dict(self.leaks), "rows": dict(self.rows),
                "examples": {k: list(v) for k, v in self.examples.items()}}


def salted(value: str) -> str:
    """A short salted hash that identifies an id in messages without printing it."""
    return hashlib.sha256((_SALT + str(value)).encode()).hexdigest()[:10]


def audit_split(split, patient_ids, study_ids, *, allow_leak: bool = False, source: str = "data") -> LeakageReport:
    """Check that no patient and no study has rows in two splits (rows with split '' or no id are ignored).

    Parameters
    ----------
    split : array-like (N,) of str
    patient_ids, study_ids : array-like (N,) or None
        None = not known (not checked, and not listed in ``checked``).
    allow_leak : bool
        Log a warning instead of raising.
    source : str
        Names the data in messages.

    Returns
    -------
    LeakageReport

    Raises
    ------
    LeakageError
        When an id is in two splits and ``allow_leak`` is False. Example ids are salted hashes (privacy).

    Examples
    --------
    >>> audit_split(["train", "test"], ["p1", "p2"], None).ok
    True
    """
    split_codes, _ = _id_codes(split, None, "split")
    checked, leaks, rows, examples = [], {}, {}, {}
    for column, values in (("patient_id", patient_ids), ("study_id", study_ids)):
        if values is None:
            continue
        checked.append(column)
        codes, names = _id_codes(values, len(split_codes), column)
        mask = (codes >= 0) & (split_codes >= 0)
        width = int(split_codes.max()) + 1 if len(split_codes) else 1
        pairs = np.unique(codes[mask] * width + split_codes[mask])
        leaked = np.bincount(pairs // width, minlength=len(names)) > 1
        leaks[column] = int(leaked.sum())
        rows[column] = int(leaked[codes[mask]].sum())
        examples[column] = [salted(x) for x in np.sort(names[leaked].astype(str))[:3]]
    report = LeakageReport(checked=tuple(checked), leaks=leaks, rows=rows, examples=examples)
    if not report.ok:
        if not allow_leak:
            raise LeakageError(f"{source}: {report.message()}; re-split with --split patient:SEED:TRAIN,VAL,TEST "
                               f"or pass --allow-leak to go on anyway.")
        logger.warning("%s: %s (allowed by --allow-leak)", source, report.message())
    return report


def audit_leakage(frame: pd.DataFrame, *, allow_leak: bool = False, source: str = "data") -> LeakageReport:
    """:func:`audit_split` over a frame's ``split``, ``patient_id`` and ``study_id`` columns (where present).

    Raises
    ------
    LeakageError
        When an id is in two splits and ``allow_leak`` is False.
    """
    if "split" not in frame:
        return LeakageReport(checked=())
    return audit_split(frame["split"], frame["patient_id"] if "patient_id" in frame else None,
                       frame["study_id"] if "study_id" in frame else None, allow_leak=allow_leak, source=source)
