"""Synthetic multi-label feature sets with known structure, for tests and benchmarks."""
from __future__ import annotations

import numpy as np


def make_multilabel_features(
    n: int,
    d: int = 768,
    k: int = 14,
    *,
    rank: int = 32,
    noise: float = 1.0,
    signal: float = 1.5,
    prevalence: tuple[float, float] = (0.05, 0.44),
    missing: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank-plus-noise features and labels that depend on the low-rank factors (like frozen embeddings).

    Parameters
    ----------
    n, d, k : int
        Rows, feature dimension, labels.
    rank : int
        Dimension of the latent factors ``Z`` (N, rank); features are ``Z @ A + noise * E``.
    noise : float
        Std of the isotropic feature noise.
    signal : float
        Scale of the label logits (larger = easier).
    prevalence : (low, high)
        Label prevalences are spread evenly over this range.
    missing : float
        Fraction of labels set to NaN (unknown).
    seed : int

    Returns
    -------
    x : ndarray (n, d) float32
    y : ndarray (n, k) float32, 1 / 0 / NaN
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, rank)).astype(np.float32)
    a = (rng.standard_normal((rank, d)) / np.sqrt(rank)).astype(np.float32)
    x = z @ a
    x += noise * rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((rank, k)).astype(np.float32) / np.sqrt(rank)
    logits = signal * (z @ w)
    prev = np.linspace(prevalence[0], prevalence[1], k)
    # Bisect each label's bias so that the expected positive rate matches its target prevalence.
    lo, hi = np.full(k, -30.0), np.full(k, 30.0)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        rate = (1.0 / (1.0 + np.exp(-(logits + mid)))).mean(axis=0)
        lo, hi = np.where(rate < prev, mid, lo), np.where(rate < prev, hi, mid)
    p = 1.0 / (1.0 + np.exp(-(logits + 0.5 * (lo + hi))))
    y = (rng.random((n, k)) < p).astype(np.float32)
    if missing > 0:
        y[rng.random((n, k)) < missing] = np.nan
    return x.astype(np.float32), y
