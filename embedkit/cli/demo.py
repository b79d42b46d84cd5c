"""``embedkit demo``: the whole pipeline, offline, on synthetic phantoms and a tiny random DINOv3 ViT.

The demo runs the real commands one after another (each echoed as the line a user would type), so what it shows is
exactly what ``embedkit phantoms / extract / info / probe / index / search`` do on real data.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import typer


#: Everything the demo writes into --out (the first must be there for a folder to count as a demo folder).
_DEMO_ENTRIES = ("phantoms", "phantoms.zarr", "phantoms.zarr.index", "runs", "tiny-dinov3-vit", "phantoms-b",
                 "compare", ".embedkit-bootstrap")


def _run(app: typer.Typer, args: list[str]) -> None:
    """Run one embedkit command in this process; a non-zero exit stops the demo with that code."""
    typer.secho("\n$ embedkit " + shlex.join(args), fg=typer.colors.CYAN, err=True)
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="embedkit", standalone_mode=False)
    except typer.Exit as exc:
        if exc.exit_code:
            raise
    except SystemExit as exc:  # click's standalone paths may still exit
        if exc.code:
            raise typer.Exit(int(exc.code)) from None


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("embedkit-demo"), "--out", help="Folder for everything the demo writes."),
        n: int = typer.Option(240, "--n", min=30, help="Number of phantom radiographs."),
        size: int = typer.Option(96, "--size", min=32, help="Phantom image size in pixels."),
        res: int = typer.Option(64, "--res", min=16, help="Backbone input resolution (a multiple of 16)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the phantoms and of the tiny model."),
    ) -> None:
        """Run phantoms -> tiny DINOv3 -> extract -> info -> probe -> finetune -> compare -> predict -> index ->
        search, offline, in about a minute on 2 CPU cores."""
        if res % 16:
            raise typer.BadParameter(f"The 'res' parameter of demo must be a multiple of 16. Got {res}.")
        from embedkit.cli._common import check_out, only_entries

        # Re-running the demo in its own folder redoes it; anything else there is refused.
        check_out(out, noun="demo folder", is_ours=only_entries(*_DEMO_ENTRIES))
        out.mkdir(parents=True, exist_ok=True)
        phantoms, store, run = out / "phantoms", out / "phantoms.zarr", out / "runs" / "linear"

        _run(app, ["phantoms", "--out", str(phantoms), "--n", str(n), "--size", str(size), "--seed", str(seed),
                   "--overwrite"])

        from embedkit.testing import make_tiny_backbone

        model = make_tiny_backbone("dinov3-vit", out, seed=seed)
        typer.secho(f"\n# a tiny randomly initialised DINOv3 ViT, saved with save_pretrained: {model}", err=True)

        manifest = phantoms / "manifest.csv"
        _run(app, ["extract", "--model", str(model), "--res", str(res), "--data", str(manifest), "--out", str(store),
                   "--workers", "0"])
        _run(app, ["info", str(store)])
        _run(app, ["probe", str(store), "--out", str(run), "--features", "cls+mean_patch", "--n-boot", "200",
                   "--overwrite"])
        # The same backbone finetuned end to end on the store's own rows, split and bootstrap plan, then compared
        # with the frozen probe (paired bootstrap, Holm-adjusted p-values).
        finetuned = out / "runs" / "finetune"
        _run(app, ["finetune", "--model", str(model), "--res", str(res), "--data", str(store), "--out", str(finetuned),
                   "--protocol", "modern", "--epochs", "2", "--batch-size", "32", "--lr", "1e-3", "--n-boot", "200",
                   "--workers", "0", "--device", "cpu"])
        _run(app, ["compare", str(run), str(finetuned), "--out", str(out / "compare")])
        # External validation: the frozen probe applied to a second phantom set (another seed), embedded with the
        # run's own backbone and preset.
        other = out / "phantoms-b"
        _run(app, ["phantoms", "--out", str(other), "--n", str(max(30, n // 2)), "--size", str(size), "--seed",
                   str(seed + 1), "--overwrite"])
        _run(app, ["predict", str(run), "--data", str(other / "manifest.csv"), "--out",
                   str(out / "runs" / "predict-b"), "--overwrite"])
        _run(app, ["index", str(store), "--features", "mean_patch"])
        query = _first_test_image(manifest)
        _run(app, ["search", str(store), "--image", str(query), "-k", "5", "--features", "mean_patch"])
        typer.secho(
            f"\nDone. Store: {store}  probe run: {run}  finetune run: {finetuned}  (metrics.json, per_label.csv, "
            f"subgroups.csv, roc.png); compare: {out / 'compare'}; external validation: {out / 'runs' / 'predict-b'}.\n"
            f"A whole grid (datasets x resolutions x backbones x frozen/finetune arms) in one command: "
            f"'embedkit study --example > study.toml && embedkit study study.toml --out study'.\n"
            f"Next: 'embedkit manifest nih:/data/nih --out nih.csv', then "
            f"'embedkit extract --model dinov3-vitb16 --res 512 --data nih.csv --out nih.zarr'.",
            fg=typer.colors.GREEN,
            err=True,
        )


def _first_test_image(manifest: Path) -> Path:
    import csv

    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    row = next((r for r in rows if r.get("split") == "test"), rows[0])
    path = Path(row["path"])
    return path if path.is_absolute() else manifest.parent / path
