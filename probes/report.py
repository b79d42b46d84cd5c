"""Run directories and comparisons: what a probe run writes, how it is read back, and paired comparisons.

A run directory holds ``metrics.json``, ``per_label.csv`` (the reference study's schema, in %), ``predictions.csv``,
``head.safetensors``, ``roc.png`` and ``bootstrap.npz`` (per-resample AUROC and AP, for paired comparisons). It is
written into a temporary sibling and renamed into place, so a directory with ``metrics.json`` is always complete.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from probes.bootstrap import paired_compare
from probes.errors import PairingError, ProbeError
from probes.metrics import roc_curve

logger = logging.getLogger(__name__)

SCHEMA = "embedkit.probe/1"
PER_LABEL_COLUMNS = ("dataset", "initialization", "backbone", "image_size", "label", "AUROC_mean", "AUROC_ci_low",
                     "AUROC_ci_high", "mAP_mean", "mAP_ci_low", "mAP_ci_high")


def describe_provenance(provenance: dict | None) -> dict:
    """Reduce a store provenance document to the reference study's row keys.

    ``dinov3-vitb16`` -> initialization ``dinov3``, backbone ``vitb``; ``dinov3-convnext-base`` -> ``convnext``;
    ``chexpert:/data/x`` -> dataset ``chexpert``. Unknown shapes fall back to the raw names.
    """
    prov = provenance or {}
    bb = prov.get("backbone") or {}
    name = str(bb.get("name") or bb.get("id") or "unknown")
    short = name.split("/")[-1].split(":")[-1]
    init, _, arch = short.partition("-")
    if not arch:
        init, arch = str(bb.get("source") or "unknown"), short
    arch = arch.split("-pretrain")[0]
    if arch.startswith("convnext"):
        arch = "convnext"
    else:
        m = re.match(r"^(vit[0-9]*[a-z]?)\d*", arch.replace("-", ""))
        arch = m.group(1) if m else arch
    ds = prov.get("dataset") or {}
    spec = str(ds.get("spec") or ds.get("name") or "unknown")
    dataset = spec.split(":", 1)[0] if ":" in spec and not re.match(r"^[A-Za-z]:[\\/]", spec) else Path(spec).stem
    return {"dataset": dataset, "initialization": init, "backbone": arch, "image_size": prov.get("resolution"),
            "backbone_name": name}


def per_label_rows(summary: dict, label_names: Sequence[str], info: dict) -> list[dict]:
    """Rows of ``per_label.csv`` from ``Evaluation.to_dict()``: one per label plus ``macro_avg``, in %."""

    def pct(v):
        return None if v is None or not np.isfinite(v) else round(100.0 * float(v), 4)

    base = {k: info.get(k) for k in ("dataset", "initialization", "backbone", "image_size")}
    rows = []
    for label in label_names:
        a, p = summary["per_label"][label]["auroc"], summary["per_label"][label]["ap"]
        rows.append({**base, "label": label, "AUROC_mean": pct(a["boot_mean"]), "AUROC_ci_low": pct(a["ci_low"]),
                     "AUROC_ci_high": pct(a["ci_high"]), "mAP_mean": pct(p["boot_mean"]),
                     "mAP_ci_low": pct(p["ci_low"]), "mAP_ci_high": pct(p["ci_high"])})
    a, p = summary["means"]["auroc"], summary["means"]["ap"]
    rows.append({**base, "label": "macro_avg", "AUROC_mean": pct(a["boot_mean"]), "AUROC_ci_low": pct(a["ci_low"]),
                 "AUROC_ci_high": pct(a["ci_high"]), "mAP_mean": pct(p["boot_mean"]), "mAP_ci_low": pct(p["ci_low"]),
                 "mAP_ci_high": pct(p["ci_high"])})
    return rows


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


def write_run(run_dir: Path, res, *, ids, split, y, meta: dict, plan=None, plan_path=None,
              overwrite: bool = False) -> dict:
    """Write every file of one run atomically; return the ``metrics.json`` document.

    Parameters
    ----------
    run_dir : Path
    res : RunResult
    ids : array (N,) of str
    split : array (N,) of str
    y : array (N, K) labels (for the ROC plot of the test rows)
    meta : dict
        Run-level facts: ``head``, ``features``, ``store`` (path, fingerprint), ``provenance``
        (``describe_provenance`` keys), ``split``, ``bootstrap`` ... copied into the document.
    plan : BootstrapPlan
        The plan the evaluation used (its hashes make the run comparable).
    plan_path : Path
    overwrite : bool
    """
    ev = res.evaluation
    summary = ev.to_dict()
    doc = {
        "schema": SCHEMA,
        **meta,
        "label_fraction": res.label_fraction,
        "seed": res.seed,
        "labels": res.label_names,
        "chosen": res.head.best_params_,
        "val_mean_auroc": res.head.best_val_auroc_,
        "candidates": res.head.results_,
        "history": res.head.history_,
        "n": {"train": res.n_train, "val": res.n_val, "test": res.n_test},
        "thresholds": dict(zip(res.label_names, map(float, res.thresholds))),
        "test": summary,
        "mean_auroc": summary["means"]["auroc"],
        "pairing": {"test_ids_sha256": plan.ids_sha256 if plan else None,
                    "boot_matrix_sha256": plan.matrix_sha256 if plan else None,
                    "boot_key": plan.key if plan else None, "plan_path": None if plan_path is None else str(plan_path)},
        "timings": {k: round(v, 4) for k, v in res.timings.items()},
    }
    with RunWriter(run_dir, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(doc, indent=2, default=json_default) + "\n")
        write_csv(tmp / "per_label.csv", PER_LABEL_COLUMNS, per_label_rows(summary, res.label_names,
                                                                            meta.get("provenance") or {}))
        write_predictions(tmp / "predictions.csv", ids, split, res.scores, res.label_names)
        if ev.boot:
            np.savez(tmp / "bootstrap.npz", auroc=ev.boot["auroc"], ap=ev.boot["ap"])
        save_head(tmp / "head.safetensors", res.head.state_dict(),
                  {"head": meta["head"], "features": meta["features"], "labels": res.label_names,
                   "chosen": res.head.best_params_,
                   "store_fingerprint": (meta.get("store") or {}).get("fingerprint")})
        info = meta.get("provenance") or {}
        plot_roc(tmp / "roc.png", y[res.test_rows], res.scores[res.test_rows], res.label_names,
                 f"{info.get('initialization')}/{info.get('backbone')} @{info.get('image_size')} — {meta['head']}")
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


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read ``metrics.json`` and ``bootstrap.npz`` of a run directory."""
    p = Path(run_dir)
    mpath = p / "metrics.json"
    if not mpath.exists():
        raise ProbeError(f"'{p}' is not a finished probe run (no metrics.json). Run 'embedkit probe' first.")
    metrics = json.loads(mpath.read_text())
    if metrics.get("schema") != SCHEMA:
        raise ProbeError(f"'{mpath}' has schema {metrics.get('schema')!r}; this embedkit reads {SCHEMA!r}.")
    ba = bp = None
    if (p / "bootstrap.npz").exists():
        with np.load(p / "bootstrap.npz") as z:
            ba, bp = z["auroc"], z["ap"]
    return RunRecord(p, metrics, ba, bp)


def check_pairing(a: RunRecord, b: RunRecord) -> None:
    """Raise PairingError unless both runs were evaluated on the same test ids with the same resamples."""
    pa, pb = a.metrics.get("pairing", {}), b.metrics.get("pairing", {})
    if pa.get("test_ids_sha256") != pb.get("test_ids_sha256"):
        raise PairingError(f"Runs '{a.name}' and '{b.name}' were evaluated on different test sets; paired "
                           "statistics are meaningless. Compare runs of the same test split.")
    if pa.get("boot_matrix_sha256") != pb.get("boot_matrix_sha256") or a.boot_auroc is None or b.boot_auroc is None:
        raise PairingError(f"Runs '{a.name}' and '{b.name}' used different bootstrap resamples (n-boot, seed or "
                           "grouping differ). Re-run with the same --n-boot, --seed and --bootstrap.")
    if a.label_names != b.label_names:
        raise PairingError(f"Runs '{a.name}' and '{b.name}' have different labels.")


def compare_runs(runs: Sequence[RunRecord], *, reference: RunRecord | None = None) -> dict:
    """Summary rows per run and paired statistics of each run against the reference.

    Returns
    -------
    dict
        ``reference`` (name), ``runs`` (one row each: name, backbone, initialization, image_size, head, features,
        mean AUROC with CI, paired delta / CI / p against the reference), ``per_label`` (delta rows).

    Raises
    ------
    PairingError
        If a run's test set or resamples differ from the reference's.
    """
    if not runs:
        raise ProbeError("compare needs at least one run directory.")
    ref = reference or runs[0]
    rows, label_rows = [], []
    for r in runs:
        m = r.metrics
        mean = m["test"]["means"]["auroc"]
        info = m.get("provenance", {})
        row = {"run": r.name, "path": str(r.path), "dataset": info.get("dataset"),
               "initialization": info.get("initialization"), "backbone": info.get("backbone"),
               "image_size": info.get("image_size"), "head": m.get("head"), "features": m.get("features"),
               "label_fraction": m.get("label_fraction"), "seed": m.get("seed"),
               "auroc": mean["value"], "auroc_boot_mean": mean["boot_mean"], "ci_low": mean["ci_low"],
               "ci_high": mean["ci_high"], "is_reference": r.path == ref.path}
        if r.path != ref.path:
            check_pairing(r, ref)
            pa = np.array([m["test"]["per_label"][k]["auroc"]["value"] for k in r.label_names], dtype=np.float64)
            pb = np.array([ref.metrics["test"]["per_label"][k]["auroc"]["value"] for k in ref.label_names],
                          dtype=np.float64)
            st = paired_compare(r.boot_auroc, ref.boot_auroc, point_a=pa, point_b=pb)
            row.update({"delta": st["delta_mean"], "delta_ci_low": st["ci_low_mean"],
                        "delta_ci_high": st["ci_high_mean"], "p_run_le_ref": st["p_a_le_b_mean"],
                        "p_ref_le_run": st["p_b_le_a_mean"], "p_two_sided": st["p_two_sided_mean"]})
            for k, label in enumerate(r.label_names):
                label_rows.append({"run": r.name, "reference": ref.name, "label": label, "auroc": pa[k],
                                   "reference_auroc": pb[k], "delta": st["delta"][k], "ci_low": st["ci_low"][k],
                                   "ci_high": st["ci_high"][k], "p_run_le_ref": st["p_a_le_b"][k],
                                   "p_ref_le_run": st["p_b_le_a"][k], "p_two_sided": st["p_two_sided"][k]})
        rows.append(row)
    return {"reference": ref.name, "runs": rows, "per_label": label_rows}


def forest_plot(path: Path, rows: list[dict], title: str = "Mean AUROC [95% CI]") -> None:
    """Horizontal CI bars of each run's mean AUROC; the reference is drawn in black with a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        x, lo, hi = r["auroc"], r["ci_low"], r["ci_high"]
        color = "black" if r.get("is_reference") else "tab:blue"
        if np.isfinite(lo) and np.isfinite(hi):
            ax.errorbar(x, y, xerr=[[x - lo], [hi - x]], fmt="o", color=color, capsize=3)
        else:
            ax.plot(x, y, "o", color=color)
        if r.get("is_reference"):
            ax.axvline(x, color="black", ls="--", lw=0.7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["run"] for r in reversed(rows)])
    ax.set(xlabel="mean AUROC", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
