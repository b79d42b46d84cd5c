"""``results.csv``: one row per dataset x resolution x backbone x arm x label (plus ``macro_avg``) of every finished
cell, read back from the run directories -- numbers only, as fractions (0-1); text formatting lives in the report.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from embedkit.study.grid import Grid, Stage

COLUMNS = ("dataset", "test_dataset", "evaluation_type", "resolution", "backbone", "arm", "kind", "head", "features",
           "label_fraction", "seed", "label", "auroc", "auroc_ci_low", "auroc_ci_high", "ap", "ap_ci_low",
           "ap_ci_high", "n", "positives", "n_boot", "random_weights", "run", "cell")


def _r(v):
    return None if v is None or v != v else round(float(v), 6)


def _positives(run_dir: Path, labels: list[str]) -> tuple[int, dict[str, int]]:
    with open(run_dir / "test_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return len(rows), {k: sum(1 for r in rows if r.get(k) in ("1", "1.0")) for k in labels}


def run_dirs(grid: Grid, cell: Stage) -> list[Path]:
    """The finished run directories of a cell (sub-runs ``frac<F>-seed<S>`` for label-fraction / seed arms)."""
    if (cell.path / "metrics.json").exists():
        return [cell.path]
    return sorted(d.parent for d in cell.path.glob("*/metrics.json"))


def collect(grid: Grid) -> list[dict]:
    """Rows of every done cell (selected or not), in grid order."""
    random = {b.name for b in grid.config.backbones if b.random_weights}
    made = (grid.config.make.get("tiny_models") or {}).get("folder")
    if made:
        folder = Path(grid.config.resolve(made))
        random |= {b.name for b in grid.config.backbones
                   if Path(grid.stores[next(k for k in grid.stores if k[2] == b.name)].params["model"]).parent == folder}
    arms = {a.name: a for a in grid.config.arms}
    rows: list[dict] = []
    for cell in grid.cells:
        if grid.state(cell) != "done":
            continue
        for d in run_dirs(grid, cell):
            m = json.loads((d / "metrics.json").read_text())
            labels = list(m["labels"])
            n, pos = _positives(d, labels)
            arm = arms[cell.arm]
            base = {"dataset": cell.dataset, "test_dataset": cell.test_dataset or cell.dataset,
                    "evaluation_type": "internal" if cell.kind == "run" else f"external:{cell.dataset}",
                    "resolution": cell.resolution, "backbone": cell.backbone, "arm": cell.arm, "kind": arm.kind,
                    "head": m.get("head"), "features": m.get("features"), "label_fraction": m.get("label_fraction"),
                    "seed": m.get("seed"), "n": n, "n_boot": (m.get("bootstrap") or {}).get("n_boot"),
                    "random_weights": cell.backbone in random, "run": os.path.relpath(d, grid.out),
                    "cell": cell.fp[:12]}
            for label in labels:
                v = m["test"]["per_label"][label]
                rows.append({**base, "label": label, "positives": pos[label], **_metric_cols(v)})
            rows.append({**base, "label": "macro_avg", "positives": None, **_metric_cols(m["test"]["means"])})
    return rows


def _metric_cols(v: dict) -> dict:
    out = {}
    for k in ("auroc", "ap"):
        e = v.get(k) or {}
        out.update({k: _r(e.get("value")), f"{k}_ci_low": _r(e.get("ci_low")), f"{k}_ci_high": _r(e.get("ci_high"))})
    return out


def write_results(path: Path, rows: list[dict]) -> Path:
    """Write ``results.csv`` atomically (blank = missing)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r.get(c) for c in COLUMNS})
    os.replace(tmp, path)
    return path
