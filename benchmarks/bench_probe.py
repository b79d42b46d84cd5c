"""The 40-head linear grid vs embedkit's own scikit-learn sweep (``probes.logistic``: lbfgs one-vs-rest, 7 C values).

100k x 768 synthetic features (low-rank + noise), 14 labels with prevalence 5-44%; 80k train / 10k val / 10k test.
Both sides run in full, side by side, in this process: the grid (timed before and after the sweep; the ratio uses
the mean of the two, as the machine's load drifts) and ``LogisticSweepProbe()`` with its default 7 C values, every
C fitted, nothing scaled. Reported: grid time / whole sweep (target <= 0.05), grid time / one sklearn fit (the C
the sweep chose), each side's test mean AUROC (the grid's chosen head; sklearn's chosen C and its best C on test,
an upper bound for any selection rule; target: grid >= best - 0.005). Imports and a tiny warm-up fit of each side
happen before any timing. Prints one JSON line with the command, the machine and its load average.

``--dtype float16`` feeds the linear grid the float16 matrix a float16 store loads as (sklearn, the reference,
always gets float32). ``--threads N`` pins torch and the BLAS pools of both sides to N threads (default: as found).

    python benchmarks/bench_probe.py [--n 100000] [--dim 768] [--device cpu] [--dtype float32] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> dict:
    """Cores, CPU model, architecture and the 1/5/15-minute load averages now."""
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cores": os.cpu_count(), "cpu_model": model, "arch": platform.machine(),
            "load_avg": [round(v, 2) for v in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--labels", type=int, default=14)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                    help="dtype of the features given to the linear grid")
    ap.add_argument("--threads", type=int, default=None, help="torch and BLAS threads for both sides")
    args = ap.parse_args()
    start = machine()

    import numpy as np
    import sklearn.linear_model  # noqa: F401 - imported before timing, like torch
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from probes.linear import LinearGridProbe
    from probes.logistic import LogisticSweepProbe
    from probes.metrics import auroc, mean_over_labels
    from probes.synthetic import make_multilabel_features

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)

    class RecordingSweep(LogisticSweepProbe):
        """The library's sweep, unchanged, keeping every C's fit so its test AUROC can be read afterwards."""

        def _fit_c(self, xs, y, c, pw):
            out = super()._fit_c(xs, y, c, pw)
            self.fits_ = [*getattr(self, "fits_", []), out]
            return out

    x, y = make_multilabel_features(args.n, args.dim, args.labels, rank=64, seed=args.seed)
    n_tr, n_va = int(0.8 * args.n), int(0.1 * args.n)
    tr, va, te = slice(0, n_tr), slice(n_tr, n_tr + n_va), slice(n_tr + n_va, None)
    xg = x if args.dtype == "float32" else x.astype(np.float16)

    def test_auroc(probs) -> float:
        return float(mean_over_labels(auroc(y[te], probs)))

    # Warm-up (thread pools, kernel JIT, lazy imports), then the timed runs.
    LinearGridProbe(max_epochs=1, device=args.device).fit(xg[:2000], y[:2000], xg[2000:3000], y[2000:3000])
    LogisticSweepProbe(Cs=(1.0,)).fit(x[:2000], y[:2000], x[2000:3000], y[2000:3000])

    def run_grid():
        t0 = time.perf_counter()
        g = LinearGridProbe(seed=args.seed, device=args.device).fit(xg[tr], y[tr], xg[va], y[va])
        return g, time.perf_counter() - t0

    grid, grid_s1 = run_grid()
    t0 = time.perf_counter()
    sweep = RecordingSweep(seed=args.seed).fit(x[tr], y[tr], x[va], y[va])
    sweep_s = time.perf_counter() - t0
    _, grid_s2 = run_grid()
    grid_s = (grid_s1 + grid_s2) / 2

    grid_auc = test_auroc(grid.predict_proba(xg[te]))
    xs_te = (x[te] - sweep.mean_) / sweep.scale_
    sk_aucs = [test_auroc(1 / (1 + np.exp(-(xs_te @ coef + icpt)))) for coef, icpt in sweep.fits_]
    chosen = sweep.Cs.index(sweep.best_params_["C"])
    one_fit_s = sweep.results_[chosen]["seconds"]
    best_sk = max(sk_aucs)
    result = {
        "bench": "probe_linear_grid_vs_sklearn_sweep", "command": shlex.join([sys.executable, *sys.argv]),
        "n": args.n, "dim": args.dim, "labels": args.labels, "n_train": n_tr, "n_val": n_va, "grid_dtype": args.dtype,
        "grid_heads": grid.n_heads, "grid_epochs": grid.best_params_["epochs_run"],
        "grid_heads_per_epoch": [h["heads"] for h in grid.history_],
        "grid_batch_size": grid.best_params_["batch_size"], "grid_compute_dtype": grid.best_params_["compute_dtype"],
        "grid_s": [round(grid_s1, 2), round(grid_s2, 2)],
        "grid_best": {k: grid.best_params_[k] for k in ("lr", "weight_decay", "epoch")},
        "grid_test_mean_auroc": round(grid_auc, 5),
        "sklearn_cs": list(sweep.Cs), "sklearn_sweep_s": round(sweep_s, 1),
        "sklearn_fit_s_per_c": [round(r["seconds"], 2) for r in sweep.results_],
        "sklearn_test_mean_auroc_per_c": [round(a, 5) for a in sk_aucs],
        "sklearn_chosen_c": sweep.best_params_["C"], "sklearn_chosen_test_mean_auroc": round(sk_aucs[chosen], 5),
        "sklearn_best_test_mean_auroc": round(best_sk, 5),
        "time_ratio_grid_vs_sweep": round(grid_s / sweep_s, 4), "target_time_ratio": 0.05,
        "time_ratio_grid_vs_one_fit": round(grid_s / one_fit_s, 3),
        "auroc_gap_grid_minus_best_sklearn": round(grid_auc - best_sk, 5), "target_auroc_gap": -0.005,
        "meets_targets": bool(grid_s / sweep_s <= 0.05 and grid_auc >= best_sk - 0.005),
        "device": args.device, "torch_threads": torch.get_num_threads(),
        "blas_threads": sorted({p["num_threads"] for p in threadpool_info()}),
        "machine": {**start, "load_avg_end": [round(v, 2) for v in os.getloadavg()]},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
