"""``embedkit demo``: the whole pipeline, offline, on synthetic phantoms and a tiny random DINOv3 ViT.

The demo runs the real commands one after another (each echoed as the line a user would type), so what it shows is
exactly what ``embedkit phantoms / extract / info / probe / index / search`` do on real data.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import typer


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
        """Run phantoms -> tiny DINOv3 -> extract -> info -> probe -> index -> search, offline, in seconds."""
        if res % 16:
            raise typer.BadParameter(f"The 'res' parameter of demo must be a multiple of 16. Got {res}.")
        out.mkdir(parents=True, exist_ok=True)
        phantoms, store, run = out / "phantoms", out / "phantoms.zarr", out / "runs" / "linear"

        _run(app, ["phantoms", "--out", str(phantoms), "--n", str(n), "--size", str(size), "--seed", str(seed)])

        from embedkit.testing import make_tiny_backbone

        model = make_tiny_backbone("dinov3-vit", out, seed=seed)
        typer.secho(f"\n# a tiny randomly initialised DINOv3 ViT, saved with save_pretrained: {model}", err=True)

        manifest = phantoms / "manifest.csv"
        _run(app, ["extract", "--model", str(model), "--res", str(res), "--data", str(manifest), "--out", str(store),
                   "--workers", "0"])
        _run(app, ["info", str(store)])
        _run(app, ["probe", str(store), "--out", str(run), "--features", "cls+mean_patch", "--n-boot", "200",
                   "--overwrite"])
        _run(app, ["index", str(store), "--features", "mean_patch"])
        query = _first_test_image(manifest)
        _run(app, ["search", str(store), "--image", str(query), "-k", "5", "--features", "mean_patch"])
        typer.secho(
            f"\nDone. Store: {store}  probe run: {run}  (metrics.json, per_label.csv, roc.png).\n"
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
