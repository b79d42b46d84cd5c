"""``embedkit manifest``: build a manifest CSV from a dataset adapter (or re-check a manifest) and summarise it."""
from __future__ import annotations

from pathlib import Path

import typer

from embedkit.cli._common import out_console, print_json

_DATA_HELP = ("ADAPTER:ROOT (nih, chexpert, mimic, padchest, vindr, vindr-pcxr, dicom), e.g. "
              "chexpert:/data/CheXpert-v1.0-small, or a manifest CSV.")


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
        split: str = typer.Option(None, help="official | official+val:SEED:FRAC | patient:SEED:TRAIN,VAL,TEST "
                                              "(default: the data's own)."),
        readers: str = typer.Option(None, help="VinDr reader aggregation: majority | any | per-reader."),
        label_source: str = typer.Option(None, "--label-source", help="MIMIC labels: chexpert | negbio."),
        strict: bool = typer.Option(False, "--strict", help="Missing image files are an error."),
        allow_leak: bool = typer.Option(False, "--allow-leak", help="A patient in two splits is only a warning."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document."),
    ) -> None:
        """Write a manifest CSV (never opens images) and print rows, patients, missing files, label prevalence."""
        from embedkit.data.manifest import load_manifest

        options = {k: v for k, v in (("readers", readers), ("label_source", label_source)) if v is not None}
        m = load_manifest(data, labels=labels, uncertain=uncertain, blank=blank, views=views, split=split,
                          strict=strict, allow_leak=allow_leak, adapter_options=options)
        written = m.write_csv(out)
        summary = {"out": str(written), **m.summary(), "spec": m.spec()}
        if as_json:
            print_json(summary)
        else:
            _print_summary(summary)


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    console = out_console()
    spec = summary["spec"]
    console.print(f"[bold]{summary['out']}[/bold]: {summary['rows']} rows"
                  + (f", {summary['patients']} patients" if "patients" in summary else "")
                  + (f", {summary['studies']} studies" if "studies" in summary else "")
                  + f", {summary['missing']} missing file(s)")
    console.print(f"labels={spec['labels']} uncertain={spec['uncertain']} blank={spec['blank']} "
                  f"views={spec['views']} split={spec['split']} (dropped by view filter: "
                  f"{spec['n_dropped_views']}, unlabelled rows: {spec['n_unlabelled']})")
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
