"""Image-cache read vs PNG-1024 decode + resize, per image, single process. Prints one JSON line.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_cache.py [--n 64] [--res 512] [--src 1024]

The PNG side is what every epoch without a cache pays: ``decode_image`` + ``preset.to_uint8`` (resize to R).
The cache side reads the same preprocessed images back from the Zarr image cache in batches of 32 (the way the
extract reader does). Target: speedup >= 20x.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def synthetic_cxr_pngs(out: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """8-bit radiograph-like PNGs: smooth anatomy-scale structure plus grain (compresses like real CXRs, ~2x)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        low = rng.normal(size=(16, 16))
        field = np.kron(low, np.ones((size // 16, size // 16)))
        lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + np.exp(
            -(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
        img = 0.55 - 0.35 * lungs + 0.04 * field + 0.02 * rng.normal(size=(size, size))
        arr = np.clip(img * 255, 0, 255).astype(np.uint8)
        p = out / f"img_{i:05d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images")
    ap.add_argument("--res", type=int, default=512, help="cache resolution R")
    ap.add_argument("--src", type=int, default=1024, help="PNG side")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD
    from embedkit.data import decode_image, make_preset
    from stores.image_cache import ImageCache

    preset = make_preset("model", resolution=args.res, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="pad")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = synthetic_cxr_pngs(tmp, args.n, args.src)
        png_mb = sum(p.stat().st_size for p in paths) / 2**20

        t0 = time.perf_counter()
        u8 = np.stack([preset.to_uint8(decode_image(p)) for p in paths])
        t_png = time.perf_counter() - t0

        cache = ImageCache.create(tmp / "c.zarr", ids=[p.stem for p in paths], resolution=args.res,
                                  provenance={"resolution": args.res, "preprocess": preset.params()}, unit_rows=256)
        for u in range(cache.n_units):
            sl = cache.unit_slice(u)
            cache.write_unit(u, {"images": u8[sl]})
        reader = ImageCache.open(tmp / "c.zarr")
        reader.read(slice(0, 1))  # open the array once, as a long-lived reader would
        t0 = time.perf_counter()
        back = [reader.read(slice(a, min(args.n, a + args.batch))) for a in range(0, args.n, args.batch)]
        t_cache = time.perf_counter() - t0
        ok = bool(np.array_equal(np.concatenate(back), u8))
        cache_mb = sum(f.stat().st_size for f in (tmp / "c.zarr").rglob("*") if f.is_file()) / 2**20

    result = {
        "bench": "cache",
        "n_images": args.n,
        "png_side": args.src,
        "resolution": args.res,
        "png_decode_resize_ms_per_img": 1e3 * t_png / args.n,
        "cache_read_ms_per_img": 1e3 * t_cache / args.n,
        "speedup": t_png / t_cache if t_cache > 0 else float("inf"),
        "target_speedup": 20.0,
        "roundtrip_identical": ok,
        "png_mb": round(png_mb, 2),
        "cache_mb": round(cache_mb, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
