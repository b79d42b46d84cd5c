"""``embedkit index``, ``embedkit search`` and ``embedkit search-eval``: faiss retrieval over a store's vectors.

The index lives beside the store (``STORE.index/<features>/``, see :mod:`stores.index`); image queries are embedded
with the store's own backbone and preprocessing, rebuilt from its provenance.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer

from embedkit.cli._common import bad_parameter, check_out, err_console, out_console, print_json

logger = logging.getLogger(__name__)


def _open_store(path: Path, features: str):
    from stores import EmbeddingStore
    from stores.errors import StoreError

    st = EmbeddingStore.open(path, mode="r")
    missing = [v for v in features.split("+") if v not in st.views]
    if missing:
        raise StoreError(f"Store '{path}' has no view {missing[0]!r}; it has {', '.join(st.views)}. "
                         "Pass one of them (or 'a+b') as --features.")
    return st


def _store_index(st, path: Path, features: str):
    from stores.index import filled_digest, open_index

    return open_index(path, features=features, expected_fingerprint=st.fingerprint,
                      expected_filled=filled_digest(st.filled))


def _preset_from_provenance(prov: dict):
    """Rebuild the store's preprocessing preset from its provenance and check it reproduces the same params."""
    from embedkit.data import make_preset
    from embedkit.errors import EmbedkitError

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


def embed_image_like_store(st, features: str, image: Path):
    """Embed one image file exactly as the store's rows were: same backbone, preprocessing and view(s).

    Returns
    -------
    numpy.ndarray (1, D)
    """
    import numpy as np
    import torch

    from embedkit.backbones import load_backbone
    from embedkit.errors import ModelError

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
    pixels = pre.to_tensor(pre.load(image)).unsqueeze(0)  # load: the preset's own decoder
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


def _same_patient_rows(st, row: int):

    pid = st.metadata("patient_id")
    if pid is None:
        from stores.errors import StoreError

        raise StoreError(f"Store '{st.path}' has no patient_id column; drop --exclude-same-patient.")
    return _patient_rows(pid, [row])[0]


def _patient_rows(pid, rows) -> list:
    """For each of ``rows``, every row of the same patient (one sort, not one scan per query)."""
    import numpy as np

    _, inv = np.unique(pid, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.searchsorted(inv[order], np.arange(inv.max() + 1))
    ends = np.append(starts[1:], len(order))
    return [order[starts[inv[r]]:ends[inv[r]]] for r in rows]


def _faiss_refusal(exc: RuntimeError, kind: str, n: int) -> Exception:
    """faiss's RuntimeError as one actionable line (its text names a C++ function and a failed assertion)."""
    from stores.errors import StoreError

    text = " ".join(str(exc).split())
    reason = text.split("failed: ", 1)[1] if "failed: " in text else text.rsplit("Error: ", 1)[-1]
    return StoreError(f"faiss cannot build a '{kind}' index over {n} rows: {reason.rstrip('.')}. Use --kind flat "
                      "or --kind auto (which picks a kind the row count supports).")


def _load_vector(path: Path):
    """The query vector of ``--vector FILE.npy`` as float32; a file numpy cannot read is a user error."""
    import numpy as np

    from embedkit.errors import EmbedkitError

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


def _index_impl(store: Path, features: str, kind: str, memory_budget: str, metric: str, seed: int,
                as_json: bool) -> None:
    import numpy as np

    from stores.index import KINDS, METRICS, build_index, filled_digest, index_dir, parse_size, save_index

    if kind not in KINDS:
        raise bad_parameter("kind", "index", f"one of {', '.join(KINDS)}", kind)
    if metric not in METRICS:
        raise bad_parameter("metric", "index", f"one of {', '.join(METRICS)}", metric)
    budget = parse_size(memory_budget)
    # Refused before the (possibly long) build: only an earlier index of ours is ever replaced.
    check_out(index_dir(store, features), noun="faiss index folder", is_ours=lambda p: (p / "index.json").is_file(),
              option="index folder")
    with _open_store(store, features) as st:
        filled = st.filled
        rows = np.flatnonzero(filled)
        what = f"indexing {len(rows)} of {st.n_rows} rows ({features}, {kind}, {metric}) ..."
        logger.info(what)
        # A spinner in a terminal only: an error must stay the one line on stderr.
        with err_console().status(what):
            vectors = st.load(features, mask=filled, dtype=None)  # stored dtype: build_index upcasts per block
            try:
                index, info = build_index(vectors, kind=kind, metric=metric, memory_budget_bytes=budget, rows=rows,
                                          seed=seed, store_fingerprint=st.fingerprint,
                                          store_filled=filled_digest(filled), features=features)
            except RuntimeError as exc:  # faiss's own refusals (a C++ message of several lines)
                raise _faiss_refusal(exc, kind, len(rows)) from None
        folder = save_index(index_dir(store, features), index, info)
    info = dict(info, path=str(folder))
    if not info["recall_target_met"]:
        err_console().print(f"[yellow]warning:[/] recall@10 {info['recall_at_k']:.3f} is below "
                            f"{info['recall_target']}; raise --memory-budget for an uncompressed index.")
    if as_json:
        print_json(info)
        return
    params = ", ".join(f"{k}={v}" for k, v in info["search_params"].items()) or "exact"
    recall = "exact" if info["recall_exact"] else f"{info['recall_at_k']:.3f} on {info['eval_queries']} held-out rows"
    out_console().print(f"{info['factory']} over {info['ntotal']} x {info['d']} ({info['metric']}; {params}); "
                        f"recall@10 {recall}; built in {info['build_seconds'] + info['tune_seconds']:.1f} s "
                        f"-> {folder}")


def _search_impl(store: Path, image: Optional[Path], query_id: Optional[str], vector: Optional[Path], k: int,
                 features: str, split: Optional[str], exclude_same_patient: bool, as_json: bool) -> None:
    import numpy as np

    from embedkit.errors import EmbedkitError

    if sum(x is not None for x in (image, query_id, vector)) != 1:
        raise EmbedkitError("Give exactly one query: --image PATH, --id ID or --vector FILE.npy.")
    if k < 1:
        raise bad_parameter("k", "search", "an int >= 1", k)
    with _open_store(store, features) as st:
        index = _store_index(st, store, features)
        exclude: list[np.ndarray] = []
        if query_id is not None:
            hits = np.flatnonzero(st.ids == query_id)
            if len(hits) == 0:
                raise EmbedkitError(f"No row with id {query_id!r} in store '{store}'; ids look like {st.ids[0]!r}.")
            row = int(hits[0])
            if not st.filled[row]:
                raise EmbedkitError(f"Row {query_id!r} of store '{store}' has no embedding (failed or not extracted).")
            mask = np.zeros(st.n_rows, bool)
            mask[row] = True
            q = st.load(features, mask=mask)
            exclude.append(_same_patient_rows(st, row) if exclude_same_patient else np.array([row]))
            query: dict[str, Any] = {"id": query_id, "row": row}
        else:
            if exclude_same_patient:
                raise EmbedkitError("--exclude-same-patient needs --id (an image or vector has no patient).")
            if vector is not None:
                q = _load_vector(vector)
                if q.ndim == 1:
                    q = q[None, :]
                if q.shape != (1, index.d):
                    raise EmbedkitError(f"--vector must hold one vector of {index.d} values (shape ({index.d},) or "
                                        f"(1, {index.d})). Got shape {q.shape}.")
                query = {"vector": str(vector)}
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
        scores, rows = index.search(q, k, mask=mask, exclude=exclude or None)
        results = _row_info(st, rows[0], scores[0])
    doc = {"store": str(store), "features": features, "metric": index.metric, "index": index.info["factory"],
           "query": query, "k": k, "split": split, "results": results}
    if as_json:
        print_json(doc)
        return
    from rich.table import Table

    what = "cosine" if index.metric == "cosine" else "sq. L2"
    table = Table(title=f"{len(results)} nearest to {next(iter(query.values()))} ({features}, {index.info['factory']})")
    for col in ("rank", "id", what, "patient", "study", "split", "labels"):
        table.add_column(col, justify="right" if col in ("rank", what) else "left")
    for r in results:
        table.add_row(str(r["rank"]), r["id"], f"{r['score']:.4f}", r.get("patient_id", ""), r.get("study_id", ""),
                      r["split"] or "", ", ".join(r.get("labels", [])))
    out_console().print(table)


def _eval_index(st, store: Path, features: str, seed: int):
    """The saved index when it is fresh and cosine; else an in-memory auto index over the filled rows."""
    import numpy as np

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
    err_console().print(f"no saved cosine index for '{features}': building one in memory "
                        f"(save it with 'embedkit index {store} --features {features}')")
    rows = np.flatnonzero(st.filled)
    return SearchIndex(*build_index(st.load(features, mask=st.filled, dtype=None), kind="auto", rows=rows,
                                    seed=seed, features=features))


def _search_eval_impl(store: Path, features: str, k: int, dup_threshold: float, dup_k: int,
                      max_queries: Optional[int], seed: int, as_json: bool) -> None:
    import numpy as np

    from embedkit.errors import EmbedkitError
    from probes.retrieval import cross_split_duplicates, label_agreement

    if k < 1:
        raise bad_parameter("k", "search-eval", "an int >= 1", k)
    with _open_store(store, features) as st:
        split, labels, filled = st.split, st.labels, st.filled
        if split is None:
            raise EmbedkitError(f"Store '{store}' has no split column; search-eval needs train and test rows.")
        index = _eval_index(st, store, features, seed)
        pid = st.metadata("patient_id")
        train = (split == "train") & filled
        test = np.flatnonzero((split == "test") & filled)
        rng = np.random.default_rng(seed)
        if max_queries is not None and len(test) > max_queries:
            test = np.sort(rng.choice(test, max_queries, replace=False))
        agreement = None
        if labels is not None and len(test) and train.any():
            q = st.load(features, mask=np.isin(np.arange(st.n_rows), test))
            excl = _patient_rows(pid, test) if pid is not None else None
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
    doc = {"store": str(store), "features": features, "index": index.info["factory"], "k": k,
           "label_agreement": agreement,
           "near_duplicates": {"threshold": dup_threshold, "neighbours_checked": dup_k, "rows_checked": len(rows),
                               "n_pairs": len(dup_list), "pairs": dup_list}}
    if as_json:
        print_json(doc)
        return
    _print_eval(doc)


def _print_eval(doc: dict) -> None:
    from rich.table import Table

    con = out_console()
    agreement = doc["label_agreement"]
    if agreement is None:
        con.print("label agreement: skipped (the store has no labels, or no train/test rows)")
    else:
        k = agreement["k"]
        t = Table(title=f"label agreement of {k} nearest train rows to {agreement['n_queries']} test rows")
        for col in ("label", "queries", f"P@{k}", f"mAP@{k}", "train prevalence"):
            t.add_column(col, justify="left" if col == "label" else "right")
        for name, v in agreement["labels"].items():
            t.add_row(name, str(v["n_queries"]), f"{v['precision_at_k']:.3f}", f"{v['map_at_k']:.3f}",
                      f"{v['gallery_prevalence']:.3f}")
        t.add_row("macro", "", f"{agreement['macro_precision_at_k']:.3f}", f"{agreement['macro_map_at_k']:.3f}",
                  f"{agreement['macro_gallery_prevalence']:.3f}")
        con.print(t)
    dup = doc["near_duplicates"]
    con.print(f"{dup['n_pairs']} cross-split pairs with cosine >= {dup['threshold']} "
              f"({dup['rows_checked']} rows, {dup['neighbours_checked']} neighbours each)")
    if dup["pairs"]:
        t = Table()
        for col in ("a", "split", "b", "split ", "cosine"):
            t.add_column(col)
        for p in dup["pairs"][:20]:
            t.add_row(p["a"], p["split_a"], p["b"], p["split_b"], f"{p['cosine']:.4f}")
        con.print(t)
        if len(dup["pairs"]) > 20:
            con.print(f"... {len(dup['pairs']) - 20} more (use --json for all)")


def register(app: typer.Typer) -> None:
    """Add ``index``, ``search`` and ``search-eval`` to ``app``."""

    @app.command("index")
    def index_cmd(
        store: Path = typer.Argument(..., help="Embedding store (a .zarr folder)."),
        features: str = typer.Option("cls", "--features", help="View to index ('cls', 'mean_patch', 'cls+mean_patch')."),
        kind: str = typer.Option("auto", "--kind", help="auto | flat | hnsw | ivf | ivfpq."),
        memory_budget: str = typer.Option("4GB", "--memory-budget", help="Largest index to keep in RAM (e.g. 4GB)."),
        metric: str = typer.Option("cosine", "--metric", help="cosine | l2."),
        seed: int = typer.Option(0, "--seed", help="Seeds training and the held-out recall sample."),
        as_json: bool = typer.Option(False, "--json", help="Print index.json on stdout."),
    ) -> None:
        """Build a faiss index beside STORE (STORE.index/FEATURES/), tuned to recall@10 >= 0.95."""
        _index_impl(store, features, kind, memory_budget, metric, seed, as_json)

    @app.command("search")
    def search_cmd(
        store: Path = typer.Argument(..., help="Embedding store with an index ('embedkit index STORE')."),
        image: Optional[Path] = typer.Option(None, "--image", help="Query image (embedded like the store)."),
        query_id: Optional[str] = typer.Option(None, "--id", help="Query by a stored row's id (itself excluded)."),
        vector: Optional[Path] = typer.Option(None, "--vector", help="Query vector in a .npy file, shape (D,)."),
        k: int = typer.Option(10, "-k", "--k", help="Neighbours to return."),
        features: str = typer.Option("cls", "--features", help="Indexed view to search."),
        split: Optional[str] = typer.Option(None, "--split", help="Only return rows of this split."),
        exclude_same_patient: bool = typer.Option(False, "--exclude-same-patient",
                                                  help="With --id: drop the query patient's other images."),
        as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    ) -> None:
        """The k rows of STORE most similar to an image, a stored row or a vector."""
        _search_impl(store, image, query_id, vector, k, features, split, exclude_same_patient, as_json)

    @app.command("search-eval")
    def search_eval_cmd(
        store: Path = typer.Argument(..., help="Embedding store with labels and a train/test split."),
        features: str = typer.Option("cls", "--features", help="View to evaluate."),
        k: int = typer.Option(10, "-k", "--k", help="Neighbours per query."),
        dup_threshold: float = typer.Option(0.98, "--dup-threshold", help="Cosine at or above = near-duplicate."),
        dup_k: int = typer.Option(10, "--dup-k", help="Neighbours checked per row in the duplicate audit."),
        max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Subsample queries (default: all)."),
        seed: int = typer.Option(0, "--seed", help="Seeds subsampling (and an in-memory index)."),
        as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    ) -> None:
        """Label agreement of neighbours (test -> train, same patient excluded) and a cross-split duplicate audit."""
        _search_eval_impl(store, features, k, dup_threshold, dup_k, max_queries, seed, as_json)
