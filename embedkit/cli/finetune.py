"""``embedkit finetune``: train a backbone + linear head end to end; evaluated and written like a probe run."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from embedkit.cli._common import bad_parameter, check_out, print_json


class _TrainProgress:
    """Finetune's step events -> :class:`embedkit.progress.Progress` (steps of the whole run; epoch, step, loss,
    lr and img/s shown with it). Epoch summaries come through ``log`` (also in train.log)."""

    def __init__(self) -> None:
        from embedkit.progress import Progress

        self.bar = Progress("finetune", unit="step")
        self._images = 0
        self._start: tuple[float, int] | None = None  # clock and images at the first step: loading is not counted

    def __call__(self, ev: dict) -> None:
        if ev["event"] == "epoch" and ev["epoch"] >= ev["epochs"]:
            self.bar.close()  # training is over: its last line before the evaluation's messages
        if ev["event"] != "step":
            return
        now = time.monotonic()
        self._images += int(ev.get("images", 0))
        if self._start is None:
            self._start = (now, self._images)
        t0, i0 = self._start
        rate = (self._images - i0) / (now - t0) if now > t0 else 0.0
        self.bar.update(ev["global_step"], ev["epochs"] * ev["steps"], epoch=f"{ev['epoch']}/{ev['epochs']}",
                        step=f"{ev['step']}/{ev['steps']}", loss=float(ev["loss"]), lr=float(ev["lr"]),
                        **{"img/s": rate})

    def close(self, *, success: bool = True) -> None:
        self.bar.close(success=success)


def register(app: typer.Typer) -> None:
    """Add ``finetune``."""

    @app.command("finetune")
    def finetune_cmd(
        model: str = typer.Option(..., "--model", "-m", help="Registry name, hub id, timm:NAME, folder or file."),
        res: int = typer.Option(..., "--res", min=1, help="Input side in pixels."),
        data: str = typer.Option(..., "--data",
                                 help="Embedding store (rows, labels, split and test ids of its probes), image "
                                      "cache, manifest CSV or ADAPTER:ROOT."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory (the same command resumes it)."),
        mode: str = typer.Option("full", "--mode", help="full | last:K (only the last K blocks train) | lora "
                                                        "(peft adapters, r=16; needs the 'lora' extra: peft)."),
        protocol: str = typer.Option("paper", "--protocol",
                                     help="paper (Adam 1e-5, batch 30, fp32, paper preset) | modern (AdamW, cosine "
                                          "+ warm-up, layer-wise lr decay, bf16 on GPU, model preset)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="[paper 100, modern 30]"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per micro-batch, all "
                                                 "ranks together [paper 30, modern 32]."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate [paper 1e-5, modern 1e-4]."),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="[paper 0, modern 0.05]"),
        precision: Optional[str] = typer.Option(None, "--precision", help="auto | fp32 | bf16 (autocast, CUDA)."),
        grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing",
                                                help="Recompute block activations in backward (1024 px)."),
        accumulate: int = typer.Option(1, "--accumulate", min=1, help="Micro-batches per optimiser step."),
        grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Max gradient norm (off)."),
        seed: int = typer.Option(0, "--seed", help="Order, augmentation and head initialisation seed."),
        workers: int = typer.Option(0, "--workers", min=0, help="Loader processes reading the image cache."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="First N rows only (smoke runs)."),
        select: Optional[str] = typer.Option(None, "--select",
                                             help="val-loss (paper) | val-auroc: which validation figure keeps an "
                                                  "epoch."),
        pool: str = typer.Option("auto", "--pool", help="auto | mean_tokens | cls | pooled."),
        checkpoint_every: int = typer.Option(0, "--checkpoint-every", min=0,
                                             help="Also checkpoint every N optimiser steps (epoch ends always)."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the backbone."),
        n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples of the test set."),
        bootstrap: str = typer.Option("auto", "--bootstrap",
                                      help="auto (patients when the data has patient ids) | images | patients."),
        boot_seed: int = typer.Option(0, "--boot-seed", help="Seed of the bootstrap plan (keep to pair runs)."),
        split_unit: Optional[str] = typer.Option(
            None, "--split-unit", help="Data without patient ids: accept making or carving the split by 'study' or "
                                       "'image' (as 'embedkit probe')."),
        allow_leak: bool = typer.Option(False, "--allow-leak",
                                        help="Go on when a patient or study sits in two splits (recorded)."),
        age_bands: str = typer.Option("0,40,60,80", "--age-bands",
                                      help="Lower bounds of the subgroup age bands (subgroups.csv)."),
        no_subgroups: bool = typer.Option(False, "--no-subgroups", help="Skip the subgroup metrics."),
        download: bool = typer.Option(False, "--download", help="Fetch missing weights from the hub."),
        json_out: bool = typer.Option(False, "--json", help="Print metrics.json as one JSON document."),
    ) -> None:
        """Finetune MODEL (backbone + linear head) on DATA; test metrics with bootstrap CIs, as 'embedkit probe'."""
        from embedkit.app.finetune import PROTOCOLS, run_finetune

        if protocol not in PROTOCOLS:
            raise bad_parameter("protocol", "finetune", f"one of {', '.join(PROTOCOLS)}", protocol)
        if precision not in (None, "auto", "fp32", "bf16"):
            raise bad_parameter("precision", "finetune", "auto, fp32 or bf16", precision)
        if select not in (None, "val-loss", "val-auroc"):
            raise bad_parameter("select", "finetune", "val-loss or val-auroc", select)
        if bootstrap not in ("auto", "images", "patients"):
            raise bad_parameter("bootstrap", "finetune", "auto, images or patients", bootstrap)
        if mode not in ("full", "lora") and not mode.startswith("last:"):
            raise bad_parameter("mode", "finetune", "full, last:K or lora", mode)
        if split_unit not in (None, "patient", "study", "image"):
            raise bad_parameter("split-unit", "finetune", "patient, study or image", split_unit)
        from embedkit.cli.predict import parse_age_bands

        bands = parse_age_bands(age_bands, "finetune")
        check_out(out, noun="finetune run", is_ours=lambda p: (p / "finetune.json").exists())
        bar = _TrainProgress()  # stderr only: --json keeps stdout to the one document

        def log(msg: str) -> None:
            if not json_out:
                typer.echo(msg, err=True)

        try:
            result = run_finetune(model, data, out, res=res, mode=mode, protocol=protocol, epochs=epochs,  # type: ignore[arg-type]
                                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, precision=precision,  # type: ignore[arg-type]
                                  grad_checkpointing=grad_checkpointing, accumulate=accumulate, grad_clip=grad_clip,
                                  seed=seed, workers=workers, device=device, limit=limit, select=select,  # type: ignore[arg-type]
                                  pool=pool, checkpoint_every=checkpoint_every, compile=compile, n_boot=n_boot,
                                  boot_seed=boot_seed, bootstrap=bootstrap, allow_download=download,  # type: ignore[arg-type]
                                  split_unit=split_unit, allow_leak=allow_leak,  # type: ignore[arg-type]
                                  subgroups=not no_subgroups, age_bands=bands, progress=bar, log=log)
        except BaseException:
            bar.close(success=False)
            raise
        bar.close()
        doc = result.metrics
        if result.already_done and not json_out:
            typer.echo(f"{out} is already finished; showing its metrics", err=True)
        if json_out:
            print_json(doc)
            return
        from embedkit.cli.probe import _print_run_table

        _print_run_table(doc, title=f"{doc['head']} ({doc['features']}), kept epoch {doc['chosen']['epoch']} "
                                    f"by {doc['chosen']['select']}")
