"""``embedkit manifest``: build a manifest CSV from a dataset adapter (or re-check a manifest) and summarise it."""
from __future__ import annotations

from pathlib import Path

import typer

from embedkit.cli._common import check_out, out_console, print_json
from embedkit.data.adapters import adapter_names  # the registry only: no pandas

_DATA_HELP = (f"ADAPTER:ROOT ({adapter_names()}), e.g. chexpert:/data/CheXpert-v1.0-small, or a manifest CSV.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("manifest")
    def manifest(
        data: str = typer.Argument(..., help=_DATA_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="Manifest CSV to write (atomically)."),
        labels: str = typer.Option("full", help="full | paper (the reference study's subset) | A,B,C."),
        uncertain: str = typer.Option("zeros", help="What uncertain (-1) labels become: zeros | ones | ignore."),
        blank: str = typer.Option(None, help="How blank label cells read: zeros | nan (default: per dataset)."),
        views: str = typer.Option("frontal", help="frontal | all."),
        unknown_view: str = typer.Option("drop", "--unknown-view",
                                         help="With --views frontal, rows whose view is blank/UNK: drop (default: "
                                              "frontal-only means known frontal) | keep. Counted either way."),
        split: str = typer.Option(None, help="official | official+val:SEED:FRAC | patient:SEED:TRAIN,VAL,TEST "
                                              "(default: the data's own). Units: patients and studies linked by "
                                              "shared ids; study or image units where patient ids are missing."),
        readers: str = typer.Option(None, help="VinDr reader aggregation: majority | any | per-reader."),
        label_source: str = typer.Option(None, "--label-source", help="MIMIC labels: chexpert | negbio."),
        strict: bool = typer.Option(False, "--strict", help="Missing image files are an error."),
        allow_leak: bool = typer.Option(False, "--allow-leak", help="A patient in two splits is only a warning."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier manifest CSV at --out."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document."),
    ) -> None:
        """Write a manifest CSV (never opens images) and print rows, patients, missing files, label prevalence."""
        check_out(out, noun="manifest CSV", is_ours=_is_manifest_csv, overwrite=overwrite)
        from embedkit.app.catalog import build_manifest

        options = {k: v for k, v in (("readers", readers), ("label_source", label_source)) if v is not None}
        summary = build_manifest(data, out, labels=labels, uncertain=uncertain, blank=blank, views=views,
                                 split=split, strict=strict, allow_leak=allow_leak, adapter_options=options,
                                 unknown_view=unknown_view).to_dict()
        if as_json:
            print_json(summary)
        else:
            _print_summary(summary)


def _is_manifest_csv(path: Path) -> bool:
    """A file whose header row names a ``path`` column (what ``embedkit manifest`` writes)."""
    if not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            header = fh.readline(65536)
    except (OSError, UnicodeDecodeError):
        return False
    return "path" in [c.strip().strip('"') for c in header.strip().split(",")]


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    console = out_console()
    spec = summary["spec"]
    console.print(f"[bold]{summary['out']}[/bold]: {summary['rows']} rows"
                  + (f", {summary['patients']} patients" if "patients" in summary else "")
                  + (f", {summary['studies']} studies" if "studies" in summary else "")
                  + f", {summary['missing']} missing file(s)")
    console.print(f"labels={spec['labels']} uncertain={spec['uncertain']} blank={spec['blank']} "
                  f"views={spec['views']} split={spec['split']} (unlabelled rows: {spec['n_unlabelled']})")
    if spec.get("split_unit"):
        note = "" if spec["split_unit"] == "patient" else " [yellow](no patient ids on every row)[/yellow]"
        console.print(f"split unit: {spec['split_unit']}{note}", highlight=False)
    if spec["views"] == "frontal" and spec["view_rule"].startswith("no view"):
        console.print(f"view rule: {spec['view_rule']} (the data has no view column)", highlight=False)
    elif spec["views"] == "frontal":
        action = "dropped" if spec["unknown_view"] == "drop" else "kept"
        console.print(f"view rule: {spec['n_unknown_view']} row(s) with a blank/UNK view {action} "
                      f"(--unknown-view {spec['unknown_view']}; the other choice is "
                      f"{'keep' if action == 'dropped' else 'drop'})", highlight=False)
    for reason, count in spec["dropped"].items():
        console.print(f"dropped {count} row(s): {reason}", highlight=False)
    if not spec["dropped"]:
        console.print("dropped 0 rows", highlight=False)
    splits = summary["splits"]
    table = Table(title="Label prevalence per split: positives / known (rate)")
    table.add_column("label")
    for name, info in splits.items():
        header = f"{name}\n{info['rows']} rows"
        if "patients" in info:
            header += f", {info['patients']} pat."
        table.add_column(header, justify="right")
    table.add_row("[dim]missing files[/dim]", *[str(info["missing"]) for info in splits.values()])
    for label in summary["label_names"]:
        cells = []
        for info in splits.values():
            p = info["prevalence"][label]
            known = p["pos"] + p["neg"]
            cells.append(f"{p['pos']}/{known} ({100 * p['rate']:.1f}%)" if known else "-")
        table.add_row(label, *cells)
    console.print(table)
