"""Linear grid (>= 40 lr x wd heads in one pass) vs scikit-learn lbfgs one-vs-rest over a C sweep.

100k x 768 synthetic features (low-rank + noise), 14 labels with prevalence 5-44%; 80k train / 10k val / 10k test.
sklearn is timed on a few C values in the same run and its sweep time scaled to the grid's number of
configurations (fitting 40 C values would take most of an hour on 2 cores). Prints one JSON line.

``--dtype float16`` feeds the linear grid the float16 matrix a float16 store loads as (sklearn, the reference,
always gets float32); the grid standardises per batch, so its memory stays O(batch x D) either way.

    python benchmarks/bench_probe.py [--n 100000] [--dim 768] [--sk-cs 1e-4,1e-2,1] [--device cpu] [--dtype float32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--labels", type=int, default=14)
    ap.add_argument("--sk-cs", default="1e-4,1e-2,1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                    help="dtype of the features given to the linear grid")
    args = ap.parse_args()

    import numpy as np
    import torch

    from probes.linear import LinearGridProbe
    from probes.logistic import LogisticSweepProbe
    from probes.metrics import auroc, mean_over_labels
    from probes.synthetic import make_multilabel_features

    x, y = make_multilabel_features(args.n, args.dim, args.labels, rank=64, seed=args.seed)
    n_tr, n_va = int(0.8 * args.n), int(0.1 * args.n)
    tr, va, te = slice(0, n_tr), slice(n_tr, n_tr + n_va), slice(n_tr + n_va, None)

    def test_auroc(p) -> float:
        return float(mean_over_labels(auroc(y[te], p.predict_proba(x[te]))))

    t0 = time.perf_counter()
    xg = x if args.dtype == "float32" else x.astype(np.float16)
    grid = LinearGridProbe(seed=args.seed, device=args.device).fit(xg[tr], y[tr], xg[va], y[va])
    grid_s = time.perf_counter() - t0
    grid_auc = float(mean_over_labels(auroc(y[te], grid.predict_proba(xg[te]))))

    cs = [float(c) for c in args.sk_cs.split(",")]
    sk_times, sk_aucs = [], []
    for c in cs:
        t0 = time.perf_counter()
        p = LogisticSweepProbe(Cs=(c,), max_iter=1000).fit(x[tr], y[tr], x[va], y[va])
        sk_times.append(time.perf_counter() - t0)
        sk_aucs.append(test_auroc(p))
    per_fit = float(np.mean(sk_times))
    n_cfg = grid.n_heads
    sweep_s = per_fit * n_cfg
    result = {
        "bench": "probe_linear_grid_vs_sklearn",
        "n": args.n, "dim": args.dim, "grid_dtype": args.dtype, "labels": args.labels, "n_train": n_tr, "n_val": n_va,
        "grid_heads": n_cfg, "grid_epochs": grid.best_params_["epochs_run"],
        "grid_batch_size": grid.best_params_["batch_size"], "grid_s": round(grid_s, 2),
        "grid_best": {k: grid.best_params_[k] for k in ("lr", "weight_decay", "epoch")},
        "grid_test_mean_auroc": round(grid_auc, 5),
        "sklearn_cs_timed": cs, "sklearn_fit_s": [round(t, 2) for t in sk_times],
        "sklearn_test_mean_auroc": [round(a, 5) for a in sk_aucs],
        "sklearn_best_test_mean_auroc": round(max(sk_aucs), 5),
        "sklearn_sweep_s_scaled": round(sweep_s, 1),
        "time_ratio_grid_vs_sweep": round(grid_s / sweep_s, 4), "target_time_ratio": 0.05,
        "time_ratio_grid_vs_one_fit": round(grid_s / per_fit, 3),
        "auroc_gap_grid_minus_best_sklearn": round(grid_auc - max(sk_aucs), 5), "target_auroc_gap": -0.005,
        "torch_threads": torch.get_num_threads(), "device": args.device, "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
