"""Heads on float16 features: same choices and metrics as float32 (up to rounding), and no float32 copy in memory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from probes.heads import make_probe
from probes.metrics import auroc, mean_over_labels
from probes.runner import _take_rows, run_probe
from probes.synthetic import make_multilabel_features

ROOT = Path(__file__).resolve().parents[2]

FAST = {"linear": {}, "mlp": {"max_epochs": 4, "lrs": (1e-4, 1e-3), "batch_size": 512, "hidden": 128},
        "knn": {"ks": (5, 50, 200)}}


@pytest.fixture(scope="module")
def rows():
    x, y = make_multilabel_features(5000, 64, 5, rank=8, signal=2.0, seed=0, missing=0.05)
    # A shuffled split: the train/val subsets are then copies (in the input dtype), not views.
    split = np.random.default_rng(0).permutation(np.array(["train"] * 3000 + ["val"] * 1000 + ["test"] * 1000))
    ids = np.array([f"r{i:05d}" for i in range(len(x))])
    return x, y, split, ids


@pytest.mark.parametrize("head", ["linear", "mlp", "knn"])
def test_float16_input_selects_the_same_head_and_matches_float32(rows, head):
    x32, y, split, ids = rows
    x16 = x32.astype(np.float16)
    before = x16.copy()
    runs = {}
    for name, x in (("f32", x32), ("f16", x16)):
        res = run_probe(x, y, split=split, ids=ids, head=head, seed=0, head_options=FAST[head])
        t = res.test_rows
        runs[name] = (res.head.best_params_, mean_over_labels(auroc(y[t], res.scores[t])), res.scores)
    (p32, a32, _), (p16, a16, s16) = runs["f32"], runs["f16"]
    keys = {"linear": ("lr", "weight_decay"), "mlp": ("lr", "epoch"), "knn": ("k",)}[head]
    assert {k: p16[k] for k in keys} == {k: p32[k] for k in keys}
    assert a32 > 0.75 and abs(a16 - a32) < 1e-3, (a16, a32)
    assert s16.dtype == np.float32 and s16.shape == y.shape
    np.testing.assert_array_equal(x16, before)  # heads share the caller's buffer (zero-copy) but never write it


def test_linear_grid_never_writes_a_float32_input():
    # torch.from_numpy shares memory: an in-place standardisation of a float32 val block would corrupt the caller's
    # array (and re-standardise it every epoch). Same data in, same data out.
    x, y = make_multilabel_features(1200, 16, 2, rank=4, seed=1)
    keep = x.copy()
    make_probe("linear", lrs=(1e-2,), weight_decays=(0.0,), max_epochs=2).fit(x[:800], y[:800], x[800:], y[800:])
    np.testing.assert_array_equal(x, keep)


def test_contiguous_rows_are_views_and_others_compact_copies():
    x = np.arange(40, dtype=np.float16).reshape(10, 4)
    view = _take_rows(x, np.arange(3, 7))
    assert np.shares_memory(view, x) and view.shape == (4, 4)
    picked = _take_rows(x, np.array([0, 2, 5]))
    assert not np.shares_memory(picked, x) and picked.dtype == np.float16
    np.testing.assert_array_equal(picked, x[[0, 2, 5]])


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    sys.path.insert(0, sys.argv[1])
    from probes.linear import LinearGridProbe

    torch.set_num_threads(2)

    def status_mb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB

    def reset_peak():
        # Writing 5 to clear_refs resets VmHWM (the RSS high-water mark) to the current RSS (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status_mb("VmRSS")

    n, d, k = 50_000, 512, 5
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, d)).astype(np.float32) / 3
    w = rng.standard_normal((8, k)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float16)
    y = np.empty((n, k), dtype=np.float32)
    for i in range(0, n, 2000):  # built in small blocks: no large temporary sets an early RSS peak
        z = rng.standard_normal((min(2000, n - i), 8)).astype(np.float32)
        x[i : i + 2000] = z @ a + rng.standard_normal((len(z), d), dtype=np.float32)
        y[i : i + 2000] = (z @ w + rng.standard_normal((len(z), k)) > 1.0)
    tr, va = slice(0, 45_000), slice(45_000, None)
    # Warm-up on a small slice: torch kernels, thread pools and lazy imports are paid for before measuring.
    LinearGridProbe(max_epochs=1).fit(x[:3000], y[:3000], x[3000:4000], y[3000:4000]).predict_proba(x[:1000])
    base = reset_peak()
    p = LinearGridProbe(max_epochs=2, patience=5).fit(x[tr], y[tr], x[va], y[va])
    probs = p.predict_proba(x)
    fit = status_mb("VmHWM") - base
    # Calibration: the same measurement sees a float32 copy of the matrix.
    base2 = reset_peak()
    copy = x.astype(np.float32)
    copy_mb = status_mb("VmHWM") - base2
    print(json.dumps({"fit_extra_mb": fit, "float32_copy_mb": copy_mb, "x_mb": x.nbytes / 2**20,
                      "probs_ok": bool(np.isfinite(probs).all()), "epochs": p.best_params_["epochs_run"]}))
""")


def test_linear_grid_on_float16_stays_well_below_one_float32_copy():
    """Peak RSS growth (VmHWM; torch allocations included, which tracemalloc cannot see) in a fresh process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to reset the RSS high-water mark")
    r = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(ROOT)], capture_output=True, text=True,
                       timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["probs_ok"] and m["epochs"] == 2
    assert m["float32_copy_mb"] > 80, m  # the measurement is sensitive enough to see what it guards against
    # Half a float32 copy: the O(batch x D) working set (bfloat16 matmuls' packing included) stays well under it,
    # and any copy of the training rows, even in 16 bits (44 MB), on top of that working set would cross it.
    assert m["fit_extra_mb"] < 0.5 * m["float32_copy_mb"], m
