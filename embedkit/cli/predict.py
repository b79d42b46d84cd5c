"""``embedkit predict``: options in, :func:`embedkit.app.predict.predict` called, a table or JSON out."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedkit.cli._common import bad_parameter, check_out, out_console, print_json

PREDICT_ENTRIES = ("predictions.csv", "metrics.json", "per_label.csv", "test_labels.csv", "bootstrap.npz", "roc.png",
                   "subgroups.csv", "embeddings.zarr", "images", ".run")


def _is_predict_output(path: Path) -> bool:
    if not path.is_dir():
        return False
    entries = {p.name for p in path.iterdir()}
    return bool(entries) and entries <= set(PREDICT_ENTRIES)


def parse_age_bands(text: str, command: str) -> list[float]:
    """``0,40,60,80`` -> [0.0, 40.0, 60.0, 80.0] (increasing, >= 0)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or values[0] < 0 or any(b <= a for a, b in zip(values, values[1:])):
        raise bad_parameter("age-bands", command, "increasing comma-separated ages >= 0, e.g. 0,40,60,80", text)
    return values


def _fmt(v, digits: int = 4) -> str:
    return "nan" if v is None or v != v else f"{v:.{digits}f}"


def _print_table(doc: dict, notes: list[str]) -> None:
    from rich.table import Table

    t = Table(title=f"{doc['evaluation_type']} -> {doc['provenance'].get('dataset')}: {doc['head']} on "
                    f"{doc['features']} ({doc['split']['rows']}, {doc['split']['n_scored']} rows)",
              caption=f"bootstrap: {doc['bootstrap']['n_boot']} resamples of {doc['bootstrap']['unit']}")
    for col in ("label", "AUROC", "95% CI", "AP"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for label, row in doc["test"]["per_label"].items():
        a = row["auroc"]
        t.add_row(label, _fmt(a["value"]), f"[{_fmt(a['ci_low'])}, {_fmt(a['ci_high'])}]", _fmt(row["ap"]["value"]))
    m = doc["test"]["means"]["auroc"]
    t.add_row("mean", _fmt(m["value"]), f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]",
              _fmt(doc["test"]["means"]["ap"]["value"]), style="bold")
    out_console().print(t)


def register(app: typer.Typer) -> None:
    """Add ``predict``."""

    @app.command("predict")
    def predict_cmd(
        run: Path = typer.Argument(..., help="A probe run (head.safetensors) or finetune run (model.safetensors)."),
        data: str = typer.Option(..., "--data", help="An embedding store, or images to embed with the run's own "
                                                     "backbone and preset: manifest CSV, ADAPTER:ROOT or image cache."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (predictions.csv; with labels also "
                                                          "metrics.json, per_label.csv, subgroups.csv ...)."),
        model: Optional[str] = typer.Option(None, "--model", help="Backbone to embed images with, when the run's "
                                                                  "training store (which records it) is gone."),
        rows: str = typer.Option("auto", "--rows", help="Rows scored: 'test' split, 'all' labelled rows, or 'auto' "
                                                        "(the test split when the data has one)."),
        n_boot: Optional[int] = typer.Option(None, "--n-boot", min=1, help="Bootstrap resamples [the run's]."),
        bootstrap: str = typer.Option("auto", "--bootstrap", help="'patients', 'images' or 'auto'."),
        boot_seed: int = typer.Option(0, "--boot-seed", help="Seed of the bootstrap plan."),
        age_bands: str = typer.Option("0,40,60,80", "--age-bands", help="Lower bounds of the subgroup age bands."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Embedding batch size (images only)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (embedding images only)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace finished predictions in --out."),
        json_out: bool = typer.Option(False, "--json", help="Print the metrics as one JSON document."),
    ) -> None:
        """Apply a trained probe head to another store or to new images; with labels, evaluate it (external
        validation) with bootstrap CIs and subgroups."""
        from embedkit.app.predict import predict

        for name, value, allowed in (("rows", rows, ("auto", "test", "all")),
                                     ("bootstrap", bootstrap, ("auto", "patients", "images")),
                                     ("device", device, ("auto", "cpu", "cuda"))):
            if value not in allowed:
                raise bad_parameter(name, "predict", " | ".join(allowed), value)
        bands = parse_age_bands(age_bands, "predict")
        check_out(out, noun="predict output", is_ours=_is_predict_output)

        def say(msg: str) -> None:
            if not json_out:
                typer.echo(msg, err=True)

        res = predict(run, data, out, model=model, n_boot=n_boot, boot_seed=boot_seed, bootstrap=bootstrap,
                      rows=rows, age_bands=bands, batch_size=batch_size, device=device, overwrite=overwrite, say=say)
        if json_out:
            print_json(res.metrics if res.metrics is not None else
                       {"out": str(res.out), "predictions": str(res.out / "predictions.csv"),
                        "matched": res.matched, "head_only": res.unmatched_head, "data_only": res.unmatched_data})
            return
        if res.metrics is not None:
            _print_table(res.metrics, res.notes)
        else:
            typer.echo(str(res.out / "predictions.csv"))

