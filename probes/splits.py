"""Patient-level splits and label-fraction subsampling (no patient ever straddles two splits)."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from probes.errors import ProbeError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _groups(groups: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n).astype(str)  # no patient ids: every row is its own patient
    g = np.asarray(groups).astype(str)
    if g.shape != (n,):
        raise ProbeError(f"patient ids must have one entry per row ({n}); got shape {g.shape}.")
    return g


def patient_split(
    n: int,
    *,
    groups: Sequence | np.ndarray | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """Assign whole patients to train / val / test at random.

    Parameters
    ----------
    n : int
        Number of rows.
    groups : sequence (n,), optional
        Patient id per row; without it each row is its own patient.
    fractions : (train, val, test)
        Target fractions of *patients*; they must sum to 1.
    seed : int

    Returns
    -------
    ndarray (n,) of str
        ``"train"``, ``"val"`` or ``"test"``.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ProbeError(f"split fractions must be three non-negative numbers summing to 1; got {fractions}.")
    g = _groups(groups, n)
    uniq, codes = np.unique(g, return_inverse=True)
    perm = np.random.default_rng(seed).permutation(uniq.size)
    cut1 = int(round(fractions[0] * uniq.size))
    cut2 = cut1 + int(round(fractions[1] * uniq.size))
    which = np.empty(uniq.size, dtype=object)
    which[perm[:cut1]], which[perm[cut1:cut2]], which[perm[cut2:]] = "train", "val", "test"
    return which[codes].astype(str)


def carve_val(split: np.ndarray, *, groups=None, fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Move ``fraction`` of the training patients to ``"val"`` (DINOv2's rule when no held-out set exists)."""
    split = np.asarray(split).astype(str).copy()
    g = _groups(groups, split.size)
    train_patients = np.unique(g[split == "train"])
    if train_patients.size < 2:
        raise ProbeError("cannot carve a validation split from fewer than 2 training patients.")
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(fraction * train_patients.size)))
    chosen = rng.choice(train_patients, size=n_val, replace=False)
    split[(split == "train") & np.isin(g, chosen)] = "val"
    return split


def subsample_train(split: np.ndarray, *, fraction: float, groups=None, seed: int = 0) -> np.ndarray:
    """(n,) bool mask of the training rows kept when training on ``fraction`` of the training *patients*.

    Parameters
    ----------
    split : array (n,) of str
    fraction : float in (0, 1]
    groups : array (n,), optional
    seed : int
        Different seeds draw different subsets (repeated runs).
    """
    if not 0 < fraction <= 1:
        raise ProbeError(f"The 'label_fraction' must be in (0, 1]. Got {fraction}.")
    split = np.asarray(split).astype(str)
    train = split == "train"
    if fraction == 1:
        return train
    g = _groups(groups, split.size)
    patients = np.unique(g[train])
    n_keep = max(1, int(round(fraction * patients.size)))
    keep = np.random.default_rng(seed).choice(patients, size=n_keep, replace=False)
    return train & np.isin(g, keep)


def check_no_leak(split: np.ndarray, groups) -> None:
    """Raise ProbeError if a patient has rows in two different splits."""
    if groups is None:
        return
    s = np.asarray(split).astype(str)
    g = np.asarray(groups).astype(str)
    used = np.isin(s, SPLITS)
    pairs = np.unique(np.stack([g[used], s[used]], axis=1), axis=0)
    pats, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        bad = pats[counts > 1][:3].tolist()
        raise ProbeError(f"{int((counts > 1).sum())} patients appear in more than one split (e.g. {bad}); "
                         "the test set would leak. Fix the split or drop the store's split array.")
