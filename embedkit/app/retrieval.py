"""``index``, ``search`` and ``search_eval``: faiss retrieval over a store's vectors.

The index lives beside the store (``STORE.index/<features>/``, see :mod:`stores.index`); image queries are embedded
with the store's own backbone and preprocessing, rebuilt from its provenance. The arithmetic of the evaluation
(label agreement, the cross-split duplicate audit) is :mod:`probes.retrieval`'s; this module decides which rows are
queries, which form the gallery and which neighbours are excluded (the query itself, its patient's other images).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import EmbedkitError, ModelError

logger = logging.getLogger(__name__)

__all__ = ["IndexResult", "SearchResult", "SearchEvalResult", "build_store_index", "search", "search_eval",
           "embed_image_like_store"]


@dataclass(frozen=True)
class IndexResult:
    """What :func:`build_store_index` wrote.

    Attributes
    ----------
    path : Path
        The index folder (``STORE.index/FEATURES``).
    info : dict
        Its ``index.json`` document (factory, ntotal, d, metric, search_params, recall_at_k, recall_target_met,
        build_seconds, ...) plus ``path``.
    """

    path: Path
    info: dict

    def to_dict(self) -> dict:
        """The ``index.json`` document with the folder's path (what ``embedkit index --json`` prints)."""
        return dict(self.info)


@dataclass(frozen=True)
class SearchResult:
    """The neighbours of one query.

    Attributes
    ----------
    store, features, metric, index : str
        The store searched, the indexed view(s), the metric and the index's faiss factory string.
    query : dict
        ``{"id", "row"}``, ``{"vector": path}`` or ``{"image": path}``.
    k : int
    split : str or None
        The split the results were restricted to.
    results : list of dict
        Best first: rank, row, id, score, patient_id/study_id (when stored), split, labels (positive names).
    """

    store: str
    features: str
    metric: str
    index: str
    query: dict
    k: int
    split: str | None
    results: list[dict]

    def to_dict(self) -> dict:
        """One JSON-ready document (what ``embedkit search --json`` prints)."""
        return asdict(self)


@dataclass(frozen=True)
class SearchEvalResult:
    """Label agreement of neighbours and the near-duplicate audit of one store.

    Attributes
    ----------
    store, features, index : str
    k : int
    label_agreement : dict or None
        :func:`probes.retrieval.label_agreement`'s document plus ``same_patient_excluded``; None when the store has
        no labels or no train/test rows.
    near_duplicates : dict
        threshold, neighbours_checked, rows_checked, n_pairs, pairs (a, b, cosine, split_a, split_b, patients).
    """

    store: str
    features: str
    index: str
    k: int
    label_agreement: dict | None
    near_duplicates: dict

    def to_dict(self) -> dict:
        """One JSON-ready document (what ``embedkit search-eval --json`` prints)."""
        return asdict(self)


def _bad(name: str, command: str, expected: str, got) -> EmbedkitError:
    return EmbedkitError(f"The '{name}' parameter of {command} must be {expected}. Got {got!r}.")


def open_store_for(path: str | Path, features: str):
    """Open the store at ``path`` read-only and check it has every view of ``features`` ('a' or 'a+b')."""
    from stores import EmbeddingStore
    from stores.errors import StoreError

    st = EmbeddingStore.open(path, mode="r")
    missing = [v for v in features.split("+") if v not in st.views]
    if missing:
        st.close()
        raise StoreError(f"Store '{path}' has no view {missing[0]!r}; it has {', '.join(st.views)}. "
                         "Pass one of them (or 'a+b') as --features.")
    return st


def _store_index(st, path: Path, features: str):
    from stores.index import filled_digest, open_index

    return open_index(path, features=features, expected_fingerprint=st.fingerprint,
                      expected_filled=filled_digest(st.filled))


def _faiss_refusal(exc: RuntimeError, kind: str, n: int) -> Exception:
    """faiss's RuntimeError as one actionable line (its text names a C++ function and a failed assertion)."""
    from stores.errors import StoreError

    text = " ".join(str(exc).split())
    reason = text.split("failed: ", 1)[1] if "failed: " in text else text.rsplit("Error: ", 1)[-1]
    return StoreError(f"faiss cannot build a '{kind}' index over {n} rows: {reason.rstrip('.')}. Use --kind flat "
                      "or --kind auto (which picks a kind the row count supports).")


def build_store_index(store: str | Path, *, features: str = "cls", kind: str = "auto",
                      memory_budget: str | int = "4GB", metric: str = "cosine", seed: int = 0,
                      say: Callable[[str], None] | None = None) -> IndexResult:
    """Build a faiss index over the filled rows of ``store`` and save it beside it, tuned to recall@10 >= 0.95.

    Parameters
    ----------
    store : str or Path
        Embedding store (a ``.zarr`` folder).
    features : str
        View to index (``'cls'``, ``'mean_patch'``, ``'cls+mean_patch'``).
    kind : str
        One of :data:`stores.index.KINDS` (``auto`` picks what the row count and memory budget allow).
    memory_budget : str or int
        Largest index to keep in RAM (``"4GB"`` or bytes).
    metric : {"cosine", "l2"}
    seed : int
        Seeds training and the held-out recall sample.
    say : callable(str), optional
        Receives each message meant for the user (default: the module logger).

    Returns
    -------
    IndexResult

    Raises
    ------
    EmbedkitError, StoreError
        A bad option, a store without the view, or a kind faiss cannot build over this many rows.

    Examples
    --------
    >>> build_store_index("runs/nih.zarr", features="cls").info["factory"]  # doctest: +SKIP
    'Flat'
    """
    from stores.index import KINDS, METRICS, build_index, filled_digest, index_dir, parse_size, save_index

    if kind not in KINDS:
        raise _bad("kind", "index", f"one of {', '.join(KINDS)}", kind)
    if metric not in METRICS:
        raise _bad("metric", "index", f"one of {', '.join(METRICS)}", metric)
    budget = parse_size(memory_budget)
    store = Path(store)
    with open_store_for(store, features) as st:
        filled = st.filled
        rows = np.flatnonzero(filled)
        (say or logger.info)(f"indexing {len(rows)} of {st.n_rows} rows ({features}, {kind}, {metric}) ...")
        vectors = st.load(features, mask=filled, dtype=None)  # stored dtype: build_index upcasts per block
        try:
            index, info = build_index(vectors, kind=kind, metric=metric, memory_budget_bytes=budget, rows=rows,
                                      seed=seed, store_fingerprint=st.fingerprint,
                                      store_filled=filled_digest(filled), features=features)
        except RuntimeError as exc:  # faiss's own refusals (a C++ message of several lines)
            raise _faiss_refusal(exc, kind, len(rows)) from None
        folder = save_index(index_dir(store, features), index, info)
    return IndexResult(path=folder, info=dict(info, path=str(folder)))


def _preset_from_provenance(prov: dict):
    """Rebuild the store's preprocessing preset from its provenance and check it reproduces the same params."""
    from embedkit.data import make_preset

    params = dict(prov.get("preprocess") or {})
    name = params.get("preset")
    res = params.get("resolution", prov.get("resolution"))
    if name == "paper":
        pre = make_preset("paper", resolution=int(res))
    elif name == "model":
        pre = make_preset("model", resolution=int(res), mean=params.get("mean"), std=params.get("std"),
                          resize=params.get("resize", "pad"), interpolation=params.get("interpolation", "bilinear"))
    else:
        raise EmbedkitError(f"The store's provenance names preprocessing preset {name!r}, which this embedkit cannot "
                            "rebuild; query with --id or --vector instead of --image.")
    rebuilt = dict(pre.params(), preset=name)
    diff = sorted(k for k in set(rebuilt) | set(params) if rebuilt.get(k) != params.get(k))
    if diff:
        raise EmbedkitError(f"Cannot reproduce the store's preprocessing (differs in {', '.join(diff)}); "
                            "query with --id or --vector instead of --image.")
    return pre


def embed_image_like_store(st, features: str, image: str | Path) -> np.ndarray:
    """Embed one image file exactly as the store's rows were: same backbone, preprocessing and view(s).

    Parameters
    ----------
    st : stores.EmbeddingStore
        The open store whose provenance names the backbone and preprocessing.
    features : str
        View(s) to embed, ``'a'`` or ``'a+b'`` (concatenated in that order).
    image : str or Path
        An image file the preset's decoder reads (PNG, JPEG, DICOM).

    Returns
    -------
    numpy.ndarray (1, D)

    Raises
    ------
    ModelError
        The store records no backbone, or the weights found differ from those that wrote it.
    """
    import torch

    from embedkit.backbones import load_backbone

    prov = st.provenance
    bbp = prov.get("backbone") or {}
    local = bbp.get("path")
    model = local if local and Path(local).exists() else (bbp.get("id") or bbp.get("name"))
    if not model:
        raise ModelError(f"Store '{st.path}' records no backbone path or id; query with --id or --vector instead.")
    views = features.split("+")
    bb = load_backbone(model, device="cpu", features=views)
    if bbp.get("sha256") and bb.provenance().get("sha256") not in (None, bbp["sha256"]):
        raise ModelError(f"The weights at '{model}' differ from those that wrote store '{st.path}' (sha256 "
                         f"{str(bb.provenance().get('sha256'))[:12]} != {bbp['sha256'][:12]}); "
                         "point the store's backbone path at the original weights or query with --id.")
    pre = _preset_from_provenance(prov)
    pixels = pre.to_tensor(pre.load(Path(image))).unsqueeze(0)  # load: the preset's own decoder
    with torch.inference_mode():
        out = bb.embed(pixels)
    return np.concatenate([out[v].float().cpu().numpy() for v in views], axis=1)


def _row_info(st, rows, scores) -> list[dict[str, Any]]:
    ids = st.ids
    split = st.split
    labels, names = st.labels, st.label_names
    meta = {m: st.metadata(m) for m in ("patient_id", "study_id") if m in st.metadata_names}
    out = []
    for rank, (r, s) in enumerate(zip(rows, scores), start=1):
        if r < 0:
            break
        item: dict[str, Any] = {"rank": rank, "row": int(r), "id": str(ids[r]), "score": round(float(s), 6)}
        for m, values in meta.items():
            item[m] = str(values[r])
        item["split"] = str(split[r]) if split is not None else None
        if labels is not None:
            item["labels"] = [n for n, v in zip(names, labels[r]) if v == 1.0]
        out.append(item)
    return out


def patient_rows(pid: np.ndarray, rows) -> list[np.ndarray]:
    """For each of ``rows``, every row of the same patient in ``pid (N,)`` (one sort, not one scan per query)."""
    _, inv = np.unique(pid, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.searchsorted(inv[order], np.arange(inv.max() + 1))
    ends = np.append(starts[1:], len(order))
    return [order[starts[inv[r]]:ends[inv[r]]] for r in rows]


def load_vector(path: str | Path) -> np.ndarray:
    """The query vector of a ``.npy`` file as float32; a file numpy cannot read is a user error."""
    try:
        q = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise EmbedkitError(f"--vector '{path}' does not exist; give a .npy file saved with numpy.save.") from None
    except (ValueError, OSError, EOFError) as exc:
        raise EmbedkitError(f"--vector '{path}' is not a numpy .npy array ({_first_line(exc)}); save the query "
                            "with numpy.save(path, vector).") from None
    if not isinstance(q, np.ndarray) or q.dtype.kind not in "fiu":
        raise EmbedkitError(f"--vector '{path}' must hold numbers; got {getattr(q, 'dtype', type(q))}.")
    return q.astype(np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _query_by_id(st, store: Path, features: str, query_id: str, exclude_same_patient: bool):
    hits = np.flatnonzero(st.ids == query_id)
    if len(hits) == 0:
        raise EmbedkitError(f"No row with id {query_id!r} in store '{store}'; ids look like {st.ids[0]!r}.")
    row = int(hits[0])
    if not st.filled[row]:
        raise EmbedkitError(f"Row {query_id!r} of store '{store}' has no embedding (failed or not extracted).")
    mask = np.zeros(st.n_rows, bool)
    mask[row] = True
    if exclude_same_patient:
        pid = st.metadata("patient_id")
        if pid is None:
            from stores.errors import StoreError

            raise StoreError(f"Store '{st.path}' has no patient_id column; drop --exclude-same-patient.")
        excluded = patient_rows(pid, [row])[0]
    else:
        excluded = np.array([row])
    return st.load(features, mask=mask), excluded, {"id": query_id, "row": row}


def search(store: str | Path, *, image: str | Path | None = None, query_id: str | None = None,
           vector: str | Path | np.ndarray | None = None, k: int = 10, features: str = "cls",
           split: str | None = None, exclude_same_patient: bool = False) -> SearchResult:
    """The ``k`` rows of ``store`` most similar to an image, a stored row or a vector (exactly one of them).

    Parameters
    ----------
    store : str or Path
        Embedding store with an index (:func:`build_store_index`).
    image : str or Path, optional
        Query image, embedded like the store's rows (:func:`embed_image_like_store`).
    query_id : str, optional
        A stored row's id; the row itself is never returned.
    vector : str, Path or ndarray (D,) or (1, D), optional
        Query vector, or a ``.npy`` file holding it.
    k : int
        Neighbours to return (>= 1).
    features : str
        The indexed view.
    split : str, optional
        Only return rows of this split.
    exclude_same_patient : bool
        With ``query_id``: also drop the query patient's other images.

    Returns
    -------
    SearchResult

    Raises
    ------
    EmbedkitError, StoreError, StaleIndexError
        No or several queries, an unknown id, a vector of the wrong size, no (or an out-of-date) index.

    Examples
    --------
    >>> search("runs/nih.zarr", query_id="00000001_000.png", k=5).results[0]["id"]  # doctest: +SKIP
    """
    if sum(x is not None for x in (image, query_id, vector)) != 1:
        raise EmbedkitError("Give exactly one query: --image PATH, --id ID or --vector FILE.npy.")
    if k < 1:
        raise _bad("k", "search", "an int >= 1", k)
    store = Path(store)
    with open_store_for(store, features) as st:
        index = _store_index(st, store, features)
        exclude = None
        if query_id is not None:
            q, excluded, query = _query_by_id(st, store, features, query_id, exclude_same_patient)
            exclude = [excluded]
        elif exclude_same_patient:
            raise EmbedkitError("--exclude-same-patient needs --id (an image or vector has no patient).")
        elif vector is not None:
            q = np.asarray(vector, dtype=np.float32) if isinstance(vector, np.ndarray) else load_vector(vector)
            q = q[None, :] if q.ndim == 1 else q
            if q.shape != (1, index.d):
                raise EmbedkitError(f"--vector must hold one vector of {index.d} values (shape ({index.d},) or "
                                    f"(1, {index.d})). Got shape {q.shape}.")
            query = {"vector": "<array>" if isinstance(vector, np.ndarray) else str(vector)}
        else:
            q = embed_image_like_store(st, features, image)
            query = {"image": str(image)}
        mask = None
        if split is not None:
            if st.split is None:
                raise EmbedkitError(f"Store '{store}' has no split column; drop --split.")
            mask = st.split == split
            if not mask.any():
                raise EmbedkitError(f"No rows in split {split!r}; the store's splits are "
                                    f"{sorted(set(st.split.tolist()))}.")
        scores, rows = index.search(q, k, mask=mask, exclude=exclude)
        results = _row_info(st, rows[0], scores[0])
    return SearchResult(store=str(store), features=features, metric=index.metric, index=index.info["factory"],
                        query=query, k=k, split=split, results=results)


def _eval_index(st, store: Path, features: str, seed: int, say: Callable[[str], None]):
    """The saved index when it is fresh and cosine; else an in-memory auto index over the filled rows."""
    from stores.errors import StaleIndexError, StoreError
    from stores.index import SearchIndex, build_index

    try:
        index = _store_index(st, store, features)
        if index.metric == "cosine":
            return index
    except StaleIndexError:
        raise
    except StoreError:
        pass
    say(f"no saved cosine index for '{features}': building one in memory "
        f"(save it with 'embedkit index {store} --features {features}')")
    rows = np.flatnonzero(st.filled)
    return SearchIndex(*build_index(st.load(features, mask=st.filled, dtype=None), kind="auto", rows=rows,
                                    seed=seed, features=features))


def search_eval(store: str | Path, *, features: str = "cls", k: int = 10, dup_threshold: float = 0.98,
                dup_k: int = 10, max_queries: int | None = None, seed: int = 0,
                say: Callable[[str], None] | None = None) -> SearchEvalResult:
    """Label agreement of neighbours (test -> train, same patient excluded) and a cross-split duplicate audit.

    Parameters
    ----------
    store : str or Path
        Embedding store with labels and a train/test split; its saved cosine index is used when fresh, else an
        in-memory one is built.
    features : str
        View to evaluate.
    k : int
        Neighbours per query (>= 1).
    dup_threshold : float
        Cosine at or above which two rows of different splits are reported as near-duplicates.
    dup_k : int
        Neighbours checked per row in the duplicate audit.
    max_queries : int, optional
        Subsample the queries of both checks (default: all rows).
    seed : int
        Seeds the subsample (and an in-memory index).
    say : callable(str), optional
        Receives each message meant for the user (default: the module logger).

    Returns
    -------
    SearchEvalResult

    Raises
    ------
    EmbedkitError, StoreError
        A bad option, a store without split, an out-of-date saved index.

    Examples
    --------
    >>> search_eval("runs/nih.zarr", k=10).label_agreement["macro_map_at_k"]  # doctest: +SKIP
    """
    from probes.retrieval import cross_split_duplicates, label_agreement

    if k < 1:
        raise _bad("k", "search-eval", "an int >= 1", k)
    store = Path(store)
    with open_store_for(store, features) as st:
        split, labels, filled = st.split, st.labels, st.filled
        if split is None:
            raise EmbedkitError(f"Store '{store}' has no split column; search-eval needs train and test rows.")
        index = _eval_index(st, store, features, seed, say or logger.info)
        pid = st.metadata("patient_id")
        train = (split == "train") & filled
        test = np.flatnonzero((split == "test") & filled)
        rng = np.random.default_rng(seed)
        if max_queries is not None and len(test) > max_queries:
            test = np.sort(rng.choice(test, max_queries, replace=False))
        agreement = None
        if labels is not None and len(test) and train.any():
            q = st.load(features, mask=np.isin(np.arange(st.n_rows), test))
            excl = patient_rows(pid, test) if pid is not None else None
            _, nb = index.search(q, k, mask=train, exclude=excl)
            gallery_labels = np.where(train[:, None], labels, np.nan)  # R_j and prevalence over the train gallery
            agreement = label_agreement(labels[test], gallery_labels, nb, label_names=st.label_names)
            agreement["same_patient_excluded"] = pid is not None
        # near-duplicate audit: every filled row against all others, self dropped
        rows = np.flatnonzero(filled)
        if max_queries is not None and len(rows) > max_queries:
            rows = np.sort(rng.choice(rows, max_queries, replace=False))
        q = st.load(features, mask=np.isin(np.arange(st.n_rows), rows))
        scores, nb = index.search(q, dup_k, exclude=[np.array([r]) for r in rows])
        pairs, sims = cross_split_duplicates(rows, nb, scores, split, threshold=dup_threshold)
        ids = st.ids
        dup_list = []
        for (a, b), s in zip(pairs, sims):
            item = {"a": str(ids[a]), "b": str(ids[b]), "cosine": round(float(s), 6),
                    "split_a": str(split[a]), "split_b": str(split[b])}
            if pid is not None:
                item.update(patient_a=str(pid[a]), patient_b=str(pid[b]))
            dup_list.append(item)
    return SearchEvalResult(
        store=str(store), features=features, index=index.info["factory"], k=k, label_agreement=agreement,
        near_duplicates={"threshold": dup_threshold, "neighbours_checked": dup_k, "rows_checked": len(rows),
                         "n_pairs": len(dup_list), "pairs": dup_list})
