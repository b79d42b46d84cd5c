"""Finetuning throughput: the whole training loop vs bare forward/backward/step on preloaded tensors.

CPU (default; ~2-4 minutes on 2 cores)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_finetune.py

``loop_over_bare``: training img/s of ``run_finetune`` (the command's code path: uint8 images from an image cache
-> device-side flip/rotation + normalisation -> forward/backward -> AdamW step with layer-wise lr groups, the
``modern`` protocol) over img/s of ``loss.backward(); opt.step()`` on one preloaded float batch -- same random
ViT-S/16 (``DINOv3ViTConfig()`` defaults) loaded through ``load_backbone`` and wrapped by ``build_model``, same
224 px, same batch, same optimiser and parameter groups, same process and threads. Both sides are warmed the same
way: one epoch's worth of steps untimed (the loop's epoch 1), then one epoch's worth timed (the loop's epoch 2, as
its own ``train_log`` reports it: training time only, validation excluded). Target >= 0.90.

GPU (``--device cuda``; an H100/H200)::

    HF_HUB_OFFLINE=1 python benchmarks/bench_finetune.py --device cuda [--gpu-models vitb16,convnextb] [--res 512]

Random DINOv3 ViT-B/16 and ConvNeXt-B (the released configs) at 512 px, bf16 autocast (``--precision auto``),
channels_last for the ConvNeXt: loop and bare img/s, their ratio, and model FLOP utilisation = training FLOPs per
image (forward + backward, counted by ``torch.utils.flop_counter`` on one image) x img/s / the card's dense bf16
peak (:func:`bench_extract.peak_bf16`). ``--gpu-smoke`` runs that code path on tiny configs on the CPU.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


from bench_extract import GPU_CONFIGS, peak_bf16, write_pngs  # noqa: E402

CONFIGS = {
    "vits16": ("vit", {}),  # DINOv3ViTConfig() defaults: ViT-S/16
    "vitb16": ("vit", GPU_CONFIGS["vitb16"]),
    # The released DINOv3 ConvNeXt-B (transformers' convert_dinov3_convnext_to_hf.py).
    "convnextb": ("convnext", dict(hidden_sizes=[128, 256, 512, 1024], depths=[3, 3, 27, 3])),
}
TINY = {"vit": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
        "convnext": dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])}


def save_model(out: Path, family: str, cfg: dict) -> Path:
    """A random DINOv3 ViT / ConvNeXt saved with ``save_pretrained`` + its image processor (what users load)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if family == "vit":
        model = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**cfg))
    else:
        model = transformers.DINOv3ConvNextModel(transformers.DINOv3ConvNextConfig(**cfg))
    model.save_pretrained(out)
    transformers.DINOv3ViTImageProcessor().save_pretrained(out)
    return out


def make_cache(tmp: Path, *, n_train: int, n_eval: int, res: int) -> Path:
    """An image cache (``model`` preset at ``res``) of n_train train + n_eval val + n_eval test rows."""
    import pandas as pd

    from embedkit.extract.run import run_cache_images

    tmp.mkdir(parents=True, exist_ok=True)
    manifest = write_pngs(tmp, n_train + 2 * n_eval, res)
    df = pd.read_csv(manifest)
    df["split"] = ["train"] * n_train + ["val"] * n_eval + ["test"] * n_eval
    df["patient_id"] = [f"p{i}" for i in range(len(df))]
    df.to_csv(manifest, index=False)
    cache = tmp / f"cache_{res}.zarr"
    run_cache_images(str(manifest), cache, res=res, preprocess="model", batch_size=32, workers=0)
    return cache


class Bare:
    """Forward/backward/step on one preloaded batch; the model, parameter groups, optimiser and autocast are built
    by the same functions ``run_finetune`` uses."""

    def __init__(self, model_dir: Path, *, res: int, batch: int, device: str, precision: str,
                 n_labels: int = 2) -> None:
        import torch

        from embedkit.app.finetune import PROTOCOLS
        from embedkit.backbones import load_backbone
        from embedkit.finetune import build_model, param_groups
        from probes.finetune import TrainConfig
        from probes.finetune.loop import make_optimizer

        self.dev = torch.device(device)
        self.precision, self.batch = precision, batch
        bb = load_backbone(str(model_dir), device=self.dev, precision="fp32")
        torch.manual_seed(0)
        self.net = build_model(bb, n_labels)
        channels_last = bb.spec.family == "convnext" and self.dev.type == "cuda"
        bb.module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.net.to(self.dev).train()
        proto = PROTOCOLS["modern"]
        decay = proto.layer_decay_convnext if bb.spec.family == "convnext" else proto.layer_decay_vit
        cfg = TrainConfig(epochs=1, batch_size=batch, lr=proto.lr, weight_decay=proto.weight_decay,
                          optimizer="adamw", precision=precision)
        self.opt = make_optimizer(self.net, cfg, param_groups(self.net, layer_decay=decay))
        self.x = torch.randn(batch, 3, res, res, device=self.dev)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 2, (batch, n_labels), device=self.dev).float()
        self.pw = torch.ones(n_labels, device=self.dev)
        self.sync = torch.cuda.synchronize if self.dev.type == "cuda" else (lambda: None)

    def _loss(self, x, y):
        from probes.finetune import masked_bce_sum
        from probes.finetune.loop import _autocast

        with _autocast(self.dev, self.precision):
            logits = self.net(x)
        s, n = masked_bce_sum(logits, y, self.pw)
        return s / n

    def flops_per_image(self) -> float:
        """Training FLOPs (forward + backward) of one image, by ``torch.utils.flop_counter``."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self._loss(self.x[:1], self.y[:1]).backward()
        self.opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def img_per_s(self, steps: int) -> tuple[float, float]:
        """(img/s of wall time, img/s of this process's CPU time) over ``steps`` steps."""
        self.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self._loss(self.x, self.y).backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.sync()
        n = steps * self.batch
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def loop_img_per_s(model_dir: Path, cache: Path, out: Path, *, res: int, batch: int, device: str, workers: int,
                   epochs: int) -> dict:
    """Training img/s of each epoch of ``run_finetune``: the loop's own ``train_log`` figure (validation excluded)
    and, for epochs 2.., img/s of CPU time from the end of the previous epoch to the epoch's last step."""
    from embedkit.app.finetune import run_finetune

    marks: list[tuple[str, int, float]] = []

    def progress(ev: dict) -> None:
        marks.append((ev["event"], ev["epoch"], time.process_time()))

    t0 = time.perf_counter()
    doc = run_finetune(str(model_dir), str(cache), out, res=res, protocol="modern", epochs=epochs, batch_size=batch,
                       n_boot=10, workers=workers, device=device, progress=progress).metrics
    cpu = []
    for e in range(2, epochs + 1):
        start = next(c for ev, ep, c in marks if ev == "epoch" and ep == e - 1)
        end = [c for ev, ep, c in marks if ev == "step" and ep == e][-1]
        n = sum(1 for ev, ep, _ in marks if ev == "step" and ep == e) * batch
        cpu.append(n / (end - start))
    return {"img_per_s": [h["img_per_s"] for h in doc["history"]], "cpu_img_per_s": cpu,
            "precision": doc["finetune"]["precision"], "run_s": time.perf_counter() - t0}


def measure(tmp: Path, key: str, cfg: tuple[str, dict], *, res: int, batch: int, n_train: int, device: str,
            workers: int, epochs: int = 3) -> dict:
    """Bare (warm-up epoch, timed epoch) -> loop (``epochs``: the first is its warm-up) -> bare (timed epoch);
    best timed figure of each side, so a burst of load from other users on a shared box hits both alike."""
    import torch

    family, config = cfg
    model_dir = save_model(tmp / key, family, config)
    cache = make_cache(tmp / f"data_{key}", n_train=n_train, n_eval=max(batch, 8), res=res)
    steps = n_train // batch
    precision = "bf16" if device == "cuda" else "fp32"
    bare = Bare(model_dir, res=res, batch=batch, device=device, precision=precision)
    flops = bare.flops_per_image()
    bare.img_per_s(steps)  # warm-up: one epoch's worth of steps, as the loop's first epoch
    bare_runs = [bare.img_per_s(steps)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loop = loop_img_per_s(model_dir, cache, tmp / f"run_{key}", res=res, batch=batch, device=device,
                          workers=workers, epochs=epochs)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    bare_runs.append(bare.img_per_s(steps))
    best_loop, best_bare = max(loop["img_per_s"][1:]), max(w for w, _ in bare_runs)
    cpu_loop, cpu_bare = max(loop["cpu_img_per_s"]), max(c for _, c in bare_runs)
    peak = peak_bf16(torch.cuda.get_device_name(0)) if device == "cuda" else None
    return {"family": family, "batch": batch, "steps_per_epoch": steps, "loop_img_per_s": best_loop,
            "loop_img_per_s_epochs": loop["img_per_s"], "bare_img_per_s": best_bare,
            "bare_img_per_s_runs": [w for w, _ in bare_runs], "loop_over_bare": best_loop / best_bare,
            # Per CPU-second of this process: steadier than wall time on a box shared with other jobs.
            "loop_cpu_img_per_s_epochs": loop["cpu_img_per_s"], "bare_cpu_img_per_s_runs": [c for _, c in bare_runs],
            "loop_over_bare_cpu_time": cpu_loop / cpu_bare, "precision": loop["precision"],
            "train_gflops_per_img": flops / 1e9,
            "mfu_loop": flops * best_loop / peak if peak else None,
            "mfu_bare": flops * best_bare / peak if peak else None, "gpu_max_allocated_mb": gpu_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description="finetune loop vs bare forward/backward/step")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--res", type=int, default=None, help="224 on CPU, 512 on CUDA")
    ap.add_argument("--batch", type=int, default=None, help="16 on CPU, 32 on CUDA")
    ap.add_argument("--n-train", type=int, default=None, help="training images per epoch (48 CPU, 512 CUDA)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--gpu-models", default="vitb16,convnextb")
    ap.add_argument("--gpu-smoke", action="store_true", help="the CUDA code path on tiny configs, on the CPU")
    args = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    result: dict = {"bench": "finetune", "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus", "device": args.device,
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "loadavg_before": list(os.getloadavg())}
    gpu = args.device == "cuda" or args.gpu_smoke
    res = args.res or (64 if args.gpu_smoke else 512 if gpu else 224)
    batch = args.batch or (8 if args.gpu_smoke else 32 if gpu else 16)
    n_train = args.n_train or (16 if args.gpu_smoke else 512 if gpu else 48)
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
        result["peak_bf16_flops"] = peak_bf16(result["gpu"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if gpu:
            for key in args.gpu_models.split(","):
                family, cfg = CONFIGS[key]
                if args.gpu_smoke:
                    cfg = {**cfg, **TINY[family]}
                result[key] = measure(tmp, key, (family, cfg), res=res, batch=batch, n_train=n_train,
                                      device="cpu" if args.gpu_smoke else "cuda", workers=args.workers)
            result["targets"] = {"mfu_loop": ">= 0.45"}
        else:
            r = measure(tmp, "vits16", CONFIGS["vits16"], res=res, batch=batch, n_train=n_train, device="cpu",
                        workers=args.workers)
            result.update(model="random DINOv3 ViT-S/16", res=res, vits16=r, loop_over_bare=r["loop_over_bare"],
                          loop_over_bare_cpu_time=r["loop_over_bare_cpu_time"])
            result["targets"] = {"loop_over_bare": ">= 0.90"}
    result["loadavg_after"] = list(os.getloadavg())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
