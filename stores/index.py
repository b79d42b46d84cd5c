"""Faiss indexes over a store's vectors: pure choice rules, a recall-tuned build, and an on-disk manifest.

The decision functions (:func:`choose_index`, :func:`ivf_nlist`, :func:`hnsw_m`, :func:`pq_m`, :func:`parse_size`)
take plain numbers and return factory strings, in the manner of autofaiss' ``get_optimal_index_keys_v2``; the
faiss objects are built only in :func:`build_index`. Conventions: ``N`` rows indexed, ``D`` dims, ``Q`` queries.

On disk an index lives *beside* its store, never inside it (zarr warns about every foreign folder it lists)::

    runs/nih.zarr                  the store
    runs/nih.zarr.index/cls/       one folder per features view
        cls.faiss                  faiss.write_index output; ids are store row numbers
        index.json                 factory, metric, ntotal, search params, recall, store fingerprint, ...

Both files are written in a sibling temporary folder renamed into place (:func:`save_index`), so a half-written index
is never read, and only an index folder is ever replaced.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stores.errors import StaleIndexError, StoreError
from stores.index_plan import (  # noqa: F401 - re-exported: the decision rules are part of this API
    Kind,
    Metric,
    KINDS,
    METRICS,
    RECALL_TARGET,
    FLAT_MAX_N,
    MIN_SPEEDUP,
    INDEX_KINDS,
    IndexPlan,
    parse_size,
    ivf_nlist,
    hnsw_m,
    pq_m,
    choose_index,
    _ID_BYTES,
)

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
# faiss' blocked BLAS path pays off only for large query batches (faiss-cpu 1.15.1, measured): 1 query ~80 ms,
# 256 ~14 ms/query, 1024+ ~5 ms/query on a 200k x 768 flat index.
QUERY_BATCH = 2048


def _prepare(block: np.ndarray, metric: str) -> np.ndarray:
    """A float32 C-contiguous copy, L2-normalised for cosine (zero rows stay zero)."""
    out = np.array(block, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
    return out


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int, *, metric: Metric = "cosine",
              block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k``, block by block (the reference the approximate indexes are measured against).

    Parameters
    ----------
    queries : ndarray (Q, D)
    vectors : ndarray (N, D)
        Read in blocks of ``block`` rows, so a zarr array or memmap works without loading it whole.
    k : int
    metric : {"cosine", "l2"}

    Returns
    -------
    scores : ndarray (Q, k) float32
        Cosine similarity (descending) or squared L2 distance (ascending).
    rows : ndarray (Q, k) int64
        Positions in ``vectors``; -1 where fewer than ``k`` exist.
    """
    import faiss

    q = _prepare(queries, metric)
    n = vectors.shape[0]
    best_s = np.full((q.shape[0], 0), 0, np.float32)
    best_i = np.full((q.shape[0], 0), 0, np.int64)
    sign = 1.0 if metric == "cosine" else -1.0  # merge in "higher is better"
    for start in range(0, n, block):
        b = _prepare(vectors[start:start + block], metric)
        # faiss' blocked BLAS scan + heap: the same kernel as IndexFlat, without holding a copy of all vectors
        s, i = faiss.knn(q, b, min(k, b.shape[0]), metric=_faiss_metric(metric))
        best_s = np.concatenate([best_s, sign * s], 1)
        best_i = np.concatenate([best_i, np.where(i >= 0, i + start, -1)], 1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(best_s, keep, 1)
            best_i = np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    scores, rows = np.take_along_axis(best_s, order, 1) * sign, np.take_along_axis(best_i, order, 1)
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.nan)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32), rows.astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found_q ∩ truth_q| / k`` for row arrays (Q, k); -1 entries never match."""
    hits = [len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth)]
    return float(np.mean(hits) / truth.shape[1]) if len(hits) else float("nan")


def filled_digest(filled: np.ndarray) -> str:
    """sha256 of a store's filled-row mask (N,) bool: the store fingerprint covers provenance and ids, not rows."""
    import hashlib

    mask = np.asarray(filled, dtype=bool)
    return hashlib.sha256(np.packbits(mask).tobytes() + str(mask.size).encode()).hexdigest()


def _take(vectors, positions: np.ndarray) -> np.ndarray:
    """Rows at sorted ``positions`` of a numpy array, memmap or zarr array (orthogonal selection)."""
    if hasattr(vectors, "get_orthogonal_selection"):
        return vectors.get_orthogonal_selection((positions, slice(None)))
    return np.asarray(vectors)[positions] if not isinstance(vectors, np.ndarray) else vectors[positions]


def _drop_self(found: np.ndarray, self_rows: np.ndarray, k: int) -> np.ndarray:
    """(Q, k+1) rows -> (Q, k): remove each query's own row (or the last hit when it is absent)."""
    out = np.empty((found.shape[0], k), np.int64)
    for i, (f, s) in enumerate(zip(found, self_rows)):
        hit = np.flatnonzero(f == s)
        out[i] = np.delete(f, hit[0] if len(hit) else k)[:k]
    return out


def _faiss_metric(metric: str):
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def _set_params(index, params: dict) -> None:
    import faiss

    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name == "k_factor":  # ParameterSpace does not reach a refine stage inside an id map
            inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
            inner.k_factor = float(value)
        else:
            space.set_index_parameter(index, name, float(value))


def _batched_search(index, q: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    scores = np.empty((q.shape[0], k), np.float32)
    rows = np.empty((q.shape[0], k), np.int64)
    batch = max(1, min(QUERY_BATCH, 2**24 // max(k, 1)))  # bound the (batch, k) result buffers
    for s in range(0, q.shape[0], batch):
        scores[s:s + batch], rows[s:s + batch] = index.search(q[s:s + batch], k, params=params)
    return scores, rows


def _add_all(inner, vectors, rows: np.ndarray, metric: str, add_block: int):
    """Wrap ``inner`` in an id map (ids = store rows) and add every vector, ``add_block`` rows at a time."""
    import faiss

    index = faiss.IndexIDMap(inner)
    for s in range(0, vectors.shape[0], add_block):
        index.add_with_ids(_prepare(vectors[s:s + add_block], metric), rows[s:s + add_block])
    return index


def build_index(vectors, *, kind: Kind = "auto", metric: Metric = "cosine", memory_budget_bytes: int = 4 * 10**9,
                rows: np.ndarray | None = None, seed: int = 0, recall_target: float = RECALL_TARGET,
                n_eval: int = 500, k_eval: int = 10, store_fingerprint: str | None = None,
                store_filled: str | None = None, features: str | None = None,
                add_block: int = 65536) -> tuple[Any, dict]:
    """Build (and for approximate kinds, tune) a faiss index over ``vectors``.

    Parameters
    ----------
    vectors : array-like (N, D)
        float16/float32 rows (numpy, memmap or zarr: read in blocks of ``add_block``).
    kind : {"auto", "flat", "hnsw", "ivf", "ivfpq"}
        See :func:`choose_index`. With ``auto``, a tuned approximate index that is not ``MIN_SPEEDUP`` times
        faster than exact search on the held-out queries (or misses the recall target) is replaced by Flat when
        Flat fits the budget; ``info["reason"]`` says so.
    metric : {"cosine", "l2"}
        Cosine = L2-normalise, then inner product; scores are cosine similarities. ``l2``: squared distances.
    memory_budget_bytes : int
    rows : ndarray (N,) int, optional
        The id returned for each vector (store row numbers); default ``arange(N)``.
    seed : int
        Seeds the training sample, the held-out query sample and k-means.
    recall_target : float
        nprobe / efSearch are raised until recall@``k_eval`` on ``n_eval`` held-out rows reaches it.
        Each held-out row queries the index for ``k_eval + 1`` neighbours and its own row is dropped, as in
        ``embedkit search --id``; exact neighbours come from :func:`exact_knn`.
    store_fingerprint, store_filled : str, optional
        The store's fingerprint (provenance + ids) and :func:`filled_digest` of its filled rows, recorded so that
        :func:`open_index` can refuse the index once either changes.

    Returns
    -------
    index : faiss.IndexIDMap
    info : dict
        factory, kind, metric, ntotal, d, search_params, recall_at_k, recall_target_met, tuning, build_seconds,
        bytes_estimate, store_fingerprint, features, faiss_version, reason.

    Raises
    ------
    StoreError
        Bad kind/metric/shape, or nothing fits the memory budget.
    """
    import faiss

    t0 = time.perf_counter()
    if metric not in METRICS:
        raise StoreError(f"The 'metric' parameter of build_index must be one of {METRICS}. Got {metric!r}.")
    if len(vectors.shape) != 2:
        raise StoreError(f"build_index needs a 2-d (N, D) array of vectors; got shape {tuple(vectors.shape)}.")
    n, d = (int(x) for x in vectors.shape)
    plan = choose_index(n, d, memory_budget_bytes=memory_budget_bytes, kind=kind)
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.shape != (n,):
        raise StoreError(f"build_index got {len(rows)} row ids for {n} vectors; pass one id per vector.")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_q = min(n_eval, max(0, n - k_eval - 1), max(n // 5, 1))
    eval_pos = np.sort(perm[:n_q])
    train_pos = np.sort(perm[n_q:n_q + plan.train_size] if n - n_q >= plan.train_size else perm[:plan.train_size])

    inner = faiss.index_factory(d, plan.factory, _faiss_metric(metric))
    ivf = faiss.try_extract_index_ivf(inner) if plan.train_size else None
    ivf = faiss.downcast_index(ivf) if ivf is not None else None
    if ivf is not None:
        ivf.cp.niter = 10  # 10 k-means rounds: recall is then set by nprobe tuning; 25 (default) costs 2.5x build
        ivf.cp.seed = seed
        if hasattr(ivf, "do_polysemous_training"):
            # index_factory turns on polysemous training (annealing a code order for Hamming filtering we never
            # use): 40 s of a 6k x 32 PQ8x8 build here, against 1 s for the quantizer itself.
            ivf.do_polysemous_training = False
            ivf.pq.cp.niter = 10
    if plan.train_size:
        inner.train(_prepare(_take(vectors, train_pos), metric))
    index = _add_all(inner, vectors, rows, metric, add_block)
    t_built = time.perf_counter()

    params, tuning, recall, exact_ms = dict(plan.fixed_params), [], 1.0, float("nan")
    if params:
        _set_params(index, params)
    if plan.tune is not None and n_q > 0:
        q = _prepare(_take(vectors, eval_pos), metric)
        ts = time.perf_counter()
        _, truth_pos = exact_knn(q, vectors, k_eval + 1, metric=metric)
        exact_ms = (time.perf_counter() - ts) * 1e3 / n_q
        truth = _drop_self(np.where(truth_pos >= 0, rows[np.maximum(truth_pos, 0)], -1), rows[eval_pos], k_eval)
        for value in plan.tune_values:
            _set_params(index, {plan.tune: value})
            ts = time.perf_counter()
            _, found = _batched_search(index, q, k_eval + 1)
            ms = (time.perf_counter() - ts) * 1e3 / n_q
            recall = recall_at_k(_drop_self(found, rows[eval_pos], k_eval), truth)
            tuning.append({plan.tune: value, "recall": round(recall, 4), "ms_per_query": round(ms, 4)})
            params[plan.tune] = value
            if recall >= recall_target:
                break
    factory, plan_kind, reason = plan.factory, plan.kind, plan.reason
    if kind == "auto" and tuning and n * (4 * d + _ID_BYTES) <= memory_budget_bytes and \
            (tuning[-1]["ms_per_query"] * MIN_SPEEDUP > exact_ms or recall < recall_target):
        # Data without cluster structure gives IVF unbalanced lists (imbalance 10 seen on one isotropic blob):
        # its non-BLAS scans then lose to one blocked BLAS pass, so an exact index is both faster and exact.
        reason = (f"{plan.factory} at {plan.tune}={params[plan.tune]} took {tuning[-1]['ms_per_query']:.3g} ms/query "
                  f"(recall {recall:.3f}) vs {exact_ms:.3g} ms exact: less than {MIN_SPEEDUP}x faster, so exact Flat")
        logger.info("auto index: %s", reason)
        index = _add_all(faiss.index_factory(d, "Flat", _faiss_metric(metric)), vectors, rows, metric, add_block)
        factory, plan_kind, params, recall = "Flat", "flat", {}, 1.0
    met = bool(recall >= recall_target)
    if not met:
        logger.warning("index %s reached recall@%d %.3f < target %.2f", plan.factory, k_eval, recall, recall_target)
    info = {
        "format_version": INDEX_FORMAT_VERSION, "factory": factory, "kind": plan_kind, "requested_kind": kind,
        "metric": metric, "ntotal": int(index.ntotal), "d": d, "search_params": params, "recall_k": k_eval,
        "recall_at_k": round(float(recall), 4), "recall_exact": factory == "Flat", "recall_target": recall_target,
        "recall_target_met": met, "eval_queries": int(n_q if plan.tune else 0), "tuning": tuning,
        "exact_ms_per_query": round(exact_ms, 4) if tuning else None,
        "build_seconds": round(t_built - t0, 3), "tune_seconds": round(time.perf_counter() - t_built, 3),
        "bytes_estimate": int(plan.bytes_estimate), "memory_budget_bytes": int(memory_budget_bytes),
        "reason": reason, "store_fingerprint": store_fingerprint, "store_filled": store_filled,
        "features": features,
        "faiss_version": faiss.__version__, "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return index, info


class SearchIndex:
    """A loaded faiss index whose ids are store rows, plus its ``index.json`` manifest.

    Parameters
    ----------
    index : faiss.Index
        As returned by :func:`build_index`.
    info : dict
        Its manifest (metric, search_params, ...).
    """

    def __init__(self, index, info: dict, *, path: Path | None = None) -> None:
        self.index, self.info, self.path = index, info, path
        if info.get("search_params"):
            _set_params(index, info["search_params"])

    @property
    def metric(self) -> str:
        return self.info["metric"]

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, vectors, k: int = 10, *, mask: np.ndarray | None = None,
               exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` store rows for each query.

        Parameters
        ----------
        vectors : ndarray (Q, D) or (D,)
            Raw query vectors (normalised here for cosine).
        k : int
        mask : ndarray (N_store,) bool, optional
            Only rows where ``mask`` is True may be returned (a faiss ID selector: exact under the filter).
        exclude : sequence of Q int arrays, optional
            Rows never returned for that query (itself, its patient's other images).

        Returns
        -------
        scores : ndarray (Q, k) float32
            Cosine similarity (descending) or squared L2 distance (ascending); NaN where fewer than k exist.
        rows : ndarray (Q, k) int64
            Store rows; -1 where fewer than ``k`` rows pass the filters.
        """
        import faiss

        q = _prepare(np.atleast_2d(np.asarray(vectors)), self.metric)
        if q.shape[1] != self.d:
            raise StoreError(f"Query vectors have {q.shape[1]} dims; this index holds {self.d}-dim vectors.")
        if k < 1:
            raise StoreError(f"The 'k' parameter of search must be an int >= 1. Got {k!r}.")
        if exclude is not None and len(exclude) != q.shape[0]:
            raise StoreError(f"search got {len(exclude)} exclude lists for {q.shape[0]} queries.")
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        refine = "k_factor" in self.info.get("search_params", {})
        params, sel, kk = None, None, min(k + extra, self.ntotal)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if refine:  # the refine stage does not pass a selector down: over-fetch instead
                kk = min(self.ntotal, int(math.ceil((k + extra) * 2 * len(mask) / max(mask.sum(), 1))))
            else:
                bitmap = np.packbits(mask, bitorder="little")
                sel = faiss.IDSelectorBitmap(bitmap)
                params = self._params(sel)
        scores, rows = _batched_search(self.index, q, max(kk, 1), params)
        valid = rows >= 0
        if mask is not None:
            valid &= mask[np.clip(rows, 0, len(mask) - 1)] & (rows < len(mask))
        if exclude is not None:
            for i, e in enumerate(exclude):
                valid[i] &= ~np.isin(rows[i], np.asarray(e, dtype=np.int64))
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        keep = np.take_along_axis(valid, order, 1)
        out_s = np.where(keep, np.take_along_axis(scores, order, 1), np.nan).astype(np.float32)
        out_r = np.where(keep, np.take_along_axis(rows, order, 1), -1)
        if out_r.shape[1] < k:
            pad = ((0, 0), (0, k - out_r.shape[1]))
            out_s, out_r = np.pad(out_s, pad, constant_values=np.nan), np.pad(out_r, pad, constant_values=-1)
        return out_s, out_r

    def _params(self, sel):
        import faiss

        p, tune = self.info.get("search_params", {}), INDEX_KINDS[self.info["kind"]].tune
        if tune == "efSearch":
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(p.get("efSearch", 16)))
        if tune == "nprobe":
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(p.get("nprobe", 1)))
        return faiss.SearchParameters(sel=sel)


def index_dir(store_path: str | os.PathLike, features: str) -> Path:
    """Where the index of ``features`` for a store lives: ``<store>.index/<features>/`` beside the store."""
    store = Path(store_path)
    return store.with_name(store.name + ".index") / features


def rebuild_command(store_path, info: dict) -> str:
    """The command line that rebuilds an index like ``info``."""
    return (f"embedkit index {store_path} --features {info.get('features') or 'cls'} "
            f"--kind {info.get('requested_kind', info.get('kind'))} --metric {info['metric']}")


def save_index(directory: str | os.PathLike, index, info: dict) -> Path:
    """Write ``<features>.faiss`` and ``index.json`` into ``directory``, replacing an earlier index atomically.

    Both files are written (and fsync'd) in a sibling temporary folder that is then renamed into place, so a kill
    or a full disk at any moment leaves the old index, the new one or none (never a mismatched pair), and running
    the same command again completes. Only an index folder of ours is ever replaced.

    Returns
    -------
    Path
        ``directory``.

    Raises
    ------
    StoreError
        ``directory`` is a file, or a non-empty folder that is not an index; or an OSError (full disk, read-only
        filesystem) while writing.
    """
    import shutil

    import faiss

    from stores._provenance import strict
    from stores._safe import check_not_special, fsync_dir

    directory = Path(directory)
    check_not_special(directory, "faiss index folder")
    _check_index_folder(directory)
    parent, name = directory.parent, f"{info.get('features') or 'vectors'}.faiss"
    tmp, old = parent / f".{directory.name}.tmp-{os.getpid()}", parent / f".{directory.name}.old-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in [*parent.glob(f".{directory.name}.tmp-*"), *parent.glob(f".{directory.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed save: never read, safe to drop
        tmp.mkdir()
        faiss.write_index(index, str(tmp / name))
        doc = dict(info, index_file=name, index_bytes=(tmp / name).stat().st_size)
        text = json.dumps(strict(doc), indent=2, default=_jsonable, allow_nan=False)
        (tmp / "index.json").write_text(text + "\n")
        for f in (tmp / name, tmp / "index.json"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(tmp)
        if directory.exists():
            os.rename(directory, old)  # a kill between the two renames leaves no index: 'No index found; build'
        os.rename(tmp, directory)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"Could not write index '{directory}': {exc.strerror or exc} "
                         "(free space or fix permissions, then re-run the same command).") from None
    return directory


def _check_index_folder(directory: Path) -> None:
    """Refuse to replace anything but an index folder (index files, or empty)."""
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"'{directory}' exists and is a file, not an index folder; move it away.")
    if not directory.is_dir() or (directory / "index.json").is_file():
        return
    foreign = [p.name for p in directory.iterdir() if not p.name.endswith(".faiss")]
    if foreign:
        raise StoreError(f"'{directory}' is a non-empty folder that is not a faiss index (it holds "
                         f"'{foreign[0]}'); refusing to replace it. Move it away and re-run.")


def _jsonable(value):
    return value.item() if hasattr(value, "item") else str(value)


def load_index(directory: str | os.PathLike, *, expected_fingerprint: str | None = None,
               expected_filled: str | None = None, store_path: str | os.PathLike | None = None) -> SearchIndex:
    """Read an index folder written by :func:`save_index`; refuse it when its store fingerprint differs.

    Raises
    ------
    StoreError
        No ``index.json`` there, unknown format version, or the index file is truncated.
    StaleIndexError
        ``expected_fingerprint`` (or ``expected_filled``, a :func:`filled_digest`) is given and differs from the
        one recorded at build time.
    """
    import faiss

    directory = Path(directory)
    manifest = directory / "index.json"
    if not manifest.is_file():
        where = f"store '{store_path}'" if store_path else f"'{directory}'"
        raise StoreError(f"No index found for {where} (looked in '{directory}'); build one with "
                         f"'embedkit index {store_path or 'STORE'} --features {directory.name}'.")
    info = json.loads(manifest.read_text())
    if info.get("format_version") != INDEX_FORMAT_VERSION:
        raise StoreError(f"Index '{directory}' has format_version {info.get('format_version')!r}; this embedkit "
                         f"reads {INDEX_FORMAT_VERSION}. Rebuild it with '{rebuild_command(store_path, info)}'.")
    if expected_fingerprint is not None and info.get("store_fingerprint") != expected_fingerprint:
        raise StaleIndexError(
            f"Index '{directory}' was built from an older state of store '{store_path}' (fingerprint "
            f"{str(info.get('store_fingerprint'))[:12]} != {expected_fingerprint[:12]}); rebuild it with "
            f"'{rebuild_command(store_path or 'STORE', info)}'.")
    if expected_filled is not None and info.get("store_filled") != expected_filled:
        raise StaleIndexError(
            f"Index '{directory}' covers {info.get('ntotal')} rows but the rows filled in store '{store_path}' have "
            f"changed since (extraction resumed?); rebuild it with '{rebuild_command(store_path or 'STORE', info)}'.")
    path = directory / info["index_file"]
    if not path.is_file() or path.stat().st_size != info.get("index_bytes"):
        raise StoreError(f"Index file '{path}' is missing or truncated; rebuild it with "
                         f"'{rebuild_command(store_path or 'STORE', info)}'.")
    return SearchIndex(faiss.read_index(str(path)), info, path=directory)


def open_index(store_path: str | os.PathLike, *, features: str = "cls",
               expected_fingerprint: str | None = None, expected_filled: str | None = None) -> SearchIndex:
    """Open the index of ``features`` beside a store, checking it against the store's current fingerprint.

    Parameters
    ----------
    store_path : path
        The embedding store (``runs/nih.zarr``); the index is read from ``runs/nih.zarr.index/<features>/``.
    features : str
        The view (``"cls"``, ``"cls+mean_patch"``) the index was built on.
    expected_fingerprint, expected_filled : str, optional
        Default (when both are None): the store's current ``EmbeddingStore.fingerprint`` and
        :func:`filled_digest` of its ``filled`` rows, read from the store.

    Raises
    ------
    StaleIndexError
        The store changed since the index was built: other provenance/ids, or other filled rows (the message names
        the rebuild command).

    Examples
    --------
    >>> idx = open_index("runs/nih.zarr", features="cls")          # doctest: +SKIP
    >>> scores, rows = idx.search(queries, k=10)                   # doctest: +SKIP
    """
    if expected_fingerprint is None and expected_filled is None:
        from stores.embedding import EmbeddingStore

        with EmbeddingStore.open(store_path, mode="r") as store:
            expected_fingerprint, expected_filled = store.fingerprint, filled_digest(store.filled)
    return load_index(index_dir(store_path, features), expected_fingerprint=expected_fingerprint,
                      expected_filled=expected_filled, store_path=store_path)
