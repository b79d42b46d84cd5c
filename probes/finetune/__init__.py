"""Finetuning an ``nn.Module`` on uint8 images with multi-label masked BCE: the loop and its checkpoints.

Takes a module, an image array and label/row arrays, never a backbone or dataset name (those live in
``embedkit.app.finetune``). Heavy imports (torch) happen inside the functions.
"""
from __future__ import annotations

from probes.finetune.checkpoint import atomic_write, load_checkpoint, save_checkpoint, save_weights, sweep_temporaries
from probes.finetune.loop import (
    FinetuneError,
    FitResult,
    TrainConfig,
    batch_bounds,
    epoch_order,
    fit,
    masked_bce_sum,
    positive_weights,
    predict,
    step_seed,
    take_images,
)

__all__ = ["FinetuneError", "FitResult", "TrainConfig", "atomic_write", "batch_bounds", "epoch_order", "fit",
           "load_checkpoint", "masked_bce_sum", "positive_weights", "predict", "save_checkpoint", "save_weights",
           "step_seed", "sweep_temporaries", "take_images"]
