"""Run directories and comparisons: what a probe run writes, how it is read back, and paired comparisons.

A run directory holds ``metrics.json`` (strict JSON), ``per_label.csv`` (the reference study's schema, in %, then
the point estimates), ``predictions.csv``, ``test_labels.csv`` (the test ids and labels, for pairing),
``head.safetensors``, ``roc.png`` and ``bootstrap.npz`` (per-resample AUROC and AP, for paired comparisons). It is
written into a temporary sibling and renamed into place, so a directory with ``metrics.json`` is always complete.
Display names (dataset, backbone ...) come from the caller; nothing here parses model or dataset names.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from probes.adjust import ADJUST_METHODS, Adjust, adjust_pvalues
from probes.bootstrap import paired_compare
from probes.errors import PairingError, ProbeError
from probes.metrics import roc_curve

logger = logging.getLogger(__name__)

SCHEMA = "embedkit.probe/1"
# The reference study's eleven columns first (its figure scripts read them by name), then the point estimates.
PER_LABEL_COLUMNS = ("dataset", "initialization", "backbone", "image_size", "label", "AUROC_mean", "AUROC_ci_low",
                     "AUROC_ci_high", "mAP_mean", "mAP_ci_low", "mAP_ci_high", "AUROC_point", "mAP_point")
PER_LABEL_NOTES = {
    "AUROC_mean": "mean of the bootstrap resamples' AUROC, % (the reference study's 'mean')",
    "AUROC_ci_low": "2.5th percentile of the bootstrap resamples' AUROC, %",
    "AUROC_ci_high": "97.5th percentile of the bootstrap resamples' AUROC, %",
    "mAP_mean": "mean of the bootstrap resamples' average precision, %",
    "mAP_ci_low": "2.5th percentile of the bootstrap resamples' average precision, %",
    "mAP_ci_high": "97.5th percentile of the bootstrap resamples' average precision, %",
    "AUROC_point": "AUROC on the whole test set (point estimate; metrics.json 'value'), %",
    "mAP_point": "average precision on the whole test set (point estimate), %",
    "macro_avg": "row: the mean over labels, computed per resample (labels with one class excluded)",
}


def per_label_rows(summary: dict, label_names: Sequence[str], info: dict) -> list[dict]:
    """Rows of ``per_label.csv`` from ``Evaluation.to_dict()``: one per label plus ``macro_avg``, in %.

    ``info`` holds the display names (dataset, initialization, backbone, image_size) given by the caller; the
    columns are documented in ``PER_LABEL_NOTES``.
    """

    def pct(v):
        return None if v is None or not np.isfinite(v) else round(100.0 * float(v), 4)

    base = {k: info.get(k) for k in ("dataset", "initialization", "backbone", "image_size")}
    rows = []
    for label in label_names:
        a, p = summary["per_label"][label]["auroc"], summary["per_label"][label]["ap"]
        rows.append({**base, "label": label, **_pct_block(a, p, pct)})
    rows.append({**base, "label": "macro_avg", **_pct_block(summary["means"]["auroc"], summary["means"]["ap"], pct)})
    return rows


def _pct_block(a: dict, p: dict, pct) -> dict:
    return {"AUROC_mean": pct(a["boot_mean"]), "AUROC_ci_low": pct(a["ci_low"]), "AUROC_ci_high": pct(a["ci_high"]),
            "mAP_mean": pct(p["boot_mean"]), "mAP_ci_low": pct(p["ci_low"]), "mAP_ci_high": pct(p["ci_high"]),
            "AUROC_point": pct(a["value"]), "mAP_point": pct(p["value"])}


def write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})


def write_predictions(path: Path, ids: Sequence[str], split: np.ndarray, scores: np.ndarray,
                      label_names: Sequence[str]) -> None:
    """``id, split, <label>...`` with one row per store row (probabilities, 6 decimals)."""
    import pandas as pd

    df = pd.DataFrame(np.asarray(scores, dtype=np.float64), columns=list(label_names))
    df.insert(0, "split", np.asarray(split).astype(str))
    df.insert(0, "id", np.asarray(ids).astype(str))
    df.to_csv(path, index=False, float_format="%.6f")


def plot_roc(path: Path, y_true: np.ndarray, scores: np.ndarray, label_names: Sequence[str], title: str) -> None:
    """One ROC curve per label (test split) with its AUROC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probes.metrics import auroc

    fig, ax = plt.subplots(figsize=(6, 6))
    aucs = np.atleast_1d(auroc(y_true, scores))
    for k, name in enumerate(label_names):
        if not np.isfinite(aucs[k]):
            continue
        fpr, tpr, _ = roc_curve(y_true[:, k], scores[:, k])
        ax.plot(fpr, tpr, lw=1, label=f"{name} ({aucs[k]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.5)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_head(path: Path, tensors: dict[str, np.ndarray], metadata: dict) -> None:
    """safetensors file of the head's arrays; ``metadata`` values are JSON-encoded strings."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(arrays, str(path), metadata={k: json.dumps(v, default=str) for k, v in metadata.items()})


class RunWriter:
    """Context manager: files go into a temporary sibling of ``run_dir``, renamed into place on success.

    Raises ProbeError if ``run_dir`` already holds a finished run and ``overwrite`` is False.
    """

    def __init__(self, run_dir: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.run_dir = Path(run_dir)
        if (self.run_dir / "metrics.json").exists() and not overwrite:
            raise ProbeError(f"Run directory '{self.run_dir}' already holds a finished run. Use --overwrite or "
                             "another --out.")
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.run_dir.parent, prefix=f".{self.run_dir.name}.tmp-"))

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.run_dir.exists():
            # A finished run is replaced only on --overwrite (checked above); the old one is moved aside first.
            old = self.run_dir.with_name(f".{self.run_dir.name}.old-{os.getpid()}")
            os.replace(self.run_dir, old)
            os.replace(self.tmp, self.run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.run_dir)


def json_default(v):
    """``json.dumps`` fallback for numpy scalars / arrays and paths."""
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def _strict(v):
    if isinstance(v, dict):
        return {str(k): _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    if isinstance(v, (str, bool, int)) or v is None:
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    return _strict(json_default(v))


def to_json(obj, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj``: NaN and infinities become null, numpy values plain numbers, paths strings.

    >>> to_json({"auroc": float("nan"), "n": np.int64(3)}, indent=None)
    '{"auroc": null, "n": 3}'
    """
    return json.dumps(_strict(obj), indent=indent, allow_nan=False)


def label_hash(label_names: Sequence[str], y: np.ndarray) -> str:
    """sha256 of the label names and the (T, K) label values (NaN = unknown), the pairing check of labels."""
    h = hashlib.sha256("\n".join(map(str, label_names)).encode())
    h.update(np.ascontiguousarray(np.where(np.isnan(y), -1.0, y), dtype="<f8").tobytes())
    return h.hexdigest()


def write_test_labels(path: Path, ids: Sequence[str], y: np.ndarray, label_names: Sequence[str]) -> None:
    """``test_labels.csv``: ``id, <label>...`` of the test rows in canonical order (1 / 0 / blank = unknown)."""
    rows = [{"id": i, **{k: ("" if np.isnan(v) else int(v)) for k, v in zip(label_names, r)}}
            for i, r in zip(np.asarray(ids).astype(str), np.asarray(y, dtype=np.float64))]
    write_csv(path, ["id", *label_names], rows)


def write_run(run_dir: Path, res, *, ids, split, y, meta: dict, plan=None, plan_path=None,
              overwrite: bool = False) -> dict:
    """Write every file of one run atomically; return the ``metrics.json`` document.

    Any run evaluated on a test set can be written (``meta['kind']``: ``probe`` by default, e.g. ``finetune``):
    the head's selection facts and ``head.safetensors`` are written when ``res.head`` has them.

    Parameters
    ----------
    run_dir : Path
    res : RunResult
        Or any object with ``label_names``, ``label_fraction``, ``seed``, ``n_train``, ``n_val``, ``n_test``,
        ``test_rows`` (T,), ``scores`` (N, K), ``thresholds`` (K,), ``evaluation``, ``timings``.
    ids : array (N,) of str
    split : array (N,) of str
    y : array (N, K) labels (the test rows are recorded in ``test_labels.csv`` and hashed for pairing)
    meta : dict
        Run-level facts copied into the document: ``head``, ``features``, ``store`` (path, fingerprint),
        ``provenance`` (display names from the caller: dataset, initialization, backbone, image_size), ``split``,
        ``bootstrap`` ...
    plan : BootstrapPlan
        The plan the evaluation used (its hashes make the run comparable).
    plan_path : Path
    overwrite : bool
    """
    ev = res.evaluation
    summary = ev.to_dict()
    head = getattr(res, "head", None)
    kind = meta.get("kind", "probe")
    y_test = np.asarray(y, dtype=np.float64)[res.test_rows]
    test_ids = np.asarray(ids).astype(str)[res.test_rows]
    doc = {
        "schema": SCHEMA if kind == "probe" else f"embedkit.{kind}/1",
        "kind": kind,
        **meta,
        "label_fraction": res.label_fraction,
        "seed": res.seed,
        "labels": list(res.label_names),
        "chosen": getattr(head, "best_params_", None),
        "val_mean_auroc": getattr(head, "best_val_auroc_", None),
        "candidates": getattr(head, "results_", None),
        "history": getattr(head, "history_", None),
        "n": {"train": res.n_train, "val": res.n_val, "test": res.n_test},
        "thresholds": dict(zip(res.label_names, map(float, res.thresholds))),
        "test": summary,
        "mean_auroc": summary["means"]["auroc"],
        "columns": {"per_label.csv": PER_LABEL_NOTES,
                    "test.means / test.per_label": "'value' = point estimate on the whole test set; 'boot_mean', "
                                                   "'sd', 'ci_low', 'ci_high' = over the bootstrap resamples"},
        "pairing": {"test_ids_sha256": plan.ids_sha256 if plan else None,
                    "test_labels_sha256": label_hash(res.label_names, y_test),
                    "boot_matrix_sha256": plan.matrix_sha256 if plan else None,
                    "boot_key": plan.key if plan else None, "plan_path": None if plan_path is None else str(plan_path)},
        "timings": {k: round(v, 4) for k, v in res.timings.items()},
    }
    info = meta.get("provenance") or {}
    with RunWriter(run_dir, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(to_json(doc) + "\n")
        write_csv(tmp / "per_label.csv", PER_LABEL_COLUMNS, per_label_rows(summary, res.label_names, info))
        write_predictions(tmp / "predictions.csv", ids, split, res.scores, res.label_names)
        write_test_labels(tmp / "test_labels.csv", test_ids, y_test, res.label_names)
        if ev.boot:
            np.savez(tmp / "bootstrap.npz", auroc=ev.boot["auroc"], ap=ev.boot["ap"])
        if hasattr(head, "state_dict"):
            save_head(tmp / "head.safetensors", head.state_dict(),
                      {"head": meta.get("head"), "features": meta.get("features"), "labels": list(res.label_names),
                       "chosen": getattr(head, "best_params_", None),
                       "store_fingerprint": (meta.get("store") or {}).get("fingerprint")})
        plot_roc(tmp / "roc.png", y_test, res.scores[res.test_rows], res.label_names,
                 f"{info.get('dataset')}: {info.get('initialization')}/{info.get('backbone')} "
                 f"@{info.get('image_size')} — {meta.get('head')} on {meta.get('features')}")
    return doc


# ----------------------------------------------------------------------------------------------- reading, comparing
@dataclass(frozen=True)
class RunRecord:
    """A finished run read back: its metrics document and per-resample metrics (B, K)."""

    path: Path
    metrics: dict
    boot_auroc: np.ndarray | None
    boot_ap: np.ndarray | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label_names(self) -> list[str]:
        return list(self.metrics["labels"])

    def same_run(self, other: RunRecord) -> bool:
        """True when both records are the same directory, however their paths were spelled."""
        return self.path.resolve() == other.path.resolve()


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read ``metrics.json`` and ``bootstrap.npz`` of a run directory (a probe run or any other kind)."""
    p = Path(run_dir)
    mpath = p / "metrics.json"
    if not mpath.exists():
        raise ProbeError(f"'{p}' is not a finished run (no metrics.json). Run 'embedkit probe' first.")
    metrics = json.loads(mpath.read_text())
    schema = str(metrics.get("schema"))
    if not (schema.startswith("embedkit.") and schema.endswith("/1")):
        raise ProbeError(f"'{mpath}' has schema {metrics.get('schema')!r}; this embedkit reads 'embedkit.<kind>/1' "
                         f"(e.g. {SCHEMA!r}).")
    ba = bp = None
    if (p / "bootstrap.npz").exists():
        with np.load(p / "bootstrap.npz") as z:
            ba, bp = z["auroc"], z["ap"]
    return RunRecord(p, metrics, ba, bp)


def _read_test_labels(run: RunRecord) -> tuple[list[str], list[dict]] | None:
    path = run.path / "test_labels.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["id"] for r in rows], rows


def _first_test_difference(a: RunRecord, b: RunRecord, an: str, bn: str) -> str:
    """Name the first test id or label value that differs between two runs' ``test_labels.csv``."""
    ta, tb = _read_test_labels(a), _read_test_labels(b)
    if ta is None or tb is None:
        old = an if ta is None else bn
        return f"run '{old}' records no test labels (written by an older embedkit); re-run it"
    (ids_a, rows_a), (ids_b, rows_b) = ta, tb
    for i, (x, z) in enumerate(zip(ids_a, ids_b)):
        if x != z:
            return f"test row {i} (id order) is '{x}' in '{an}' but '{z}' in '{bn}'"
    if len(ids_a) != len(ids_b):
        longer, extra = (an, ids_a[len(ids_b)]) if len(ids_a) > len(ids_b) else (bn, ids_b[len(ids_a)])
        return f"'{an}' has {len(ids_a)} test rows, '{bn}' {len(ids_b)} (first extra: '{extra}' in '{longer}')"
    for ra, rb in zip(rows_a, rows_b):
        for label in a.label_names:
            if ra.get(label) != rb.get(label):
                return (f"label '{label}' of test id '{ra['id']}' is {ra.get(label) or 'unknown'} in '{an}' but "
                        f"{rb.get(label) or 'unknown'} in '{bn}'")
    return "their recorded hashes differ"


def check_pairing(a: RunRecord, b: RunRecord, names: tuple[str, str] | None = None) -> None:
    """Raise PairingError unless both runs have the same labels, test ids, test label values and resamples.

    The message names the first difference (a test id, or a label value of one id).
    """
    an, bn = names or (a.name, b.name)
    if a.label_names != b.label_names:
        raise PairingError(f"Runs '{an}' and '{bn}' have different labels ({', '.join(a.label_names)} vs "
                           f"{', '.join(b.label_names)}). Probe both with the same --labels.")
    pa, pb = a.metrics.get("pairing", {}), b.metrics.get("pairing", {})
    same_ids = pa.get("test_ids_sha256") == pb.get("test_ids_sha256")
    same_labels = pa.get("test_labels_sha256") is not None and \
        pa.get("test_labels_sha256") == pb.get("test_labels_sha256")
    if not (same_ids and same_labels):
        what = "different test sets" if not same_ids else "different test labels"
        raise PairingError(f"Runs '{an}' and '{bn}' were evaluated on {what}: {_first_test_difference(a, b, an, bn)}; "
                           "paired statistics are meaningless. Compare runs of the same test split and labels.")
    if pa.get("boot_matrix_sha256") != pb.get("boot_matrix_sha256") or a.boot_auroc is None or b.boot_auroc is None:
        raise PairingError(f"Runs '{an}' and '{bn}' used different bootstrap resamples (n-boot, seed or "
                           "grouping differ). Re-run with the same --n-boot, --boot-seed and --bootstrap.")


def display_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names for run directories: the leaf, with as many parents as it takes to tell them apart.

    >>> display_names([Path("runA/frac1-seed0"), Path("runB/frac1-seed0"), Path("runB/x")])
    ['runA/frac1-seed0', 'runB/frac1-seed0', 'x']
    """
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(pp[-d:]) for pp, d in zip(parts, depth)]
        clash = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clash and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def compare_runs(runs: Sequence[RunRecord], *, reference: RunRecord | None = None, adjust: Adjust = "holm") -> dict:
    """Summary rows per run and paired statistics of each run against the reference.

    Parameters
    ----------
    runs : sequence of RunRecord
    reference : RunRecord, optional
        Matched to ``runs`` by resolved path (any spelling of the same directory); added first when absent.
        Default: the first run.
    adjust : {"holm", "bh", "none"}
        Multiple-comparison adjustment (:func:`probes.adjust.adjust_pvalues`) of the two-sided p-values. Two
        families: the run-level p-values (one per non-reference run), and the per-label p-values (every run x
        label). Each row gets ``p_adjusted``, ``adjust`` and ``n_boot`` (the resamples behind its p-value).

    Returns
    -------
    dict
        ``reference`` (display name), ``adjust``, ``runs`` (one row each: display name, dataset, backbone,
        initialization, image_size, head, features, mean AUROC with CI, paired delta / CI / p / adjusted p against
        the reference), ``per_label`` (delta rows). Repeated leaf names are shown with their parents
        (``runA/frac1-seed0``).

    Raises
    ------
    PairingError
        If a run's labels, test ids, test label values or resamples differ from the reference's.
    ProbeError
        An unknown ``adjust`` method.

    Examples
    --------
    >>> doc = compare_runs([load_run("runs/a"), load_run("runs/b")], adjust="bh")  # doctest: +SKIP
    >>> doc["runs"][1]["p_adjusted"]                                              # doctest: +SKIP
    """
    if adjust not in ADJUST_METHODS:
        raise ProbeError(f"The 'adjust' parameter of compare must be one of {', '.join(ADJUST_METHODS)}. "
                         f"Got {adjust!r}.")
    if not runs:
        raise ProbeError("compare needs at least one run directory.")
    runs = list(runs)
    ref = reference or runs[0]
    match = [r for r in runs if r.same_run(ref)]
    if match:
        ref = match[0]
    else:
        runs.insert(0, ref)
    unique: list[RunRecord] = []
    for r in runs:  # the same directory named twice is one run
        if not any(r.same_run(u) for u in unique):
            unique.append(r)
    names = dict(zip(map(id, unique), display_names([r.path for r in unique])))
    ref_name = names[id(ref)]
    rows, label_rows = [], []
    for r in unique:
        m, name = r.metrics, names[id(r)]
        mean = m["test"]["means"]["auroc"]
        info = m.get("provenance", {})
        is_ref = r is ref
        row = {"run": name, "path": str(r.path), "kind": m.get("kind", "probe"), "dataset": info.get("dataset"),
               "initialization": info.get("initialization"), "backbone": info.get("backbone"),
               "image_size": info.get("image_size"), "head": m.get("head"), "features": m.get("features"),
               "label_fraction": m.get("label_fraction"), "seed": m.get("seed"),
               "auroc": mean["value"], "auroc_boot_mean": mean["boot_mean"], "ci_low": mean["ci_low"],
               "ci_high": mean["ci_high"], "is_reference": is_ref}
        if not is_ref:
            check_pairing(r, ref, (name, ref_name))
            pa = np.array([m["test"]["per_label"][k]["auroc"]["value"] for k in r.label_names], dtype=np.float64)
            pb = np.array([ref.metrics["test"]["per_label"][k]["auroc"]["value"] for k in ref.label_names],
                          dtype=np.float64)
            st = paired_compare(r.boot_auroc, ref.boot_auroc, point_a=pa, point_b=pb)
            row.update({"delta": st["delta_mean"], "delta_ci_low": st["ci_low_mean"],
                        "delta_ci_high": st["ci_high_mean"], "p_run_le_ref": st["p_a_le_b_mean"],
                        "p_ref_le_run": st["p_b_le_a_mean"], "p_two_sided": st["p_two_sided_mean"]})
            for k, label in enumerate(r.label_names):
                label_rows.append({"run": name, "reference": ref_name, "label": label, "auroc": pa[k],
                                   "reference_auroc": pb[k], "delta": st["delta"][k], "ci_low": st["ci_low"][k],
                                   "ci_high": st["ci_high"][k], "p_run_le_ref": st["p_a_le_b"][k],
                                   "p_ref_le_run": st["p_b_le_a"][k], "p_two_sided": st["p_two_sided"][k]})
        rows.append(row)
    _adjust_family([r for r in rows if not r["is_reference"]], adjust)
    _adjust_family(label_rows, adjust)
    n_boot = None if ref.boot_auroc is None else int(ref.boot_auroc.shape[0])
    for r in rows:
        r.update({"n_boot": n_boot, "adjust": None if r["is_reference"] else adjust})
        r.setdefault("p_adjusted", None)
    for r in label_rows:
        r.update({"n_boot": n_boot, "adjust": adjust})
    return {"reference": ref_name, "adjust": adjust, "runs": rows, "per_label": label_rows}


def _adjust_family(rows: list[dict], method: Adjust) -> None:
    """Set ``p_adjusted`` of ``rows`` from their ``p_two_sided``, adjusted as one family (None for a NaN p)."""
    if not rows:
        return
    raw = np.array([np.nan if r.get("p_two_sided") is None else float(r["p_two_sided"]) for r in rows])
    for r, q in zip(rows, adjust_pvalues(raw, method)):
        r["p_adjusted"] = float(q) if np.isfinite(q) else None


def forest_plot(path: Path, rows: list[dict], title: str = "Mean AUROC [95% CI]") -> None:
    """Horizontal CI bars of each run's mean AUROC; the reference is drawn in black with a dashed line.

    Each run is labelled with its name and features; the title names the features when all runs share them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def num(v) -> float:
        return float("nan") if v is None else float(v)

    features = {r.get("features") for r in rows}
    if len(features) == 1:
        title = f"{title} — features {features.pop()}"
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        x, lo, hi = num(r["auroc"]), num(r["ci_low"]), num(r["ci_high"])
        color = "black" if r.get("is_reference") else "tab:blue"
        if np.isfinite(lo) and np.isfinite(hi):
            ax.errorbar(x, y, xerr=[[x - lo], [hi - x]], fmt="o", color=color, capsize=3)
        else:
            ax.plot(x, y, "o", color=color)
        if r.get("is_reference"):
            ax.axvline(x, color="black", ls="--", lw=0.7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['run']} ({r.get('features')})" for r in reversed(rows)])
    ax.set(xlabel="mean AUROC", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
