"""``report.md`` and its PNG figures (matplotlib, Agg) from the study's results rows and run directories.

Figures (``DIR/figures``): mean AUROC vs resolution per configuration with 95% CIs (the study's central figure);
datasets x configurations heatmaps on one shared colour scale; paired differences (forest plot) with adjusted
p-values; best frozen vs best finetune per dataset; label-fraction / seed curves where the grid has them. Paired
differences use the runs' own bootstrap replicates (runs on one test set share one plan), and stars come only
from adjusted p < 0.05, never from overlapping CIs (Schenker & Gentleman, Am. Stat. 2001).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from embedkit.study.grid import Grid

FIGURES = ("resolution.png", "heatmap.png", "paired.png", "frozen_vs_finetune.png", "label_fraction.png")


def _primary(rows: list[dict]) -> list[dict]:
    """macro_avg rows of internal runs, one per cell: the largest label fraction, then the smallest seed."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["label"] != "macro_avg" or r["evaluation_type"] != "internal":
            continue
        key = (r["dataset"], r["resolution"], r["backbone"], r["arm"])
        cur = best.get(key)
        if cur is None or (r["label_fraction"], -r["seed"]) > (cur["label_fraction"], -cur["seed"]):
            best[key] = r
    return list(best.values())


def _config(r: dict) -> str:
    return f"{r['backbone']}/{r['arm']}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _num(v) -> float:
    return float("nan") if v is None or v == "" else float(v)


def random_backbones(rows: list[dict]) -> list[str]:
    """Backbones of ``rows`` whose weights were random (results rows carry ``random_weights``)."""
    return sorted({r["backbone"] for r in rows if r.get("random_weights") in (True, "True", "true")})


def _stamp(fig, random: list[str], *, y: float = 0.005) -> None:
    """A red footnote on figures of random weights: a PNG travels without the report that says so."""
    if random:
        fig.text(0.5, y, f"RANDOM WEIGHTS ({', '.join(random)}): a pipeline check, not results about any "
                 "pretrained model", ha="center", va="bottom", fontsize=8, color="tab:red")


def _chance(ax) -> None:
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance (0.5)")


def fig_resolution(path: Path, prim: list[dict]) -> bool:
    """Mean AUROC vs resolution, one line per configuration with CI bars, one panel per dataset."""
    datasets = sorted({r["dataset"] for r in prim})
    res = sorted({r["resolution"] for r in prim})
    configs = sorted({_config(r) for r in prim})
    if not prim:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets) + 1.8, 3.8), squeeze=False, sharey=True)
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    for ax, ds in zip(axes[0], datasets):
        for j, cfg in enumerate(configs):
            pts = sorted((r["resolution"], r) for r in prim if r["dataset"] == ds and _config(r) == cfg)
            if not pts:
                continue
            x = [res.index(p[0]) + (j - len(configs) / 2) * 0.04 for p in pts]
            y = np.array([_num(p[1]["auroc"]) for p in pts])
            lo = y - np.array([_num(p[1]["auroc_ci_low"]) for p in pts])
            hi = np.array([_num(p[1]["auroc_ci_high"]) for p in pts]) - y
            kind = pts[0][1]["kind"]
            marker = "s" if kind == "finetune" else "o"
            ax.errorbar(x, y, yerr=[lo, hi], marker=marker, capsize=3, color=colors[j % 10], lw=1.2,
                        label=f"{cfg} ({'finetuned' if kind == 'finetune' else 'frozen head'})")
        ax.set_xticks(range(len(res)))
        ax.set_xticklabels([str(r) for r in res])
        ax.set(title=ds, xlabel="input resolution (px)")
        _chance(ax)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean AUROC over labels (95% CI)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="backbone/arm",
                       title_fontsize=7)
    fig.suptitle("Mean AUROC vs resolution (circles: frozen head, squares: finetuned; test set, 95% bootstrap CI)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _stamp(fig, random_backbones(prim))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def fig_heatmap(path: Path, prim: list[dict]) -> bool:
    """Datasets x configurations, one panel per resolution, one shared colour scale; '-' where missing."""
    if not prim:
        return False
    plt = _plt()
    datasets = sorted({r["dataset"] for r in prim})
    configs = sorted({_config(r) for r in prim})
    res = sorted({r["resolution"] for r in prim})
    vals = [_num(r["auroc"]) for r in prim if np.isfinite(_num(r["auroc"]))]
    # An absolute scale (chance .. 1): a scale stretched over the observed range makes 0.05 look like 0.5.
    vmin, vmax = min([0.5, *vals]), 1.0
    fig, axes = plt.subplots(1, len(res), figsize=(1.1 * len(configs) * len(res) + 2.5, 0.6 * len(datasets) + 2.2),
                             squeeze=False)
    im = None
    for ax, r in zip(axes[0], res):
        m = np.full((len(datasets), len(configs)), np.nan)
        for row in prim:
            if row["resolution"] == r:
                m[datasets.index(row["dataset"]), configs.index(_config(row))] = _num(row["auroc"])
        im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        for i in range(len(datasets)):
            for j in range(len(configs)):
                v = m[i, j]
                txt = "-" if not np.isfinite(v) else f"{v:.3f}"
                dark = np.isfinite(v) and (v - vmin) / max(vmax - vmin, 1e-9) < 0.6
                ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels(configs, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(datasets)))
        ax.set_yticklabels(datasets if r == res[0] else [], fontsize=8)
        ax.set_title(f"{r} px", fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), label="mean AUROC (0.5 = chance)", shrink=0.8)
    fig.suptitle("Mean AUROC on each test set: datasets x backbone/arm (one colour scale)", fontsize=10, y=1.08)
    _stamp(fig, random_backbones(prim), y=1.01)  # above the panels: rotated tick labels fill the bottom
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.3)
    plt.close(fig)
    return True


def paired_differences(grid: Grid, prim: list[dict], *, adjust: str) -> list[dict]:
    """Resolution (each vs the lowest) and arm (each vs the first arm) differences in mean AUROC, paired on the
    shared bootstrap replicates; p-values adjusted over the whole family with ``adjust``."""
    from probes.adjust import adjust_pvalues
    from probes.bootstrap import paired_compare
    from probes.report import load_run

    by = {(r["dataset"], r["resolution"], r["backbone"], r["arm"]): r for r in prim}
    res = sorted({k[1] for k in by})
    arms = [a.name for a in grid.config.arms]
    pairs = []
    for (ds, r, bb, arm), row in by.items():
        if r != res[0] and (ds, res[0], bb, arm) in by:
            pairs.append(("resolution", f"{ds}: {bb}/{arm} {r} vs {res[0]} px", row, by[(ds, res[0], bb, arm)]))
        ref = next((a for a in arms if (ds, r, bb, a) in by), None)
        if ref is not None and arm != ref:
            pairs.append(("arm", f"{ds} @{r}: {bb} {arm} vs {ref}", row, by[(ds, r, bb, ref)]))
    out = []
    for kind, name, a, b in sorted(pairs, key=lambda p: (p[0], p[1])):
        ra, rb = load_run(grid.out / a["run"]), load_run(grid.out / b["run"])
        pa, pb = ra.metrics.get("pairing") or {}, rb.metrics.get("pairing") or {}
        if ra.boot_auroc is None or rb.boot_auroc is None or pa.get("boot_matrix_sha256") != \
                pb.get("boot_matrix_sha256") or pa.get("test_ids_sha256") != pb.get("test_ids_sha256") or \
                ra.label_names != rb.label_names:
            continue
        point = [np.array([_num(r.metrics["test"]["per_label"][k]["auroc"]["value"]) for k in r.label_names])
                 for r in (ra, rb)]
        c = paired_compare(ra.boot_auroc, rb.boot_auroc, point_a=point[0], point_b=point[1])
        out.append({"family": kind, "comparison": name, "delta": c["delta_mean"], "ci_low": c["ci_low_mean"],
                    "ci_high": c["ci_high_mean"], "p": c["p_two_sided_mean"], "n_boot": int(ra.boot_auroc.shape[0])})
    adj = adjust_pvalues([d["p"] for d in out], adjust) if out else []
    for d, p in zip(out, adj):
        d["p_adj"] = float(p)
    return out


def fig_paired(path: Path, diffs: list[dict], adjust: str, *, random: list[str] | tuple = ()) -> bool:
    """Forest plot of paired differences (A - B for "A vs B") with CIs and adjusted p-values; ``random`` names
    backbones with random weights (stamped on the figure)."""
    if not diffs:
        return False
    from probes.adjust import format_p

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(diffs) + 1.6))
    for i, d in enumerate(diffs):
        y = len(diffs) - 1 - i
        color = "tab:red" if d["p_adj"] < 0.05 else "tab:blue"
        ax.errorbar(d["delta"], y, xerr=[[d["delta"] - d["ci_low"]], [d["ci_high"] - d["delta"]]], fmt="o",
                    color=color, capsize=3)
        star = "*" if d["p_adj"] < 0.05 else ""
        ax.annotate(f"p_adj {format_p(d['p_adj'], d['n_boot'])}{star}", (1.01, y), xycoords=("axes fraction", "data"),
                    fontsize=7, va="center")
    ax.axvline(0, color="black", ls="--", lw=0.8)
    ax.set_yticks(range(len(diffs)))
    ax.set_yticklabels([d["comparison"] for d in reversed(diffs)], fontsize=7)
    ax.set(xlabel="Δ mean AUROC for 'A vs B' = A − B (> 0: A better; paired bootstrap, 95% CI)",
           title=f"Paired differences (red, *: {adjust}-adjusted p < 0.05 over {len(diffs)} comparisons)")
    ax.title.set_fontsize(9)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _stamp(fig, list(random))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def best_by_kind(prim: list[dict]) -> dict[str, dict[str, dict]]:
    """dataset -> kind -> the row with the highest mean AUROC."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in prim:
        cur = out[r["dataset"]].get(r["kind"])
        if cur is None or _num(r["auroc"]) > _num(cur["auroc"]):
            out[r["dataset"]][r["kind"]] = r
    return out


def fig_frozen_vs_finetune(path: Path, prim: list[dict]) -> bool:
    best = {ds: v for ds, v in best_by_kind(prim).items() if len(v) == 2}
    if not best:
        return False
    plt = _plt()
    datasets = sorted(best)
    fig, ax = plt.subplots(figsize=(2.2 * len(datasets) + 2.5, 4))
    for k, (kind, color) in enumerate((("frozen", "tab:gray"), ("finetune", "tab:orange"))):
        x = np.arange(len(datasets)) + (k - 0.5) * 0.38
        rows = [best[ds][kind] for ds in datasets]
        y = np.array([_num(r["auroc"]) for r in rows])
        err = [y - np.array([_num(r["auroc_ci_low"]) for r in rows]),
               np.array([_num(r["auroc_ci_high"]) for r in rows]) - y]
        ax.bar(x, y, width=0.36, color=color, yerr=err, capsize=3, label=f"best {kind}")
        for xi, r in zip(x, rows):
            ax.text(xi, 0.02, f"{_config(r)}\n@{r['resolution']}", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(datasets)))
    ax.set_xticklabels(datasets)
    ax.set(ylabel="mean AUROC over labels (95% CI)", ylim=(0, 1.05),
           title="Best frozen head vs best finetune per dataset (highest test mean AUROC)")
    ax.title.set_fontsize(10)
    _chance(ax)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.06), ncol=3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _stamp(fig, random_backbones(prim))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def fig_label_fraction(path: Path, rows: list[dict]) -> bool:
    """Mean AUROC vs label fraction (mean +- SD over seeds) where an arm has several fractions or seeds."""
    macro = [r for r in rows if r["label"] == "macro_avg" and r["evaluation_type"] == "internal"]
    groups: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in macro:
        groups[(r["dataset"], r["resolution"], r["backbone"], r["arm"])][float(r["label_fraction"])].append(
            _num(r["auroc"]))
    curves = {k: v for k, v in groups.items() if len(v) > 1 or any(len(s) > 1 for s in v.values())}
    if not curves:
        return False
    plt = _plt()
    datasets = sorted({k[0] for k in curves})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets) + 1.5, 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for key, by_f in sorted(curves.items()):
            if key[0] != ds:
                continue
            f = sorted(by_f)
            m = [np.mean(by_f[x]) for x in f]
            sd = [np.std(by_f[x], ddof=1) if len(by_f[x]) > 1 else 0.0 for x in f]
            ax.errorbar(f, m, yerr=sd, marker="o", capsize=3, label=f"{key[2]}/{key[3]} @{key[1]}")
        ax.set_xscale("log")
        ticks = sorted({f for key, by_f in curves.items() if key[0] == ds for f in by_f})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set(title=ds, xlabel="label fraction", ylabel="mean AUROC (mean +- SD over seeds)")
        ax.grid(alpha=0.3)
        _chance(ax)
        ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _stamp(fig, random_backbones(macro))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
