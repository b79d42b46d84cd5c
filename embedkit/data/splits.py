"""Splits and the leakage audit.

Split rules (the ``split=`` argument of :func:`embedkit.data.load_manifest`, ``--split`` on the CLI):

``None``
    Keep whatever split the data carries (an adapter's official split, a manifest's ``split`` column) or none.
``"official"``
    The dataset's own split; an error where it has none (PadChest) -- use a patient split there.
``"official+val:SEED:FRACTION"``
    The official split, with a patient-level validation set carved out of the official *train* rows (e.g.
    ``official+val:0:0.1``): for datasets whose official validation set is tiny (CheXpert) or absent (NIH,
    VinDr, VinDr-PCXR: the reference study carved its validation set out of the official training set).
``"patient:SEED:TRAIN,VAL,TEST"``
    Patient-level split with fractions summing to 1 (e.g. ``patient:0:0.7,0.1,0.2``). Each group (patient, or
    study / image where the data has no patient ids, with a warning) is ranked by SHA-256 of ``"SEED:group"`` and
    the ranking is cut at the fractions (largest-remainder rounding; every split with a non-zero fraction gets at
    least one group when there are enough). Pure hashing: the same on every platform, numpy version and row order.

Whenever a split is made or read, :func:`audit_leakage` checks that no patient and no study sits in two splits.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from embedkit.errors import DataError, LeakageError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_RULE_RE = re.compile(r"^patient:(-?\d+):([0-9.eE+-]+),([0-9.eE+-]+),([0-9.eE+-]+)$")
_CARVE_RE = re.compile(r"^official\+val:(-?\d+):([0-9.eE+-]+)$")
_SALT = "embedkit-leakage-audit:"


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


def group_keys(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """The unit of a patient-level split per row: patient_id, else study_id, else id.

    Returns
    -------
    keys : np.ndarray
        (N,) str.
    kind : str
        'patient', 'study' or 'image' -- the coarsest key available for every row.
    """
    n = len(frame)
    keys = frame["id"].astype(str).to_numpy(dtype=object) if "id" in frame else np.arange(n).astype(str)
    kind = "image"
    for column, name in (("study_id", "study"), ("patient_id", "patient")):
        if column in frame:
            values = frame[column].fillna("").astype(str).to_numpy(dtype=object)
            have = values != ""
            if have.all():
                kind = name
            keys = np.where(have, np.char.add(f"{name}:", values.astype(str)), keys)
    return keys, kind


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


def apply_split(frame: pd.DataFrame, rule: SplitRule, *, source: str) -> np.ndarray:
    """The split column that ``rule`` gives ``frame`` (official passthrough or a patient split).

    Returns
    -------
    np.ndarray
        (N,) object array of 'train' / 'val' / 'test' / ''.
    """
    current = frame["split"].fillna("").astype(str).to_numpy(dtype=object) if "split" in frame else None
    if rule.kind == "keep":
        return current if current is not None else np.full(len(frame), "", dtype=object)
    if rule.kind in ("official", "official+val"):
        if current is None or not (current != "").any():
            raise DataError(f"{source} has no official split; use --split patient:SEED:TRAIN,VAL,TEST "
                            f"(e.g. patient:0:0.7,0.1,0.2).")
        if rule.kind == "official":
            return current
        train = np.flatnonzero(current == "train")
        keys, kind = group_keys(frame.iloc[train])
        if kind != "patient":
            logger.warning("%s: no patient ids; carving the validation set by %s", source, kind)
        out = current.copy()
        out[train] = patient_split(keys, seed=rule.seed, fractions=rule.fractions)
        return out
    keys, kind = group_keys(frame)
    if kind != "patient":
        logger.warning("%s: no patient ids; splitting by %s, so one patient's images may land in different "
                       "splits", source, kind)
    return patient_split(keys, seed=rule.seed, fractions=rule.fractions)


@dataclass(frozen=True)
class LeakageReport:
    """What :func:`audit_leakage` found. ``leaks`` maps 'patient_id'/'study_id' to the number of leaked ids."""

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


def audit_leakage(frame: pd.DataFrame, *, allow_leak: bool = False, source: str = "data") -> LeakageReport:
    """Check that no patient and no study has rows in two splits (rows with split '' are ignored).

    Parameters
    ----------
    frame : pd.DataFrame
        Needs ``split``; checks ``patient_id`` and ``study_id`` where present.
    allow_leak : bool
        Log a warning instead of raising.

    Raises
    ------
    LeakageError
        When an id is in two splits and ``allow_leak`` is False. Example ids are salted hashes (privacy).
    """
    checked, leaks, rows, examples = [], {}, {}, {}
    if "split" not in frame:
        return LeakageReport(checked=())
    split = frame["split"].fillna("").astype(str)
    for column in ("patient_id", "study_id"):
        if column not in frame:
            continue
        checked.append(column)
        ids = frame[column].fillna("").astype(str)
        mask = (split != "") & (ids != "")
        per_id = split[mask].groupby(ids[mask]).nunique()
        leaked = per_id.index[per_id.to_numpy() > 1]
        leaks[column] = int(len(leaked))
        rows[column] = int(ids[mask].isin(leaked).sum())
        examples[column] = [salted(x) for x in sorted(leaked)[:3]]
    report = LeakageReport(checked=tuple(checked), leaks=leaks, rows=rows, examples=examples)
    if not report.ok:
        if not allow_leak:
            raise LeakageError(f"{source}: {report.message()}; re-split with --split patient:SEED:TRAIN,VAL,TEST "
                               f"or pass --allow-leak to go on anyway.")
        logger.warning("%s: %s (allowed by --allow-leak)", source, report.message())
    return report
