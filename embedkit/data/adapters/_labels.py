"""Choosing the label columns of a manifest: the full set, the reference study's subset, or a named list."""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import pandas as pd

from embedkit.data.adapters._common import merge_labels, snake
from embedkit.errors import DataError


def select_labels(frame: pd.DataFrame, full: Sequence[str], labels: str | Sequence[str], *,
                  module: ModuleType | None, source: str) -> tuple[list[str], np.ndarray]:
    """The label names and matrix that ``labels`` asks for.

    Parameters
    ----------
    frame : pd.DataFrame
        Rows with the float label columns ``full``.
    full : sequence of str
        All label columns of the source, in order.
    labels : 'full', 'paper', a comma-separated string or a list of names
        Names match exactly or after snake_casing (``"Pleural Effusion"`` -> ``pleural_effusion``).
    module : module or None
        The adapter, whose ``PAPER_LABELS`` maps each paper label to source columns (merged).

    Returns
    -------
    names : list of str
        (K,)
    block : np.ndarray
        (N, K) float32 with 1 / 0 / -1 / NaN.
    """
    full = list(full)
    values = frame[full].to_numpy(dtype=np.float32).reshape(len(frame), len(full))
    if isinstance(labels, str) and labels.strip().lower() == "full":
        return full, values
    if isinstance(labels, str) and labels.strip().lower() == "paper":
        return _paper(values, full, module=module, source=source)
    wanted = [x.strip() for x in labels.split(",")] if isinstance(labels, str) else [str(x) for x in labels]
    wanted = [x for x in wanted if x]
    if not wanted:
        raise DataError("The 'labels' parameter must be 'full', 'paper' or a list of label names. Got an empty list.")
    names = []
    for name in wanted:
        key = name if name in full else snake(name)
        if key not in full:
            close = difflib.get_close_matches(snake(name), full, n=1, cutoff=0.6)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            raise DataError(f"{source} has no label '{name}'. {hint}Its labels: {', '.join(full[:20])}"
                            f"{' ...' if len(full) > 20 else ''}.")
        names.append(key)
    if len(set(names)) != len(names):
        raise DataError(f"The 'labels' parameter names a label twice: {wanted}.")
    return names, values[:, [full.index(n) for n in names]]


def _paper(values: np.ndarray, full: list[str], *, module: ModuleType | None,
           source: str) -> tuple[list[str], np.ndarray]:
    paper = getattr(module, "PAPER_LABELS", None) if module is not None else None
    if not paper:
        raise DataError(f"{source}: labels='paper' needs a known dataset (an adapter, or a manifest whose "
                        f"'dataset' column names one); pass --labels full or a list instead.")
    open_vocabulary = getattr(module, "LABELS", ()) is None
    # For a positives-only vocabulary (PadChest), a term nobody used is simply never positive.
    absent = np.where((values == 0).any(axis=1), 0.0, np.nan).astype(np.float32) if len(full) else None
    columns, missing = [], []
    for name, sources in paper.items():
        present = [full.index(s) for s in sources if s in full]
        if present:
            columns.append(merge_labels(values[:, present]))
        elif open_vocabulary and absent is not None:
            columns.append(absent)
        else:
            missing.append(name)
    if missing:
        raise DataError(f"{source} lacks the paper label(s) {missing} (e.g. VinDr's Kaggle layout has no global "
                        f"labels); pass --labels full or a list of the labels it has.")
    block = np.stack(columns, axis=1) if columns else np.empty((len(values), 0), np.float32)
    return list(paper), block.astype(np.float32)
