"""``compare``: mean AUROC [95% CI] per finished run, paired bootstrap tests against a reference, per-label deltas.

Runs of any kind (probe, finetune ...) pair only when their labels, test ids, test label values and bootstrap
resamples are identical; otherwise the comparison is refused with the first difference named
(:func:`probes.report.check_pairing`). The reference is matched by resolved path, so another spelling of a run's
directory is that run, never a second copy of it. The paired two-sided p-values are adjusted for multiple
comparisons (:mod:`probes.adjust`; Holm by default) and every table and file carries both, with the bootstrap's
``n_boot`` so a p-value of 0 can be shown as ``<1/n_boot``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

COMPARE_COLUMNS = ("run", "kind", "dataset", "initialization", "backbone", "image_size", "head", "features",
                   "label_fraction", "seed", "auroc", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high",
                   "p_run_le_ref", "p_ref_le_run", "p_two_sided", "p_adjusted", "adjust", "n_boot", "is_reference")


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare` produced.

    Attributes
    ----------
    reference : str
        Display name of the reference run.
    runs : list[dict]
        One row per run (display name, identity, head, features, mean AUROC with CI, paired delta / CI / p).
    per_label : list[dict]
        Per-label deltas of each run against the reference.
    out : Path or None
        Where compare.json, compare.csv, per_label_deltas.csv and forest.png were written.
    adjust : {"holm", "bh", "none"}
        The multiple-comparison adjustment behind each row's ``p_adjusted`` (run-level p-values are one family,
        per-label p-values another).
    """

    reference: str
    runs: list[dict]
    per_label: list[dict]
    out: Path | None = None
    adjust: str = "holm"

    def to_dict(self) -> dict:
        """The ``compare.json`` document."""
        return {"reference": self.reference, "adjust": self.adjust, "runs": self.runs, "per_label": self.per_label}


def expand_runs(paths: Sequence[str | Path]) -> list[Path]:
    """A directory of sub-runs (multi-fraction / multi-seed probe output) stands for its sub-runs."""
    out = []
    for p in map(Path, paths):
        if (p / "metrics.json").exists() or not p.is_dir():
            out.append(p)
        else:
            subs = sorted(d for d in p.iterdir() if (d / "metrics.json").exists())
            out.extend(subs or [p])
    return out


def compare(runs: Sequence[str | Path], *, reference: str | Path | None = None,
            out: str | Path | None = None, adjust: Literal["holm", "bh", "none"] = "holm") -> CompareResult:
    """Compare finished runs against a reference on their shared test set.

    Parameters
    ----------
    runs : sequence of str or Path
        Run directories; a directory of sub-runs stands for all of them.
    reference : str or Path, optional
        The run the others are tested against (default: the first); added when not among ``runs``.
    out : str or Path, optional
        Folder for compare.json, compare.csv, per_label_deltas.csv and forest.png.
    adjust : {"holm", "bh", "none"}
        Multiple-comparison adjustment of the paired two-sided p-values (``p_adjusted``): Holm (family-wise error)
        by default, Benjamini-Hochberg (false discovery rate), or none. The run-level p-values form one family,
        the per-label p-values another.

    Returns
    -------
    CompareResult

    Raises
    ------
    PairingError
        Runs with different labels, test ids, test label values or resamples (the first difference is named).
    ProbeError
        A path that is not a finished run, or an unknown ``adjust``.

    Examples
    --------
    >>> compare(["runs/a", "runs/b"], reference="runs/a", adjust="bh").runs[1]["p_adjusted"]  # doctest: +SKIP
    """
    from probes.report import compare_runs, forest_plot, load_run, to_json, write_csv

    records = [load_run(p) for p in expand_runs(runs)]
    ref = load_run(reference) if reference is not None else None
    doc = compare_runs(records, reference=ref, adjust=adjust)
    result = CompareResult(doc["reference"], doc["runs"], doc["per_label"], None if out is None else Path(out),
                           adjust=doc["adjust"])
    if result.out is not None:
        result.out.mkdir(parents=True, exist_ok=True)
        (result.out / "compare.json").write_text(to_json(result.to_dict()) + "\n")
        write_csv(result.out / "compare.csv", COMPARE_COLUMNS, result.runs)
        if result.per_label:
            write_csv(result.out / "per_label_deltas.csv", list(result.per_label[0]), result.per_label)
        forest_plot(result.out / "forest.png", result.runs)
    return result
