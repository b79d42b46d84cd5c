"""``embedkit phantoms``: write synthetic chest-radiograph phantoms with labelled findings and a manifest."""
from __future__ import annotations

from pathlib import Path

import typer

from embedkit.cli._common import bad_parameter, check_out, only_entries, out_console, print_json

_FORMATS = ("png8", "png16", "dicom")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("phantoms")
    def phantoms(
        out: Path = typer.Option(..., "--out", "-o", help="Folder to write images/ and manifest.csv into."),
        n: int = typer.Option(200, "--n", help="Number of images."),
        size: int = typer.Option(128, "--size", help="Image side in pixels (>= 16)."),
        seed: int = typer.Option(0, "--seed", help="Seed: same arguments give the same bytes."),
        formats: str = typer.Option("png8,png16,dicom", "--formats",
                                    help="Comma-separated file formats, used in turn: png8, png16, dicom."),
        images_per_patient: int = typer.Option(3, "--images-per-patient", help="Images (studies) per patient."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier phantom folder in --out."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document."),
    ) -> None:
        """Write deterministic radiograph-like phantoms (cardiomegaly, effusion, pneumothorax, nodule labels)."""
        fmts = tuple(f.strip().lower() for f in formats.split(",") if f.strip())
        if not fmts or any(f not in _FORMATS for f in fmts):
            raise bad_parameter("formats", "phantoms", f"a comma-separated list of {', '.join(_FORMATS)}", formats)
        if n < 1:
            raise bad_parameter("n", "phantoms", "an int >= 1", n)
        if size < 16:
            raise bad_parameter("size", "phantoms", "an int >= 16", size)
        if images_per_patient < 1:
            raise bad_parameter("images_per_patient", "phantoms", "an int >= 1", images_per_patient)

        state = check_out(out, noun="phantom folder (images/ + manifest.csv)",
                          is_ours=only_entries("manifest.csv", "images"), overwrite=overwrite)
        if state == "ours":  # only our two entries: replace them, so no image of a larger earlier set lingers
            import shutil

            shutil.rmtree(out / "images", ignore_errors=True)
            (out / "manifest.csv").unlink(missing_ok=True)

        from embedkit.app.catalog import write_phantoms

        summary = write_phantoms(out, n=n, size=size, seed=seed, images_per_patient=images_per_patient,
                                 formats=fmts).to_dict()
        if as_json:
            print_json(summary)
            return
        _print_summary(summary)


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    console = out_console()
    console.print(f"{summary['rows']} images of {summary['patients']} patients")
    names = list(next(iter(summary["splits"].values()))["prevalence"])
    table = Table("split", "images", "patients", *names, title="label prevalence per split")
    for split, part in summary["splits"].items():
        prev = [f"{v:.2f}" if v is not None else "-" for v in part["prevalence"].values()]
        table.add_row(split, str(part["rows"]), str(part["patients"]), *prev)
    console.print(table)
    console.print(f"manifest: {summary['manifest']}", soft_wrap=True)
