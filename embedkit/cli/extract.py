"""``embedkit extract`` and ``embedkit cache-images``: thin wrappers over :mod:`embedkit.extract.run`.

Each command builds the engine's options dataclass (:class:`~embedkit.extract.options.ExtractOptions`,
:class:`~embedkit.extract.options.CacheOptions`), which checks every value, and passes it on.

Progress (img/s, ETA) goes to stderr on rank 0; the summary to stdout (``--json``: one document). Errors from the
library become ``error: <msg>`` + exit 2 in ``embedkit.cli.main``; ``--strict`` turns unreadable images into exit 1.
"""
from __future__ import annotations

from typing import Optional

import typer

from embedkit.cli._common import print_json
from embedkit.data.adapters import adapter_names  # the registry only: no pandas

_DATA_HELP = f"Manifest CSV, ADAPTER:ROOT ({adapter_names()}) or an image cache (.zarr)."


def _split_list(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _labels_arg(text: str):
    return text if text in ("full", "paper") else _split_list(text)


def _summary(report, *, as_json: bool, strict: bool, verb: str) -> None:
    import sys

    d = report.as_dict()
    # The store keeps every failure; the summary shows the first 100 (a bad mount can fail 800k rows).
    d["failures"] = dict(list(d["failures"].items())[:100])
    if as_json:
        print_json(d)
    else:
        gpu = f", GPU max allocated {d['gpu_max_allocated_mb']:.0f} MiB" if d["gpu_max_allocated_mb"] is not None else ""
        typer.echo(
            f"{verb} {d['out']}: done {d['done']}, failed {d['failed']}, skipped {d['skipped']} "
            f"(store: {d['store_filled']}/{d['rows_total']} filled, {d['store_failed']} failed"
            f"{'' if d['complete'] else ', INCOMPLETE'}); {d['img_per_s']:.1f} img/s on {d['device']} "
            f"({d['precision']}); peak RSS {d['peak_rss_mb']:.0f} MiB (workers {d['peak_rss_workers_mb']:.0f}){gpu}"
        )
    if d["store_failed"]:
        shown = list(d["failures"].items())[:5]
        more = d["store_failed"] - len(shown)
        sys.stderr.write(
            f"warning: {d['store_failed']} image(s) could not be read; their rows stay empty and the reasons are "
            "recorded in the store: " + "; ".join(f"{k}: {v}" for k, v in shown) + (f"; ... {more} more" if more > 0 else "")
            + "\n"
        )
        if strict:
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``extract`` and ``cache-images`` to ``app``."""

    @app.command("extract")
    def extract_cmd(
        model: str = typer.Option(..., "--model", "-m", help="Registry name, hub id, timm:NAME, a directory or a checkpoint."),
        res: int = typer.Option(..., "--res", "-r", help="Square input resolution in pixels."),
        data: str = typer.Option(..., "--data", "-d", help=_DATA_HELP),
        out: str = typer.Option(..., "--out", "-o", help="Store directory (.zarr); re-running resumes it."),
        features: Optional[str] = typer.Option(None, "--features", help="Comma-separated views, e.g. cls,mean_patch."),
        preprocess: str = typer.Option("model", "--preprocess", help="Preset: model | paper."),
        resize: str = typer.Option("pad", "--resize", help="pad (keep aspect) | stretch."),
        batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Decode processes (default: automatic)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        precision: str = typer.Option("auto", "--precision", help="auto (bf16-weights on CUDA, fp32 on CPU) | fp32 | bf16 (autocast) | bf16-weights (matmul weights bf16, norms and residual fp32)."),
        dtype: str = typer.Option("float16", "--dtype", help="Stored dtype: float16 | float32."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N rows."),
        labels: str = typer.Option("full", "--labels", help="full | paper | comma-separated label names."),
        uncertain: str = typer.Option("zeros", "--uncertain", help="zeros | ones | ignore (CheXpert-style -1 labels)."),
        views: str = typer.Option("frontal", "--views", help="frontal | all."),
        split: Optional[str] = typer.Option(None, "--split", help="official | patient:SEED:TRAIN,VAL,TEST."),
        rows_per_shard: Optional[int] = typer.Option(None, "--rows-per-shard", help="Rows per work unit of a new store."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the backbone."),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 if any image could not be read."),
        download: bool = typer.Option(False, "--download", help="Fetch missing weights from the hub (needs HF_HUB_OFFLINE unset)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Embed every image of DATA with MODEL into a Zarr store (resumable; torchrun/Slurm scale-out)."""
        from embedkit.extract.dist import detect_env
        from embedkit.extract.options import ExtractOptions
        from embedkit.extract.run import run_extract
        from embedkit.progress import Progress

        options = ExtractOptions(
            res=res, features=_split_list(features), preprocess=preprocess, resize=resize, batch_size=batch_size,
            workers=workers, device=device, precision=precision, dtype=dtype, limit=limit, labels=_labels_arg(labels),
            uncertain=uncertain, views=views, split=split, compile=compile, rows_per_shard=rows_per_shard,
            allow_download=download,
        )
        env = detect_env()
        with Progress("extract", enabled=env.is_main) as bar:
            report = run_extract(model, data, out, options, progress=bar, env=env)
        if env.is_main:
            _summary(report, as_json=as_json, strict=strict, verb="extracted")

    @app.command("cache-images")
    def cache_images_cmd(
        data: str = typer.Option(..., "--data", "-d", help=_DATA_HELP),
        res: int = typer.Option(..., "--res", "-r", help="Square resolution in pixels."),
        out: str = typer.Option(..., "--out", "-o", help="Cache directory (.zarr); re-running resumes it."),
        preprocess: str = typer.Option("model", "--preprocess", help="Preset: model | paper."),
        resize: str = typer.Option("pad", "--resize", help="pad (keep aspect) | stretch."),
        batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per worker batch."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Decode processes (default: automatic)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N rows."),
        labels: str = typer.Option("full", "--labels", help="full | paper | comma-separated label names."),
        uncertain: str = typer.Option("zeros", "--uncertain", help="zeros | ones | ignore."),
        views: str = typer.Option("frontal", "--views", help="frontal | all."),
        split: Optional[str] = typer.Option(None, "--split", help="official | patient:SEED:TRAIN,VAL,TEST."),
        unit_rows: int = typer.Option(256, "--unit-rows", help="Images per work unit (shard)."),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 if any image could not be read."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Decode and preprocess DATA once into uint8 images (N, R, R) that 'extract --data CACHE' reads directly."""
        from embedkit.extract.dist import detect_env
        from embedkit.extract.options import CacheOptions
        from embedkit.extract.run import run_cache_images
        from embedkit.progress import Progress

        options = CacheOptions(
            res=res, preprocess=preprocess, resize=resize, batch_size=batch_size, workers=workers, limit=limit,
            labels=_labels_arg(labels), uncertain=uncertain, views=views, split=split, unit_rows=unit_rows,
        )
        env = detect_env()
        with Progress("cache-images", enabled=env.is_main) as bar:
            report = run_cache_images(data, out, options, progress=bar, env=env)
        if env.is_main:
            _summary(report, as_json=as_json, strict=strict, verb="cached")
