"""Label-fraction subsampling of a given split (the split itself always comes from the caller).

Probes never make a train/val/test split: the application layer reads it from the store or makes it with
embedkit's one patient-split rule, audits it for leakage, and passes the arrays in.
"""
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


def subsample_train(split: np.ndarray, *, fraction: float, groups=None, seed: int = 0) -> np.ndarray:
    """(n,) bool mask of the training rows kept when training on ``fraction`` of the training *patients*.

    Parameters
    ----------
    split : array (n,) of str
    fraction : float in (0, 1]
    groups : array (n,), optional
        The split unit of each row (patient, or connected patient/study component); without it, images.
    seed : int
        Different seeds draw different subsets (repeated runs).

    Returns
    -------
    ndarray (n,) of bool

    Examples
    --------
    >>> subsample_train(np.array(["train", "train", "test"]), fraction=1.0).tolist()
    [True, True, False]
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
