"""``embedkit info STORE``: what a store holds, where it came from, how complete it is (parse, call
:func:`embedkit.app.catalog.store_info`, print)."""
from __future__ import annotations

from pathlib import Path

import typer

from embedkit.cli._common import dumps_strict, out_console, print_json


def register(app: typer.Typer) -> None:
    """Add ``info`` to ``app``."""

    @app.command("info")
    def info(
        store: Path = typer.Argument(..., help="An embedding store directory (*.zarr)."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
        verify: bool = typer.Option(False, "--verify", help="Also check shapes, ledger vs filled and fingerprint."),
    ) -> None:
        """Show rows, completion, views, labels per split, provenance, fingerprint and size of a store."""
        from embedkit.app.catalog import store_info

        doc = store_info(store, verify=verify).to_dict()
        if json_out:
            print_json(doc)
        else:
            _render(doc)
        if verify and not doc["verify"]["ok"]:
            raise typer.Exit(1)


def _render(doc: dict) -> None:
    from rich.table import Table

    console = out_console()
    overview = Table(title=f"Embedding store {doc['path']}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    pct = 100.0 * doc["filled"] / max(doc["rows"], 1)
    units = doc["units"]
    bb = doc["provenance"].get("backbone") or {}
    pre = doc["provenance"].get("preprocess") or {}
    rows = [
        ("rows", f"{doc['rows']:,}"),
        ("filled", f"{doc['filled']:,} ({pct:.1f}%)"),
        ("failures", f"{doc['failures']:,}"),
        ("units done", f"{units['done']}/{units['total']} ({units['rows_per_unit']} rows each)"),
        ("views", ", ".join(f"{v} ({d})" for v, d in doc["views"].items())),
        ("dtype", doc["dtype"]),
        ("backbone", " ".join(str(x) for x in (bb.get("name"), bb.get("id") or bb.get("path")) if x) or "?"),
        ("resolution", str(doc["provenance"].get("resolution", "?"))),
        ("preprocess", str(pre.get("preset", "?")) if isinstance(pre, dict) else str(pre)),
        ("metadata", ", ".join(doc["metadata"]) or "-"),
        ("size on disk", f"{_human(doc['size_bytes'])} in {doc['files']:,} files"),
        ("format", f"version {doc['format_version']}"),
        ("finalized", "yes" if doc["summary"] else "no"),
    ]
    for k, v in rows:
        overview.add_row(k, v)
    console.print(overview)
    console.print(f"fingerprint {doc['fingerprint']}", soft_wrap=True)  # never wrapped: people copy it
    if doc["labels"]:
        groups = list(doc["positives"])
        table = Table(title="Positives per split", title_justify="left")
        table.add_column("label")
        for g in groups:
            table.add_column(f"{g} (n={doc['positives'][g]['rows']:,})", justify="right")
        for name in doc["labels"]:
            table.add_row(name, *(f"{doc['positives'][g][name]:,}" for g in groups))
        console.print(table)
    console.print("[bold]provenance[/bold]")
    console.print_json(dumps_strict(doc["provenance"]))
    if "verify" in doc:
        ver = doc["verify"]
        console.print("verify: " + ("ok" if ver["ok"] else "PROBLEMS: " + "; ".join(ver["problems"])))
        if ver.get("marked_pending"):
            console.print(f"units {ver['marked_pending']} are marked pending: re-run the extract command that "
                          "wrote this store to rewrite exactly them.")
        elif ver.get("requeue_error"):
            console.print(f"could not mark the damaged units pending: {ver['requeue_error']}")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"
