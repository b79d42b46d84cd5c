"""``embedkit models``: the registered backbones and whether their weights are in the local cache (offline)."""
from __future__ import annotations

import typer

from embedkit.cli._common import out_console, print_json


def register(app: typer.Typer) -> None:
    """Add ``models`` to ``app``."""
    from embedkit.backbones.families import list_families  # the registry only: no torch

    families = "\n\n".join(f"{f.name}: {f.description}" for f in list_families())
    help_text = ("List the registered backbones (name, source, id, dim, patch, registers, licence, family, weights "
                 "present).\n\nNever touches the network: presence is looked up in the local Hugging Face cache. "
                 "Any hub id, 'timm:NAME', a save_pretrained folder or a checkpoint file also works as --model; it "
                 "is built by one of the registered backbone families:\n\n" + families)

    @app.command("models", help=help_text)
    def models(
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    ) -> None:
        from embedkit.app.catalog import list_models, models_document

        doc = models_document(list_models())
        if as_json:
            print_json(doc)
            return
        rows = doc["backbones"]
        from rich.table import Table

        table = Table(title="embedkit backbones (weights: local hub cache, looked up offline)")
        for col in ("name", "source", "id", "dim", "patch", "regs", "license", "family", "weights"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            table.add_row(r["name"], r["source"], r["id"] or "-", str(r["embed_dim"]), str(r["patch_size"]),
                          str(r["num_registers"]), r["license"], r["loader"], "local" if r["weights_local"] else "-")
        console = out_console()
        if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
            console.width = 160
        console.print(table)
        console.print("Also accepted as --model: any hub id, timm:NAME, a save_pretrained folder, a checkpoint "
                            "file (.safetensors/.pth, incl. original DINOv3 releases), MODEL@FILE. DINOv3 weights "
                            "are gated: accept the licence on the hub page, `hf auth login`, `hf download ID "
                            "--local-dir D`, then --model D.", highlight=False)
        console.print("Backbone families: " + "; ".join(f"{f['name']} ({f['library']})" for f in doc["families"]),
                      highlight=False)
