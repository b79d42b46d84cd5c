"""``embedkit probe`` and ``embedkit compare``: options in, :mod:`embedkit.app.probe` / :mod:`embedkit.app.compare`
called, tables or JSON out. The work (split, bootstrap unit, heads, run files, pairing) lives in the app layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from embedkit.cli._common import bad_parameter, check_out, only_entries, out_console, print_json
from embedkit.cli.predict import parse_age_bands

COMPARE_FILES = ("compare.json", "compare.csv", "per_label_deltas.csv", "forest.png")


def _parse_fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad_parameter("label-fraction", "probe", "comma-separated numbers in (0, 1]", text) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise bad_parameter("label-fraction", "probe", "comma-separated numbers in (0, 1]", text)
    return values


def _choice(name: str, value: Optional[str], allowed: tuple[str, ...]) -> Optional[str]:
    if value is not None and value not in allowed:
        raise bad_parameter(name, "probe", " | ".join(allowed), value)
    return value


def _is_probe_output(path: Path) -> bool:
    """A finished run, or a folder of sub-runs / summary written by a multi-fraction or multi-seed probe."""
    if not path.is_dir():
        return False
    return (path / "metrics.json").exists() or (path / "summary.json").exists() or any(
        (d / "metrics.json").exists() for d in path.iterdir() if d.is_dir())


class _HeadProgress:
    """A head's training events (:class:`probes.heads.FitProgress`, with ``head``, ``run``, ``runs``) -> one
    :class:`embedkit.progress.Progress` per run: steps done/total, epoch, and the last epoch's figures."""

    def __init__(self) -> None:
        self.bar = None
        self._run = None

    def __call__(self, ev: dict) -> None:
        from embedkit.progress import Progress

        run, runs = ev.get("run", 1), ev.get("runs", 1)
        if self.bar is None or run != self._run:
            self.close()
            self._run = run
            where = f" run {run}/{runs}" if runs > 1 else ""
            self.bar = Progress(f"probe {ev.get('head', 'head')}{where}", unit="step")
        fields = {"epoch": f"{ev['epoch']}/{ev['epochs']}"} if "epoch" in ev else {}
        if ev["event"] != "step":
            fields.update({k: float(ev[k]) for k in ("lr", "loss", "val_loss", "val_auroc") if k in ev})
        self.bar.update(ev["done"], ev["total"], **fields)
        if ev["done"] >= ev["total"] and ev["event"] != "step":
            self.close()  # the head is trained: its last line before the run's messages

    def close(self, *, success: bool = True) -> None:
        if self.bar is not None:
            self.bar.close(success=success)
            self.bar = None


def _fmt(v, digits: int = 4) -> str:
    return "nan" if v is None or v != v else f"{v:.{digits}f}"


def _print_run_table(doc: dict, *, title: str | None = None) -> None:
    """The per-label table of a run (probe or finetune): AUROC [95% CI], AP, threshold, and the mean row."""
    from rich.table import Table

    info, split, boot = doc.get("provenance") or {}, doc.get("split") or {}, doc.get("bootstrap") or {}
    t = Table(title=title or f"{info.get('dataset')}: {doc['head']} on {doc['features']} "
                             f"(fraction {doc['label_fraction']}, seed {doc['seed']})",
              caption=f"split unit {split.get('unit')} ({split.get('source')}); bootstrap unit {boot.get('unit')}; "
                      "AUROC and AP on the whole test set, CI from the bootstrap")
    for col in ("label", "AUROC", "95% CI", "AP", "threshold"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for label, row in doc["test"]["per_label"].items():
        a = row["auroc"]
        t.add_row(label, _fmt(a["value"]), f"[{_fmt(a['ci_low'])}, {_fmt(a['ci_high'])}]",
                  _fmt(row["ap"]["value"]), _fmt(row["threshold"], 3))
    m, p = doc["test"]["means"]["auroc"], doc["test"]["means"]["ap"]
    t.add_row("mean", _fmt(m["value"]), f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]", _fmt(p["value"]), "",
              style="bold")
    out_console().print(t)


def _print_subgroups(block: dict, path: Path) -> None:
    """Mean AUROC [95% CI] per subgroup (the per-label rows are in subgroups.csv)."""
    from rich.table import Table

    t = Table(title="Subgroups: mean AUROC over labels",
              caption=f"per-label rows and AP: {path}; * = fewer than {block.get('min_count')} positives or "
                      "negatives for some label (unstable estimate)")
    for col in ("axis", "group", "n", "mean AUROC", "95% CI"):
        t.add_column(col, justify="left" if col in ("axis", "group") else "right")
    for axis, groups in block.get("axes", {}).items():
        for g, e in groups.items():
            m = e["mean"]
            t.add_row(axis, g + (" *" if m.get("small") else ""), str(e["n"]), _fmt(m["auroc"]),
                      f"[{_fmt(m['auroc_ci_low'])}, {_fmt(m['auroc_ci_high'])}]")
    if t.row_count:
        out_console().print(t)


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{summary['head']} on {summary['features']}: test mean AUROC over seeds")
    for col in ("label fraction", "seeds", "mean AUROC", "SD", "mAP"):
        t.add_column(col, justify="right")
    for r in summary["rows"]:
        t.add_row(f"{r['label_fraction']:g}", str(r["n_seeds"]), _fmt(r["mean_auroc"]), _fmt(r["sd_auroc"]),
                  _fmt(r["mean_ap"]))
    out_console().print(t)


def _print_compare(result) -> None:
    from rich.table import Table

    from probes.adjust import format_p

    t = Table(title=f"Mean AUROC [95% CI]; paired bootstrap against the reference, {result.reference}",
              caption=f"p: two-sided paired bootstrap; p adj: {result.adjust} over the {len(result.runs) - 1} "
                      "run-level comparison(s); per-label p-values (another family) in --out / --json")
    for col in ("run", "data: model @res", "head on features", "mean AUROC [95% CI]", "Δ vs ref [95% CI]", "p",
                f"p adj ({result.adjust})"):
        t.add_column(col, overflow="fold")
    for r in result.runs:
        delta = "reference" if r["is_reference"] else (
            f"{_fmt(r['delta'])} [{_fmt(r['delta_ci_low'])}, {_fmt(r['delta_ci_high'])}]")
        p = "" if r["is_reference"] else format_p(r["p_two_sided"], r["n_boot"])
        p_adj = "" if r["is_reference"] else format_p(r["p_adjusted"], r["n_boot"])
        t.add_row(r["run"], f"{r['dataset']}: {r['initialization']}/{r['backbone']} @{r['image_size']}",
                  f"{r['head']} on {r['features']}",
                  f"{_fmt(r['auroc'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]", delta, p, p_adj)
    out_console().print(t)


def register(app: typer.Typer) -> None:
    """Add ``probe`` and ``compare``."""
    from probes.heads import head_help, list_heads  # the registry only: no numpy, torch or scikit-learn

    heads = tuple(h.name for h in list_heads())

    @app.command("probe")
    def probe_cmd(
        store: Path = typer.Argument(..., help="Embedding store (.zarr) written by 'embedkit extract'."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
        protocol: Optional[str] = typer.Option(
            None, "--protocol", help="A recipe: 'paper' (the reference study: mean_tokens, its MLP recipe, strict "
                                     "Youden) or 'modern'. Explicit options override it and are recorded."),
        head: Optional[str] = typer.Option(
            None, "--head", help=f"{' | '.join(heads)} [the protocol's, else linear]. {head_help()}."),
        features: Optional[str] = typer.Option(
            None, "--features",
            help="A store view or a '+' concatenation (cls+mean_patch) [the protocol's, else cls]."),
        labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated subset of the store's labels."),
        label_fraction: str = typer.Option("1", "--label-fraction",
                                           help="Fractions of training patients, e.g. 0.01,0.1,1."),
        seeds: int = typer.Option(1, "--seeds", min=1, help="Repeated runs with seeds seed, seed+1, ..."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of the head [the head's default]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                 help="Training batch size of the head [the head's default]."),
        epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epoch budget of the head [its default]."),
        n_boot: Optional[int] = typer.Option(None, "--n-boot", min=1,
                                             help="Bootstrap resamples of the test set [the protocol's, else 1000]."),
        bootstrap: str = typer.Option("auto", "--bootstrap",
                                      help="Resample 'patients' (cluster), 'images', or 'auto': patients when the "
                                           "store has patient ids, else images."),
        boot_seed: int = typer.Option(0, "--boot-seed",
                                      help="Seed of the bootstrap plan (keep it fixed to pair runs)."),
        boot_dir: Optional[Path] = typer.Option(None, "--boot-dir",
                                                help="Where bootstrap plans are kept [<out>/../.embedkit-bootstrap]."),
        thresholds: Optional[str] = typer.Option(
            None, "--thresholds", help="'val' (Youden on validation) or 'youden-test' (re-picked on each test "
                                       "resample, the reference study) [the protocol's, else val]."),
        split_unit: Optional[str] = typer.Option(
            None, "--split-unit", help="For a store without patient ids: accept splitting it by 'study' or 'image' "
                                       "(one patient's images may then land in two splits)."),
        allow_partial: bool = typer.Option(False, "--allow-partial",
                                           help="Probe a store still being filled (the left-out rows are counted)."),
        allow_leak: bool = typer.Option(False, "--allow-leak",
                                        help="Go on when a patient or study sits in two splits (recorded)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (linear and mlp heads)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the head, the subsample and a made split."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in --out."),
        age_bands: str = typer.Option("0,40,60,80", "--age-bands",
                                      help="Lower bounds of the subgroup age bands (subgroups.csv)."),
        no_subgroups: bool = typer.Option(False, "--no-subgroups",
                                          help="Skip the subgroup metrics (sex, age band, view, source dataset)."),
        json_out: bool = typer.Option(False, "--json", help="Print the metrics as one JSON document."),
    ) -> None:
        """Train a probe head on stored features and evaluate it on the test split with bootstrap CIs; subgroup
        metrics (sex, age band, view, source dataset) go to subgroups.csv."""
        from embedkit.app.probe import probe

        _choice("head", head, heads)
        _choice("bootstrap", bootstrap, ("auto", "patients", "images"))
        _choice("thresholds", thresholds, ("val", "youden-test"))
        _choice("split-unit", split_unit, ("patient", "study", "image"))
        _choice("protocol", protocol, ("paper", "modern"))
        fractions = _parse_fractions(label_fraction)
        bands = parse_age_bands(age_bands, "probe")
        # Several fractions/seeds resume into their sub-runs; one run is replaced only on --overwrite.
        check_out(out, noun="probe run", is_ours=_is_probe_output,
                  overwrite=None if len(fractions) * seeds > 1 else overwrite)

        bar = _HeadProgress()  # stderr only: --json keeps stdout to the one document

        def say(msg: str) -> None:
            bar.close()
            if not json_out:
                typer.echo(msg, err=True)

        try:
            result = probe(
                store, out, head=head, features=features,
                labels=[s for s in labels.split(",")] if labels else None, label_fractions=fractions, seeds=seeds,
                seed=seed, n_boot=n_boot, bootstrap=bootstrap, boot_seed=boot_seed, boot_dir=boot_dir,
                thresholds=thresholds, protocol=protocol,
                head_options={"lr": lr, "batch_size": batch_size, "epochs": epochs}, device=device,
                split_unit=split_unit, allow_partial=allow_partial, allow_leak=allow_leak, overwrite=overwrite,
                subgroups=not no_subgroups, age_bands=bands, say=say, progress=bar)
        except BaseException:
            bar.close(success=False)
            raise
        bar.close()
        if json_out:
            print_json(result.summary if result.summary is not None else result.runs[0])
            return
        for doc in result.runs:
            _print_run_table(doc)
        if len(result.runs) == 1 and result.runs[0].get("subgroups"):
            _print_subgroups(result.runs[0]["subgroups"], out / "subgroups.csv")
        if result.summary is not None:
            _print_summary(result.summary)

    @app.command("compare")
    def compare_cmd(
        runs: List[Path] = typer.Argument(..., help="Run directories written by 'embedkit probe' (or finetune)."),
        reference: Optional[Path] = typer.Option(None, "--reference",
                                                 help="Run the others are tested against [the first]."),
        out: Optional[Path] = typer.Option(None, "--out",
                                           help="Write compare.json, compare.csv, per_label_deltas.csv, forest.png."),
        adjust: str = typer.Option("holm", "--adjust",
                                   help="Multiple-comparison adjustment of the p-values: holm (family-wise error), "
                                        "bh (false discovery rate) or none. Run-level and per-label p-values are "
                                        "adjusted as two families."),
        json_out: bool = typer.Option(False, "--json", help="Print the comparison as one JSON document."),
    ) -> None:
        """Mean AUROC [95% CI] per run, paired bootstrap tests against a reference, per-label deltas."""
        from embedkit.app.compare import compare

        if adjust not in ("holm", "bh", "none"):
            raise bad_parameter("adjust", "compare", "holm | bh | none", adjust)
        if out is not None:
            check_out(out, noun="comparison folder", is_ours=only_entries(*COMPARE_FILES))
        result = compare(runs, reference=reference, out=out, adjust=adjust)
        if json_out:
            print_json(result.to_dict())
            return
        _print_compare(result)
