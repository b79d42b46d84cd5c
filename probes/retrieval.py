"""Retrieval checks of an embedding space, on arrays: label agreement of neighbours and a near-duplicate audit.

Conventions: ``Q`` queries, ``G`` gallery rows, ``K`` labels, ``k`` neighbours. Labels are float with NaN =
unknown. A query counts for label ``j`` only when its own label is known and positive; a neighbour whose label is
unknown or that is missing (index -1) counts as a non-match, so precision is never inflated by unknowns.

The neighbour lists come from anywhere (a faiss index, :func:`exact_neighbors`); this module imports no store.
:func:`exact_neighbors` is the package's one exact search (the k-NN head uses it too).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from probes.errors import ProbeError


def unit_rows(x) -> np.ndarray:
    """(B, D) float32 rows of unit L2 norm, a fresh array (the input, float16 or a zarr array, is left alone).

    A zero row stays zero.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


#: Bytes of the (queries x gallery) similarity block :func:`exact_neighbors` holds at once.
_BLOCK_BYTES = 256 << 20


def exact_neighbors(queries, gallery, k: int, *, metric: str = "cosine",
                    query_groups: np.ndarray | None = None, gallery_groups: np.ndarray | None = None,
                    block: int | None = None, normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` gallery rows per query, optionally never pairing rows of the same group (patient).

    The one exact nearest-neighbour search of ``probes``: the k-NN head (:class:`probes.knn.KNNProbe`) and the
    reference of retrieval checks both call it. Queries are converted (float32, unit norm for cosine) one block at
    a time, so only the gallery and one (block, G) similarity matrix are held.

    Parameters
    ----------
    queries : array-like (Q, D)
    gallery : array-like (G, D)
    k : int
    metric : {"cosine", "l2"}
    query_groups, gallery_groups : ndarray (Q,), (G,), optional
        Group labels (patient ids); a gallery row with the query's group is excluded. Give both or neither.
    block : int, optional
        Queries per block (default: as many as keep the similarity block within 256 MiB).
    normalized : bool
        Cosine only: ``gallery`` is already float32 with unit rows (:func:`unit_rows`) and is used without a copy.

    Returns
    -------
    scores : ndarray (Q, k) float32
        Cosine similarity (descending) or squared L2 distance (ascending); NaN where fewer than ``k`` remain.
    neighbors : ndarray (Q, k) int64
        Gallery positions; -1 where fewer than ``k`` remain.

    Examples
    --------
    >>> g = np.eye(3, dtype=np.float32)
    >>> exact_neighbors(g[:1], g, 2)[1].tolist()
    [[0, 1]]
    """
    if metric not in ("cosine", "l2"):
        raise ProbeError(f"The 'metric' parameter of exact_neighbors must be 'cosine' or 'l2'. Got {metric!r}.")
    if (query_groups is None) != (gallery_groups is None):
        raise ProbeError("exact_neighbors needs both query_groups and gallery_groups, or neither.")
    if k < 1:
        raise ProbeError(f"The 'k' parameter of exact_neighbors must be an int >= 1. Got {k!r}.")
    if metric == "cosine":
        g = gallery if normalized else unit_rows(gallery)
    else:
        g = np.asarray(gallery, dtype=np.float32)
    n_q = len(queries)
    if block is None:
        block = max(1, _BLOCK_BYTES // (4 * max(1, g.shape[0])))
    kk = min(k, g.shape[0])
    g_sq = (g * g).sum(1) if metric == "l2" else None
    out_s = np.full((n_q, k), np.nan, np.float32)
    out_i = np.full((n_q, k), -1, np.int64)
    for s in range(0, n_q, block):
        q = unit_rows(queries[s:s + block]) if metric == "cosine" else np.asarray(queries[s:s + block], np.float32)
        sim = q @ g.T  # "higher is better" in both metrics
        if metric == "l2":
            sim = 2 * sim - g_sq[None, :] - (q * q).sum(1)[:, None]
        if query_groups is not None:
            sim[np.asarray(query_groups)[s:s + block, None] == np.asarray(gallery_groups)[None, :]] = -np.inf
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk] if kk < g.shape[0] else np.tile(np.arange(kk), (len(q), 1))
        top_s = np.take_along_axis(sim, top, 1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
        ok = np.isfinite(top_s)
        out_i[s:s + block, :kk] = np.where(ok, top, -1)
        out_s[s:s + block, :kk] = np.where(ok, top_s if metric == "cosine" else -top_s, np.nan)
    return out_s, out_i


def label_agreement(query_labels: np.ndarray, gallery_labels: np.ndarray, neighbors: np.ndarray, *,
                    label_names: Sequence[str] | None = None) -> dict:
    """Per-label precision@k and mAP@k of retrieved neighbours.

    For label ``j`` and each query whose label ``j`` is positive: precision@k = hits / k, and
    AP@k = sum_i P@i * rel_i / min(k, R_j) with R_j the number of gallery positives of label ``j``.

    Parameters
    ----------
    query_labels : ndarray (Q, K) float, NaN = unknown
    gallery_labels : ndarray (G, K) float, NaN = unknown
    neighbors : ndarray (Q, k) int
        Gallery positions, best first; -1 = no neighbour (a non-match).
    label_names : sequence of K str, optional

    Returns
    -------
    dict
        ``k``, ``n_queries``, ``labels``: {name: {n_queries, precision_at_k, map_at_k, gallery_prevalence}},
        and their macro means over labels with at least one positive query (``macro_precision_at_k``,
        ``macro_map_at_k``, ``macro_gallery_prevalence`` — the precision random retrieval would get).
    """
    yq = np.asarray(query_labels, dtype=np.float32)
    yg = np.asarray(gallery_labels, dtype=np.float32)
    nb = np.asarray(neighbors, dtype=np.int64)
    if yq.ndim != 2 or yg.ndim != 2 or yq.shape[1] != yg.shape[1]:
        raise ProbeError(f"label_agreement needs (Q, K) and (G, K) labels; got {yq.shape} and {yg.shape}.")
    if nb.shape[0] != yq.shape[0]:
        raise ProbeError(f"label_agreement got {nb.shape[0]} neighbour lists for {yq.shape[0]} queries.")
    n_labels, k = yq.shape[1], nb.shape[1]
    names = list(label_names) if label_names is not None else [f"label_{j}" for j in range(n_labels)]
    if len(names) != n_labels:
        raise ProbeError(f"label_agreement got {len(names)} label names for {n_labels} labels.")
    # rel[q, i, j]: neighbour i of query q is a known positive of label j
    padded = np.vstack([yg, np.full((1, n_labels), np.nan, np.float32)])
    rel = padded[np.where(nb >= 0, nb, len(yg))] == 1.0
    prec_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)[None, :, None]
    per_label = {}
    for j, name in enumerate(names):
        qpos = yq[:, j] == 1.0
        n_rel = int((yg[:, j] == 1.0).sum())
        known = np.isfinite(yg[:, j])
        prev = float((yg[known, j] == 1.0).mean()) if known.any() else float("nan")
        if not qpos.any() or n_rel == 0:
            per_label[name] = {"n_queries": int(qpos.sum()), "precision_at_k": float("nan"),
                               "map_at_k": float("nan"), "gallery_prevalence": prev}
            continue
        r = rel[qpos, :, j]
        ap = (prec_at_i[qpos, :, j] * r).sum(1) / min(k, n_rel)
        per_label[name] = {"n_queries": int(qpos.sum()), "precision_at_k": float(r.mean()),
                           "map_at_k": float(ap.mean()), "gallery_prevalence": prev}
    scored = [v for v in per_label.values() if np.isfinite(v["precision_at_k"])]

    def macro(key: str) -> float:
        return float(np.mean([v[key] for v in scored])) if scored else float("nan")

    return {"k": k, "n_queries": int(yq.shape[0]), "labels": per_label,
            "macro_precision_at_k": macro("precision_at_k"), "macro_map_at_k": macro("map_at_k"),
            "macro_gallery_prevalence": macro("gallery_prevalence")}


def cross_split_duplicates(query_rows: np.ndarray, neighbors: np.ndarray, scores: np.ndarray,
                           split: np.ndarray, *, threshold: float = 0.98) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows in different splits whose cosine similarity is at least ``threshold`` (a leakage audit).

    Parameters
    ----------
    query_rows : ndarray (Q,) int
        The row each neighbour list belongs to.
    neighbors : ndarray (Q, k) int
        Neighbour rows (same numbering as ``split``); -1 = none.
    scores : ndarray (Q, k) float
        Cosine similarities of those neighbours.
    split : ndarray (N,) str
        Split of every row.
    threshold : float

    Returns
    -------
    pairs : ndarray (P, 2) int64
        Row pairs ``(a, b)`` with ``a < b``, each once, most similar first.
    similarity : ndarray (P,) float32
    """
    qr = np.asarray(query_rows, dtype=np.int64)
    nb = np.asarray(neighbors, dtype=np.int64)
    sc = np.asarray(scores, dtype=np.float32)
    split = np.asarray(split).astype(str)
    a = np.broadcast_to(qr[:, None], nb.shape)
    hit = (nb >= 0) & (nb != a) & np.nan_to_num(sc >= threshold)
    a, b, s = a[hit], nb[hit], sc[hit]
    cross = split[a] != split[b]
    lo, hi, s = np.minimum(a, b)[cross], np.maximum(a, b)[cross], s[cross]
    if len(lo) == 0:
        return np.empty((0, 2), np.int64), np.empty(0, np.float32)
    pairs = np.stack([lo, hi], 1)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -s))
    pairs, s = pairs[order], s[order]
    _, first = np.unique(pairs, axis=0, return_index=True)
    first = np.sort(first)
    return pairs[first], s[first]
