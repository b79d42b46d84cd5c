"""Auto faiss index vs exact search on clustered synthetic embeddings: recall@10 and queries/s, same run.

Usage: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_index.py [--n 1000000] [--d 768]``
Prints one JSON line. Target: recall@10 >= 0.95 at >= 20x the exact (IndexFlatIP, batched) queries/s.

Data: a two-level Gaussian mixture, so the coarse quantizer's cells cut through overlapping clusters: ``clusters``
centres drawn around ``--supers`` (default ``clusters // 25``) super-centres (N(0, 1) per dim each, centre = super + 0.7 N(0, 1)),
cluster sizes from a Dirichlet (uneven), each cluster with its own spread (uniform 0.6-1.2 per dim).
Queries are fresh draws from the same mixture (not in the index). All rows L2-normalised; cosine metric.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from stores.index import QUERY_BATCH, SearchIndex, build_index, recall_at_k  # noqa: E402


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_model() -> str:
    if not os.path.exists("/proc/cpuinfo"):
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")


def rss_now_gb() -> float:
    """Current resident set (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except OSError:
        return peak_rss_gb()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def mixture(n: int, d: int, centres: np.ndarray, spread: np.ndarray, weights: np.ndarray,
            rng: np.random.Generator, block: int = 65536) -> np.ndarray:
    """(n, d) float32 draws, L2-normalised, generated block by block to bound temporaries."""
    out = np.empty((n, d), np.float32)
    for s in range(0, n, block):
        m = min(block, n - s)
        c = rng.choice(len(centres), m, p=weights)
        x = rng.standard_normal((m, d), dtype=np.float32)
        x *= spread[c, None]
        x += centres[c]
        faiss.normalize_L2(x)
        out[s:s + m] = x
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--clusters", type=int, default=5000)
    ap.add_argument("--supers", type=int, default=None, help="super-centres (default clusters // 25); 1 = hard")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--kind", default="auto")
    ap.add_argument("--memory-budget", type=float, default=8e9)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    # RSS once the imports are done: the growth past it is what the data and the index cost.
    rss0 = rss_now_gb()
    machine = {"cores": os.cpu_count(), "cpu_model": _cpu_model(), "arch": platform.machine(), "load_avg": _load()}

    rng = np.random.default_rng(a.seed)
    supers = rng.standard_normal((a.supers or max(a.clusters // 25, 1), a.d)).astype(np.float32)
    centres = supers[rng.integers(0, len(supers), a.clusters)]
    centres = centres + 0.7 * rng.standard_normal((a.clusters, a.d)).astype(np.float32)
    spread = rng.uniform(0.6, 1.2, a.clusters).astype(np.float32)
    weights = rng.dirichlet(np.full(a.clusters, 2.0))
    t = time.perf_counter()
    x = mixture(a.n, a.d, centres, spread, weights, rng)
    q = mixture(a.queries, a.d, centres, spread, weights, rng)
    # Warm-up queries, distinct from the timed ones: both sides are warmed the same way (page faults, BLAS pools)
    # and neither is timed on queries it has just answered.
    warm = mixture(min(a.queries, QUERY_BATCH), a.d, centres, spread, weights, rng)
    gen_s = time.perf_counter() - t

    # exact baseline: IndexFlatIP, queries in batches of QUERY_BATCH (faiss' BLAS path)
    flat = faiss.IndexFlatIP(a.d)
    flat.add(x)
    flat.search(warm, 10)
    t = time.perf_counter()
    truth = np.vstack([flat.search(q[s:s + QUERY_BATCH], 10)[1] for s in range(0, len(q), QUERY_BATCH)])
    exact_s = time.perf_counter() - t
    del flat

    t = time.perf_counter()
    index, info = build_index(x, kind=a.kind, metric="cosine", memory_budget_bytes=int(a.memory_budget), seed=a.seed)
    build_total_s = time.perf_counter() - t
    si = SearchIndex(index, info)
    si.search(warm, 10)
    t = time.perf_counter()
    _, found = si.search(q, 10)
    approx_s = time.perf_counter() - t
    recall = recall_at_k(found, truth)
    qps_exact, qps_auto = len(q) / exact_s, len(q) / approx_s
    print(json.dumps({
        "bench": "index", "n": a.n, "d": a.d, "clusters": a.clusters, "supers": len(supers), "queries": len(q), "k": 10,
        "kind": info["kind"], "factory": info["factory"], "search_params": info["search_params"], "reason": info["reason"],
        "recall_at_10": round(recall, 4), "recall_at_10_tuned_heldout": info["recall_at_k"],
        "qps_auto": round(qps_auto, 1), "qps_exact": round(qps_exact, 1), "speedup": round(qps_auto / qps_exact, 1),
        "build_s": round(build_total_s, 1), "tune_s": info["tune_seconds"], "gen_s": round(gen_s, 1),
        "index_bytes_estimate": info["bytes_estimate"],
        "peak_rss_gb": round(peak_rss_gb(), 2), "rss_after_imports_gb": round(rss0, 2),
        "peak_rss_growth_gb": round(peak_rss_gb() - rss0, 2), "data_gb": round(x.nbytes / 1e9, 2),
        "target_met": bool(recall >= 0.95 and qps_auto >= 20 * qps_exact),
        "threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
        "command": shlex.join([sys.executable, *sys.argv]), "machine": {**machine, "load_avg_end": _load()},
    }))


if __name__ == "__main__":
    main()
