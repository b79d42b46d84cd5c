"""The study's ``report.md``: what ran, plain words about random weights, the figures and their tables."""
from __future__ import annotations

import json
import os
from pathlib import Path

from embedkit.study import report as figs
from embedkit.study.grid import Grid


def _ci(r: dict) -> str:
    v, lo, hi = (figs._num(r.get(k)) for k in ("auroc", "auroc_ci_low", "auroc_ci_high"))
    return "-" if v != v else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def write_report(grid: Grid, rows: list[dict], *, failures: dict[str, str]) -> Path:
    """Write ``DIR/report.md`` and ``DIR/figures/*.png``; return the report's path.

    Parameters
    ----------
    grid : Grid
    rows : list of dict
        ``results.csv`` rows (:func:`embedkit.study.results.collect`).
    failures : dict key -> message
        Cells that failed in this run.
    """
    from probes.adjust import format_p

    cfg, out = grid.config, grid.out
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    prim = figs._primary(rows)
    adjust = cfg.settings["adjust"]
    random = figs.random_backbones(rows)
    states = [grid.state(c) for c in grid.cells]
    na = sum(1 for c in grid.cells if grid.state(c) == "done" and _not_applicable(grid, c))
    lines = [f"# Study: {cfg.name}", ""]
    if random:
        lines += [f"> **The weights were random** for {', '.join(random)}: these numbers test the pipeline, not "
                  "the models. Do not read them as results about any pretrained backbone.", ""]
    lines += [f"Grid: {len(cfg.datasets)} dataset(s) x {len(cfg.resolutions)} resolution(s) "
              f"({', '.join(map(str, cfg.resolutions))} px) x {len(cfg.backbones)} backbone(s) x {len(cfg.arms)} "
              f"arm(s), plus {sum(1 for c in grid.cells if c.kind == 'external')} external-validation cell(s). "
              f"Cells done: {states.count('done') - na} of {len(grid.cells)}"
              + (f" ({na} not applicable)" if na else "") + (f"; failed in this run: {len(failures)}" if failures
                                                               else "") + ".",
              f"Statistics: {cfg.settings['n_boot']} bootstrap resamples per test set (seed "
              f"{cfg.settings['boot_seed']}, unit {cfg.settings['bootstrap']}), 95% percentile CIs, point estimates "
              f"on the whole test set; p-values two-sided from the paired replicates, adjusted by {adjust}.", ""]
    if failures:
        lines += ["## Failed cells", ""] + [f"- `{k}`: {v}" for k, v in sorted(failures.items())] + [""]
    made = {name: fn(fig_dir / name, *args) for name, fn, args in (
        ("resolution.png", figs.fig_resolution, (prim,)),
        ("heatmap.png", figs.fig_heatmap, (prim,)))}
    diffs = figs.paired_differences(grid, prim, adjust=adjust) if prim else []
    made["paired.png"] = figs.fig_paired(fig_dir / "paired.png", diffs, adjust, random=random)
    made["frozen_vs_finetune.png"] = figs.fig_frozen_vs_finetune(fig_dir / "frozen_vs_finetune.png", prim)
    made["label_fraction.png"] = figs.fig_label_fraction(fig_dir / "label_fraction.png", rows)
    for name, ok in made.items():
        if not ok and (fig_dir / name).exists():
            os.unlink(fig_dir / name)
    if made["resolution.png"]:
        lines += ["## Mean AUROC vs resolution", "", "![mean AUROC vs resolution](figures/resolution.png)", "",
                  "Mean AUROC over labels with its 95% CI, per backbone/arm configuration and dataset.", ""]
        lines += _table(["dataset", "px", "backbone", "arm", "mean AUROC [95% CI]", "n test"],
                        [[r["dataset"], r["resolution"], r["backbone"], r["arm"], _ci(r), r["n"]]
                         for r in sorted(prim, key=lambda r: (r["dataset"], r["backbone"], r["arm"],
                                                              r["resolution"]))]) + [""]
    if made["heatmap.png"]:
        lines += ["## Datasets x configurations", "", "![heatmap](figures/heatmap.png)", "",
                  "One panel per resolution on one shared colour scale; '-' = not run.", ""]
    if made["paired.png"]:
        lines += ["## Paired differences", "", "![paired differences](figures/paired.png)", "",
                  f"Differences in mean AUROC on the same bootstrap replicates; p-values adjusted by {adjust} over "
                  f"all {len(diffs)} comparisons; shown as '<x' below the bootstrap's resolution (1/n_boot).", ""]
        lines += _table(["comparison", "Δ mean AUROC [95% CI]", "p", f"p ({adjust})"],
                        [[d["comparison"], f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
                          format_p(d["p"], d["n_boot"]), format_p(d["p_adj"], d["n_boot"])] for d in diffs]) + [""]
    if made["frozen_vs_finetune.png"]:
        lines += ["## Frozen heads vs finetuning", "", "![frozen vs finetune](figures/frozen_vs_finetune.png)", "",
                  "The best frozen-head configuration and the best finetuned one per dataset (highest mean AUROC).", ""]
    if made["label_fraction.png"]:
        lines += ["## Label-fraction and seed curves", "", "![label fraction](figures/label_fraction.png)", ""]
    ext = [r for r in rows if r["label"] == "macro_avg" and r["evaluation_type"] != "internal"]
    if ext:
        internal = {(r["dataset"], r["resolution"], r["backbone"], r["arm"]): r for r in prim}
        lines += ["## External validation", "", "Heads trained on one dataset applied to another "
                  "(`embedkit predict`); labels matched by name.", ""]
        lines += _table(["trained on", "tested on", "px", "backbone", "arm", "internal", "external"],
                        [[r["dataset"], r["test_dataset"], r["resolution"], r["backbone"], r["arm"],
                          _ci(internal.get((r["dataset"], r["resolution"], r["backbone"], r["arm"]), {})), _ci(r)]
                         for r in ext]) + [""]
    lines += _subgroup_section(grid, prim)
    lines += ["## Files", "", "- `results.csv`: one row per dataset x resolution x backbone x arm x label "
              "(and `macro_avg`), fractions 0-1, with 95% CI, n and positives.",
              "- `runs/<dataset>/<px>/<backbone>/<arm>/`: each run's metrics.json, per_label.csv, predictions.csv, "
              "subgroups.csv.", "- `work/`: image caches, embedding stores and the done-markers (fingerprints).", ""]
    path = out / "report.md"
    tmp = path.with_name(f".report.md.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


def _not_applicable(grid: Grid, cell) -> bool:
    try:
        return "not_applicable" in json.loads(grid.marker(cell).read_text())
    except (OSError, ValueError):
        return False


def _subgroup_section(grid: Grid, prim: list[dict]) -> list[str]:
    """Macro AUROC per subgroup of the best configuration of each dataset."""
    lines: list[str] = []
    for ds, by_kind in sorted(figs.best_by_kind(prim).items()):
        best = max(by_kind.values(), key=lambda r: figs._num(r["auroc"]))
        mpath = grid.out / best["run"] / "metrics.json"
        sub = json.loads(mpath.read_text()).get("subgroups") if mpath.exists() else None
        if not sub:
            continue
        if not lines:
            lines += ["## Subgroups", "", "Mean AUROC per subgroup for the best configuration of each dataset "
                      f"(CIs from the run's replicates restricted to the group; 'small' = fewer than "
                      f"{sub['min_count']} positives or negatives for some label).", ""]
        rows = []
        for axis, groups in sub["axes"].items():
            for g, e in groups.items():
                m = e["mean"]
                rows.append([axis, g, e["n"], _ci({"auroc": m["auroc"], "auroc_ci_low": m["auroc_ci_low"],
                                                   "auroc_ci_high": m["auroc_ci_high"]}),
                             "small" if m["small"] else ""])
        lines += [f"**{ds}** ({_ds_config(best)})", ""] + _table(["axis", "group", "n", "mean AUROC [95% CI]", ""],
                                                                  rows) + [""]
    return lines


def _ds_config(r: dict) -> str:
    return f"{r['backbone']}/{r['arm']} @{r['resolution']} px"
