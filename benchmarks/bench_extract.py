"""Extraction throughput: the full pipeline vs the bare model forward, and peak memory vs dataset size.

CPU (default; a few minutes on 2 cores)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_extract.py

1. ``pipeline_over_forward_cache``: img/s of ``run_extract`` (images served from an image cache, rows written to a
   store, DataLoader worker, writer thread) over img/s of ``backbone.embed`` on a preloaded batch -- same random
   ViT-S/16 (``DINOv3ViTConfig()`` defaults), same resolution (224), same batch size, same process. Target >= 0.90.
2. ``pipeline_over_forward_png1024``: the same ratio with 1024 px PNG sources (decode + resize in the workers,
   which share the 2 cores with the model here; on a GPU node the workers have cores of their own).
3. ``rss_ratio_20k_over_2k``: peak RSS of an extract of 20,000 vs 2,000 images (tiny model, 32 px, from an image
   cache), each in a fresh subprocess. Target <= 1.10.

GPU (``--device cuda``; run on an H100/H200)::

    HF_HUB_OFFLINE=1 python benchmarks/bench_extract.py --device cuda [--gpu-models vitb16,vit7b16] [--res 512]

For a randomly initialised DINOv3 ViT-B/16 and ViT-7B/16 (configs of the released models) at 512 px in
``bf16-weights`` (what ``--precision auto`` uses on CUDA): pipeline img/s (from an image cache, rows to a store),
bare-forward img/s, model FLOP utilisation (FLOPs counted analytically from the config; peak = the card's dense bf16
figure, :func:`peak_bf16`), and ``parity``: fp32 vs bf16-weights features of the ViT-B on the same images.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from NVIDIA's datasheets, matched against
# torch.cuda.get_device_name in order (the first pattern contained in the name wins; variants before the family).
PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("H200 NVL", 835e12), ("H200", 989.4e12), ("GH200", 989.4e12),
    ("A100", 312e12), ("L40S", 362.05e12), ("B200", 2250e12),
)


def peak_bf16(name: str) -> float | None:
    """Dense bf16 peak of the card called ``name`` (None when unknown: MFU is then left out, never guessed)."""
    return next((v for k, v in PEAK_BF16 if k in name), None)

GPU_CONFIGS = {
    # Released DINOv3 configs (transformers' convert_dinov3_vit_to_hf.py), random weights.
    "vitb16": dict(patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   num_register_tokens=4, use_gated_mlp=False, hidden_act="gelu", proj_bias=True),
    "vit7b16": dict(patch_size=16, hidden_size=4096, intermediate_size=8192, num_hidden_layers=40,
                    num_attention_heads=32, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu",
                    query_bias=False, value_bias=False, proj_bias=True),
}


# ---------------------------------------------------------------------------------------------------- helpers
def write_pngs(out: Path, n: int, size: int, seed: int = 0, distinct: int = 16) -> Path:
    """``distinct`` radiograph-like PNGs repeated to ``n`` rows; returns a manifest CSV (id, path, two labels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    files = []
    for i in range(min(n, distinct)):
        field = np.kron(rng.normal(size=(16, 16)), np.ones((size // 16, size // 16)))
        lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + np.exp(
            -(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
        img = 0.55 - 0.35 * lungs + 0.04 * field + 0.02 * rng.normal(size=(size, size))
        p = out / f"src_{i:03d}.png"
        Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(p)
        files.append(p)
    manifest = out / f"manifest_{size}_{n}.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "a", "b"])
        for i in range(n):
            w.writerow([f"r{i:06d}", files[i % len(files)].name, i % 2, (i // 2) % 2])
    return manifest


def save_vit(out: Path, **cfg) -> Path:
    """A random DINOv3 ViT saved with save_pretrained (+ its image processor), loadable by load_backbone."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    torch.manual_seed(0)
    DINOv3ViTModel(DINOv3ViTConfig(**cfg)).save_pretrained(out)
    DINOv3ViTImageProcessor().save_pretrained(out)
    return out


def bare_forward_img_per_s(bb, pixels, n_images: int, batch: int) -> float:
    """img/s of ``bb.embed`` on one preloaded batch, repeated to cover ``n_images``."""
    import torch

    bb.embed(pixels[:batch])  # warm-up
    sync = torch.cuda.synchronize if pixels.device.type == "cuda" else (lambda: None)
    sync()
    reps = max(1, n_images // batch)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = bb.embed(pixels[:batch])
    next(iter(out.values())).float().sum().item()
    sync()
    return reps * batch / (time.perf_counter() - t0)


def vit_flops_per_image(cfg: dict, res: int) -> float:
    """Forward FLOPs (2 per multiply-add) of a DINOv3 ViT at ``res``: patch embed, attention, MLP."""
    d, f, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    p = cfg["patch_size"]
    n_patch = (res // p) ** 2
    t = 1 + cfg.get("num_register_tokens", 0) + n_patch
    embed = 2 * n_patch * 3 * p * p * d
    attn_proj = 2 * t * d * 4 * d
    attn_mix = 2 * 2 * t * t * d
    mlp = 2 * t * d * f * (3 if cfg.get("use_gated_mlp") else 2)
    return embed + layers * (attn_proj + attn_mix + mlp)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------- CPU parts
def cpu_ratio(tmp: Path, *, source_px: int, n: int, batch: int, res: int, workers: int, model_dir: Path,
              repeats: int = 2) -> dict:
    import torch

    from embedkit.backbones import load_backbone
    from embedkit.extract.run import run_cache_images, run_extract

    manifest = write_pngs(tmp, n, source_px)
    if source_px == res:
        cache = tmp / f"cache_{n}.zarr"
        run_cache_images(str(manifest), cache, res=res, batch_size=batch, workers=workers)
        data = str(cache)
    else:
        data = str(manifest)
    bb = load_backbone(str(model_dir), device="cpu", precision="fp32", features=["cls", "mean_patch"])
    pixels = torch.rand(batch, 3, res, res)
    # Interleaved F P F P F, best of each: on a shared machine the load changes from minute to minute, and the
    # best run is the one least disturbed (the same rule for both sides).
    bare, pipe = [bare_forward_img_per_s(bb, pixels, n, batch)], []
    for k in range(repeats):
        report = run_extract(str(model_dir), data, tmp / f"store_{source_px}_{k}.zarr", res=res, batch_size=batch,
                             workers=workers, device="cpu", dtype="float16", features=["cls", "mean_patch"])
        pipe.append(report.img_per_s)
        bare.append(bare_forward_img_per_s(bb, pixels, n, batch))
    return {"pipeline_img_per_s": pipe, "forward_img_per_s": bare, "ratio": max(pipe) / max(bare),
            "images": n, "done": report.done}


def rss_child(cache: str, model_dir: str, out: str) -> None:
    """Subprocess body: one extract from a cache, then print peak RSS (MiB) as JSON."""
    import psutil
    import torch  # noqa: F401 - the imports (~0.8 GB) are the baseline, not growth
    import transformers  # noqa: F401

    from embedkit.extract.run import run_extract

    before = psutil.Process().memory_info().rss / 2**20
    report = run_extract(model_dir, cache, out, res=32, batch_size=64, workers=1, device="cpu",
                         rows_per_shard=512)
    print(json.dumps({"rows": report.rows_total, "done": report.done, "peak_rss_mb": peak_rss_mb(),
                      "peak_growth_mb": peak_rss_mb() - before,
                      "rss_before_mb": before, "rss_after_mb": psutil.Process().memory_info().rss / 2**20,
                      "peak_rss_workers_mb": report.peak_rss_workers_mb, "seconds": report.seconds}))


def rss_ratio(tmp: Path, sizes: tuple[int, int]) -> dict:
    from stores.image_cache import ImageCache

    model_dir = save_vit(tmp / "tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_register_tokens=4)
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        path = tmp / f"rss_cache_{n}.zarr"
        cache = ImageCache.create(path, ids=[f"r{i:06d}" for i in range(n)], resolution=32, unit_rows=512,
                                  provenance={"resolution": 32, "preprocess": _cache_preprocess(32)},
                                  labels=rng.integers(0, 2, (n, 3)).astype(np.float32), label_names=["a", "b", "c"],
                                  split=["train"] * n)
        for u in range(cache.n_units):
            sl = cache.unit_slice(u)
            cache.write_unit(u, {"images": rng.integers(0, 255, (sl.stop - sl.start, 32, 32), dtype=np.uint8)})
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(path), str(model_dir), str(tmp / f"rss_store_{n}.zarr")],
            capture_output=True, text=True, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    small, big = sizes
    return {"rss_mb": {str(k): v["peak_rss_mb"] for k, v in out.items()}, "rss_detail": {str(k): v for k, v in out.items()},
            "rss_ratio": out[big]["peak_rss_mb"] / out[small]["peak_rss_mb"],
            # Peaks include the imports (~0.8 GB of torch), which hide growth; the growth past them does not.
            "rss_growth_ratio": out[big]["peak_growth_mb"] / out[small]["peak_growth_mb"]}


def _cache_preprocess(res: int) -> dict:
    from embedkit.extract.pipeline import make_preset_for, preset_block
    from embedkit.extract.run import IMAGENET_MEAN, IMAGENET_STD
    from embedkit.extract.source import uint8_params

    pre = make_preset_for("model", resolution=res, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="pad")
    return uint8_params(preset_block("model", pre))


# ---------------------------------------------------------------------------------------------------- GPU part
def parity(module, cfg: dict, *, res: int, device: str, n: int) -> dict:
    """fp32 vs ``bf16-weights`` features of one random model on the same images (max abs, min cosine per view).

    The fp32 features come first: building the bf16-weights backbone casts ``module``'s matmul weights in place.
    """
    import torch

    from embedkit.backbones.families import get_family
    from embedkit.backbones.hf import HFViTBackbone
    from embedkit.backbones.spec import BackboneSpec
    from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD

    spec = BackboneSpec(name="random-dinov3", source="transformers", hub_id=None, embed_dim=cfg["hidden_size"],
                        patch_size=16, num_registers=4, mean=IMAGENET_MEAN, std=IMAGENET_STD, license="none",
                        loader="dinov3-vit")
    torch.manual_seed(1)
    x = torch.randn(n, 3, res, res, device=device)
    out = {}
    for prec in ("fp32", "bf16-weights"):
        bb = HFViTBackbone(spec, module, ["cls", "mean_patch"], family=get_family(spec.loader),
                           device=torch.device(device), precision=prec,
                           origin={"id": None, "path": None, "sha256": "random"})
        out[prec] = bb.embed(x)
        for h in bb._hooks:
            h.remove()
    ref, got = out["fp32"], out["bf16-weights"]
    return {view: {"max_abs": (got[view] - ref[view]).abs().max().item(),
                   "ref_max_abs": ref[view].abs().max().item(),
                   "min_cosine": torch.nn.functional.cosine_similarity(got[view], ref[view], dim=1).min().item()}
            for view in ref}


def gpu_figures(tmp: Path, *, names: list[str], res: int, n: int, batch: dict, workers: int,
                device: str = "cuda", configs: dict | None = None, parity_model: str = "vitb16") -> dict:
    """Pipeline and bare-forward img/s + MFU per model. ``device="cpu"`` with tiny ``configs`` is a smoke run."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from embedkit.backbones.families import get_family
    from embedkit.backbones.hf import HFViTBackbone
    from embedkit.backbones.spec import BackboneSpec
    from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD
    from embedkit.extract.run import run_cache_images, run_extract

    manifest = write_pngs(tmp, n, res)
    cache = tmp / "gpu_cache.zarr"
    run_cache_images(str(manifest), cache, res=res, batch_size=64, workers=max(workers, 8 if device == "cuda" else 1))
    configs = configs or GPU_CONFIGS
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke run)"
    peak = peak_bf16(name)
    results = {"gpu": name, "peak_bf16_flops": peak}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for key in names:
        cfg = configs[key]
        torch.manual_seed(0)
        with torch.device(device):
            # Built on the device in fp32 (random init), then bf16-weights casts the matmul weights in place:
            # the 7B peaks at ~27 GB + one layer during the cast, then holds 13.4 GB.
            module = DINOv3ViTModel(DINOv3ViTConfig(**cfg))
        sync()
        if key == parity_model:
            results["parity"] = parity(module, cfg, res=res, device=device, n=8 if device == "cuda" else 4)
        spec = BackboneSpec(name=f"random-dinov3-{key}", source="transformers", hub_id=None,
                            embed_dim=cfg["hidden_size"], patch_size=16, num_registers=4, mean=IMAGENET_MEAN,
                            std=IMAGENET_STD, license="none", loader="dinov3-vit")
        bb = HFViTBackbone(spec, module, ["cls", "mean_patch"], family=get_family(spec.loader),
                           device=torch.device(device), precision="bf16-weights",
                           origin={"id": None, "path": None, "sha256": "random"})
        b = batch.get(key, 32)
        n_key = n if "7b" not in key else min(n, 512)
        # Warm-up outside the timed pipeline (cuDNN/cuBLAS heuristics, allocator growth).
        bb.embed(torch.rand(b, 3, res, res, device=device))
        sync()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        report = run_extract(bb, str(cache), tmp / f"gpu_{key}.zarr", res=res, batch_size=b, workers=workers,
                             device=device, dtype="float16", limit=n_key)
        pixels = torch.rand(b, 3, res, res, device=device)
        bare = bare_forward_img_per_s(bb, pixels, max(n_key, 4 * b), b)
        flops = vit_flops_per_image(cfg, res)
        results[key] = {
            "batch": b, "images": n_key, "pipeline_img_per_s": report.img_per_s, "forward_img_per_s": bare,
            "ratio": report.img_per_s / bare, "gflops_per_img": flops / 1e9,
            "mfu_pipeline": flops * report.img_per_s / peak if peak else None,
            "mfu_forward": flops * bare / peak if peak else None,
            "gpu_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        }
        del bb, module
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description="extract pipeline vs bare forward")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--n", type=int, default=320,
                    help="images for the throughput figures (CPU); fewer lets pipeline fill and drain dominate")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--res", type=int, default=None, help="224 on CPU, 512 on CUDA")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rss-sizes", default="2000,20000")
    ap.add_argument("--skip", default="", help="comma list of: cache,png1024,rss")
    ap.add_argument("--gpu-models", default="vitb16,vit7b16")
    ap.add_argument("--gpu-n", type=int, default=2048, help="images for ViT-B (the 7B gets min(n, 512))")
    ap.add_argument("--gpu-smoke", action="store_true", help=argparse.SUPPRESS)  # the CUDA code path, tiny, on CPU
    ap.add_argument("--rss-child", nargs=3, metavar=("CACHE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {"bench": "extract", "device": args.device, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.gpu_smoke:
            tiny = {k: dict(v, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
                    for k, v in GPU_CONFIGS.items()}
            result.update(res=64, **gpu_figures(tmp, names=args.gpu_models.split(","), res=64, n=32,
                                                batch={"vitb16": 8, "vit7b16": 8}, workers=1, device="cpu",
                                                configs=tiny))
            print(json.dumps(result))
            return
        if args.device == "cuda":
            res = args.res or 512
            result.update(res=res, **gpu_figures(tmp, names=args.gpu_models.split(","), res=res, n=args.gpu_n,
                                                 batch={"vitb16": 128, "vit7b16": 32}, workers=max(4, args.workers)))
            print(json.dumps(result))
            return
        res = args.res or 224
        model_dir = save_vit(tmp / "vits16")  # DINOv3ViTConfig() defaults = ViT-S/16
        result.update(model="random DINOv3 ViT-S/16", res=res, batch=args.batch, workers=args.workers)
        if "cache" not in skip:
            (tmp / "a").mkdir()
            r = cpu_ratio(tmp / "a", source_px=res, n=args.n, batch=args.batch, res=res, workers=args.workers,
                          model_dir=model_dir)
            result["cache"] = r
            result["pipeline_over_forward_cache"] = r["ratio"]
        if "png1024" not in skip:
            (tmp / "b").mkdir()
            r = cpu_ratio(tmp / "b", source_px=1024, n=args.n, batch=args.batch, res=res, workers=args.workers,
                          model_dir=model_dir)
            result["png1024"] = r
            result["pipeline_over_forward_png1024"] = r["ratio"]
        if "rss" not in skip:
            sizes = tuple(int(s) for s in args.rss_sizes.split(","))
            (tmp / "c").mkdir()
            r = rss_ratio(tmp / "c", sizes)
            result.update(rss_mb=r["rss_mb"], rss_detail=r["rss_detail"], rss_ratio_20k_over_2k=r["rss_ratio"],
                          rss_growth_ratio_20k_over_2k=r["rss_growth_ratio"])
        result["targets"] = {"pipeline_over_forward_cache": ">= 0.90", "rss_growth_ratio_20k_over_2k": "<= 1.10"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
