"""``embedkit index``, ``embedkit search`` and ``embedkit search-eval``: parse, call :mod:`embedkit.app.retrieval`,
print.

The index lives beside the store (``STORE.index/<features>/``, see :mod:`stores.index`); image queries are embedded
with the store's own backbone and preprocessing, rebuilt from its provenance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedkit.cli._common import bad_parameter, check_out, err_console, out_console, print_json

#: Shown in --help; the registry (``stores.index.KINDS``) is checked when the command runs.
_KINDS_HELP = "auto | flat | hnsw | ivf | ivfpq."


def _index_cmd(store: Path, features: str, kind: str, memory_budget: str, metric: str, seed: int,
               as_json: bool) -> None:
    from embedkit.app.retrieval import build_store_index
    from stores.index import KINDS, METRICS, index_dir

    if kind not in KINDS:
        raise bad_parameter("kind", "index", f"one of {', '.join(KINDS)}", kind)
    if metric not in METRICS:
        raise bad_parameter("metric", "index", f"one of {', '.join(METRICS)}", metric)
    # Refused before the (possibly long) build: only an earlier index of ours is ever replaced.
    check_out(index_dir(store, features), noun="faiss index folder", is_ours=lambda p: (p / "index.json").is_file(),
              option="index folder")
    # A spinner in a terminal only: an error must stay the one line on stderr.
    with err_console().status(f"indexing {store} ({features}, {kind}, {metric}) ..."):
        result = build_store_index(store, features=features, kind=kind, memory_budget=memory_budget, metric=metric,
                                   seed=seed)
    info = result.info
    if not info["recall_target_met"]:
        err_console().print(f"[yellow]warning:[/] recall@10 {info['recall_at_k']:.3f} is below "
                            f"{info['recall_target']}; raise --memory-budget for an uncompressed index.")
    if as_json:
        print_json(result.to_dict())
        return
    params = ", ".join(f"{k}={v}" for k, v in info["search_params"].items()) or "exact"
    recall = "exact" if info["recall_exact"] else f"{info['recall_at_k']:.3f} on {info['eval_queries']} held-out rows"
    out_console().print(f"{info['factory']} over {info['ntotal']} x {info['d']} ({info['metric']}; {params}); "
                        f"recall@10 {recall}; built in {info['build_seconds'] + info['tune_seconds']:.1f} s "
                        f"-> {result.path}")


def _search_cmd(store: Path, image: Optional[Path], query_id: Optional[str], vector: Optional[Path], k: int,
                features: str, split: Optional[str], exclude_same_patient: bool, as_json: bool) -> None:
    from embedkit.app.retrieval import search

    if k < 1:
        raise bad_parameter("k", "search", "an int >= 1", k)
    doc = search(store, image=image, query_id=query_id, vector=vector, k=k, features=features, split=split,
                 exclude_same_patient=exclude_same_patient).to_dict()
    if as_json:
        print_json(doc)
        return
    from rich.table import Table

    results, query = doc["results"], doc["query"]
    what = "cosine" if doc["metric"] == "cosine" else "sq. L2"
    table = Table(title=f"{len(results)} nearest to {next(iter(query.values()))} ({features}, {doc['index']})")
    for col in ("rank", "id", what, "patient", "study", "split", "labels"):
        table.add_column(col, justify="right" if col in ("rank", what) else "left")
    for r in results:
        table.add_row(str(r["rank"]), r["id"], f"{r['score']:.4f}", r.get("patient_id", ""), r.get("study_id", ""),
                      r["split"] or "", ", ".join(r.get("labels", [])))
    out_console().print(table)


def _search_eval_cmd(store: Path, features: str, k: int, dup_threshold: float, dup_k: int,
                     max_queries: Optional[int], seed: int, as_json: bool) -> None:
    from embedkit.app.retrieval import search_eval

    if k < 1:
        raise bad_parameter("k", "search-eval", "an int >= 1", k)
    doc = search_eval(store, features=features, k=k, dup_threshold=dup_threshold, dup_k=dup_k,
                      max_queries=max_queries, seed=seed, say=lambda msg: err_console().print(msg)).to_dict()
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
        kind: str = typer.Option("auto", "--kind", help=_KINDS_HELP),
        memory_budget: str = typer.Option("4GB", "--memory-budget", help="Largest index to keep in RAM (e.g. 4GB)."),
        metric: str = typer.Option("cosine", "--metric", help="cosine | l2."),
        seed: int = typer.Option(0, "--seed", help="Seeds training and the held-out recall sample."),
        as_json: bool = typer.Option(False, "--json", help="Print index.json on stdout."),
    ) -> None:
        """Build a faiss index beside STORE (STORE.index/FEATURES/), tuned to recall@10 >= 0.95."""
        _index_cmd(store, features, kind, memory_budget, metric, seed, as_json)

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
        _search_cmd(store, image, query_id, vector, k, features, split, exclude_same_patient, as_json)

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
        _search_eval_cmd(store, features, k, dup_threshold, dup_k, max_queries, seed, as_json)
