"""Data-layer throughput: phantom generation, decode per format, preset to_uint8; one JSON line."""
import json, tempfile, time
from pathlib import Path

def timed(fn, reps=1):
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    return (time.perf_counter() - t) / reps, out

from embedkit.data.phantoms import make_phantoms
from embedkit.data.decode import decode_image
from embedkit.data.presets import make_preset
import pandas as pd
res = {"bench": "data"}
with tempfile.TemporaryDirectory() as tmp:
    make_phantoms(Path(tmp) / "warm", n=3, size=32)  # imports
    res["phantoms_200x128_s"], _ = timed(lambda: make_phantoms(Path(tmp) / "p", n=200, size=128))
    res["phantoms_30x1024_s"], m = timed(lambda: make_phantoms(Path(tmp) / "big", n=30, size=1024))
    f = pd.read_csv(m)
    for fmt, pred in {"png8": lambda p: p.endswith(".png") and not p.endswith("_16.png"),
                      "png16": lambda p: p.endswith("_16.png"), "dicom": lambda p: p.endswith(".dcm")}.items():
        paths = [m.parent / p for p in f.path if pred(p)]
        dt, _ = timed(lambda: [decode_image(p) for p in paths])
        res[f"decode_{fmt}_1024_ms"] = 1000 * dt / len(paths)
    img = decode_image(m.parent / f.path[0])
    for name in ("paper", "model"):
        for r in (224, 512):
            pre = make_preset(name, resolution=r)
            pre.to_uint8(img)
            dt, _ = timed(lambda: pre.to_uint8(img), reps=5)
            res[f"{name}_to_uint8_1024to{r}_ms"] = 1000 * dt
print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
