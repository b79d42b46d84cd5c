"""Reading a store for ``probe``: features, labels, the split (made, carved or kept, always audited), the rows left
out, the bootstrap unit and the run's identity.

- **The split** comes from the store. A store split without ``val`` gets one carved from its training units
  (:func:`embedkit.data.splits.carve_val`); a store without a split is split by
  :func:`embedkit.data.splits.patient_split`. Both work on :func:`~embedkit.data.splits.split_units` (connected
  components of patient and study ids), so no patient and no study crosses splits. A store without patient ids is
  not split unless the caller accepts a coarser unit (``split_unit="image"``). The leakage audit (patients and
  studies) always runs; the unit and source of the split are recorded.
- **Rows left out**: rows not yet extracted refuse the probe unless ``allow_partial``; those, rows unreadable at
  extract and rows without a split are counted, said and recorded.
- **The bootstrap unit**: patients when the store has patient ids (``bootstrap="auto"``), images otherwise.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from embedkit.errors import DataError, EmbedkitError

logger = logging.getLogger(__name__)

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
VAL_FRACTION = 0.1
_FINENESS = {"patient": 0, "study": 1, "image": 2}

Bootstrap = Literal["auto", "patients", "images"]
SplitUnit = Literal["patient", "study", "image"]


@dataclass(frozen=True)
class ProbeData:
    """A store read for probing: arrays aligned by row, and what was decided about them.

    Attributes
    ----------
    x : ndarray (N, D)
        Features in the store's dtype.
    y : ndarray (N, K) float32
        Labels, NaN = unknown.
    label_names : list[str] (K)
    ids : ndarray (N,) str
    units : ndarray (N,) str
        Split unit of each row (connected patient/study component, or the row itself).
    patients : ndarray (N,) str or None
    split : ndarray (N,) str
        'train' / 'val' / 'test', '' for rows left out.
    split_info : dict
        unit, source, leakage audit, counts of rows left out (metrics.json's ``split``).
    store_info : dict
        path, fingerprint, n_rows.
    identity : dict
        :func:`embedkit.app.identity.run_identity`.
    """

    x: np.ndarray
    y: np.ndarray
    label_names: list[str]
    ids: np.ndarray
    units: np.ndarray
    patients: np.ndarray | None
    split: np.ndarray
    split_info: dict
    store_info: dict
    identity: dict


def bad_option(name: str, expected: str, got) -> EmbedkitError:
    """The scikit-learn-style error of a bad ``probe`` argument."""
    return EmbedkitError(f"The '{name}' parameter of probe must be {expected}. Got {got!r}.")


def present_ids(values) -> np.ndarray | None:
    """Per-row ids as str with missing as '', or None when the store has none at all."""
    if values is None:
        return None
    v = np.asarray(values, dtype=object)
    v = np.array(["" if x is None or (isinstance(x, float) and x != x) else str(x).strip() for x in v], dtype=object)
    return None if not (v != "").any() else v.astype(str)


def resolve_split(st, store, *, ids, patients, studies, seed: int, split_unit: SplitUnit | None,
                   allow_leak: bool, say) -> tuple[np.ndarray, np.ndarray, dict]:
    """The split per row, the unit key per row, and metrics.json's ``split`` block (audited for leakage)."""
    from embedkit.data.splits import audit_split, carve_val, patient_split, split_units

    units, unit = split_units(patients, studies, ids)
    stored = st.split
    stored = None if stored is None else np.asarray(stored).astype(str)
    has_split = stored is not None and np.isin(stored, ("train", "test")).any()
    needs_val = has_split and not (stored == "val").any()

    def allow_unit(action: str) -> None:
        if unit == "patient":
            return
        if split_unit is not None and _FINENESS[split_unit] >= _FINENESS[unit]:
            return
        lacking = int((patients == "").sum()) if patients is not None else len(ids)
        raise DataError(
            f"Store '{store}' has no patient id for {lacking} of {len(ids)} rows, so {action} would group rows by "
            f"{unit} and one patient's images could land in two splits. Re-extract from a manifest with patient_id, "
            f"give the store a split, or pass --split-unit {unit} to accept {unit}-level splitting.")

    if not has_split:
        allow_unit("splitting it")
        split = np.asarray(patient_split(units, seed=seed, fractions=SPLIT_FRACTIONS)).astype(str)
        source = (f"made: patient_split over {unit} units, seed {seed}, fractions "
                  f"{'/'.join(f'{f:g}' for f in SPLIT_FRACTIONS)}")
    elif needs_val:
        allow_unit("carving a validation set")
        split = np.asarray(carve_val(stored, units, seed=seed, fraction=VAL_FRACTION)).astype(str)
        source = f"store; val carved from {VAL_FRACTION:.0%} of the training {unit} units (seed {seed})"
    else:
        split = stored
        source = "store"
    report = audit_split(split, patients, studies, allow_leak=allow_leak, source=f"Store '{store}'")
    plural = {"patient_id": "patients", "study_id": "studies"}
    checked = " and ".join(plural.get(c, c) for c in report.checked) or "nothing (no patient or study ids)"
    say(f"split: {source}; unit {unit}; leakage audit checked {checked}: "
        f"{'no leak' if report.ok else report.message() + ' (allowed by --allow-leak)'}")
    info = {"source": source, "unit": unit, "leakage": report.to_dict(), "allow_leak": allow_leak,
            "split_unit_accepted": split_unit}
    return split, units, info


def read_for_probe(st, store, *, features: str, labels: Sequence[str] | None = None, seed: int = 0,
                   split_unit: SplitUnit | None = None, allow_partial: bool = False, allow_leak: bool = False,
                   say: Callable[[str], None] = logger.info) -> ProbeData:
    """Read features, labels, ids and metadata of an open store, and settle its split.

    Parameters
    ----------
    st : stores.EmbeddingStore
        Opened read-only.
    store : str or Path
        Its path (for messages and the run record).
    features : str
        A view or a '+' concatenation of views (``cls+mean_patch``).
    labels : sequence of str, optional
        A subset of the store's labels, in the order wanted.
    seed : int
        Seed of a made split or a carved validation set.
    split_unit : {"patient", "study", "image"}, optional
        The coarsest unit the caller accepts where the store lacks patient ids.
    allow_partial : bool
        Probe the filled rows of a store that is still being filled.
    allow_leak : bool
        Go on (with a warning) when a patient or study sits in two splits.
    say : callable(str)
        Receives each message meant for the user.

    Returns
    -------
    ProbeData

    Raises
    ------
    EmbedkitError
        Unknown view or label.
    DataError
        No labels; rows still to be extracted without ``allow_partial``; no patient ids and no accepted unit.
    LeakageError
        A patient or study in two splits without ``allow_leak``.
    """
    from embedkit.app.identity import run_identity

    views = features.split("+")
    if not all(views) or any(v not in st.views for v in views):
        raise bad_option("features", f"store views joined by '+' ({', '.join(st.views)})", features)
    if st.labels is None or not st.label_names:
        raise DataError(f"Store '{store}' has no labels. Re-extract from a manifest with label columns.")
    names = list(st.label_names)
    cols = list(range(len(names)))
    if labels:
        wanted = [str(w).strip() for w in labels if str(w).strip()]
        if not wanted or any(w not in names for w in wanted):
            raise bad_option("labels", f"labels of the store ({', '.join(names)})", ",".join(map(str, labels)))
        cols, names = [names.index(w) for w in wanted], wanted
    n = st.n_rows
    filled = np.asarray(st.filled, dtype=bool)
    failed = np.zeros(n, dtype=bool)
    failed_ids = set(st.failures())
    ids = np.asarray(st.ids).astype(str)
    if failed_ids:
        failed = np.isin(ids, list(failed_ids)) & ~filled
    pending = ~filled & ~failed
    if pending.any() and not allow_partial:
        raise DataError(f"Store '{store}' has {int(pending.sum())} of {n} rows not extracted yet (still being "
                        "filled, or interrupted); finish the extract (re-run it to resume) or pass --allow-partial "
                        "to probe the filled rows only.")
    patients = present_ids(st.metadata("patient_id"))
    studies = present_ids(st.metadata("study_id"))
    split, units, split_info = resolve_split(st, store, ids=ids, patients=patients, studies=studies, seed=seed,
                                              split_unit=split_unit, allow_leak=allow_leak, say=say)
    no_split = int(((split == "") & filled).sum())
    split = np.where(filled, split, "")
    if pending.any():
        say(f"{int(pending.sum())} of {n} rows are not extracted yet; left out (--allow-partial)")
    if failed.any():
        say(f"{int(failed.sum())} of {n} rows could not be read at extract; left out ('embedkit info' lists them)")
    if no_split:
        say(f"{no_split} of {n} rows have no split; left out")
    split_info.update({"n_rows": n, "n_used": int(np.isin(split, ("train", "val", "test")).sum()),
                       "n_unfilled": int((~filled).sum()), "n_not_extracted": int(pending.sum()),
                       "n_unreadable": int(failed.sum()), "n_no_split": no_split, "allow_partial": allow_partial})
    # The store's dtype (float16 by default) is kept: the heads convert bounded chunks when they use them, so an
    # 800k x 4096 float16 store costs 6.5 GB here instead of 13 GB (plus copies) as float32.
    x = st.load(features, dtype=None)
    y = np.asarray(st.labels, dtype=np.float32)[:, cols]
    store_info = {"path": str(Path(store).resolve()), "fingerprint": st.fingerprint, "n_rows": n}
    identity = run_identity(st.provenance, st.metadata("dataset"))
    return ProbeData(x=x, y=y, label_names=names, ids=ids, units=np.asarray(units).astype(str), patients=patients,
                     split=split, split_info=split_info, store_info=store_info, identity=identity)


def bootstrap_groups(data: ProbeData, test_rows: np.ndarray, bootstrap: Bootstrap) -> tuple[np.ndarray | None, str]:
    """(groups of the test rows or None, the unit) for the bootstrap plan.

    ``auto`` resamples patients when the store has patient ids, else images. Patients are the split units (a
    patient together with anyone sharing a study with them); a test row without a patient id is its own group.
    """
    if bootstrap not in ("auto", "patients", "images"):
        raise bad_option("bootstrap", "'auto', 'patients' or 'images'", bootstrap)
    if bootstrap == "images" or (bootstrap == "auto" and data.patients is None):
        return None, "images"
    if data.patients is None:
        raise DataError("--bootstrap patients needs the store's patient_id metadata; use --bootstrap images.")
    return data.units[test_rows], "patients"
