"""``embedkit study``: options in, :func:`embedkit.app.study.study` called, a summary (or the cell list) out."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedkit.cli._common import check_out, print_json

#: What a study folder may hold (the first must be there for a folder to count as one).
STUDY_ENTRIES = ("work", "runs", "external", "results.csv", "report.md", "figures", "failures.json")


def _is_study(path: Path) -> bool:
    if not path.is_dir():
        return False
    entries = {p.name for p in path.iterdir()}
    return "work" in entries and entries <= set(STUDY_ENTRIES)


def register(app: typer.Typer) -> None:
    """Add ``study``."""

    @app.command("study")
    def study_cmd(
        config: Optional[Path] = typer.Argument(None, help="Study configuration (TOML); see --example."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study folder (re-running it finishes it)."),
        example: bool = typer.Option(False, "--example", help="Print a runnable, documented configuration "
                                                              "(phantoms, tiny random models) and exit."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List every stage the grid needs and its state."),
        only: Optional[str] = typer.Option(None, "--only", help="Comma-separated globs over cell keys "
                                                                "(DATASET/RES/BACKBONE/ARM, external/...)."),
        json_out: bool = typer.Option(False, "--json", help="Print the outcome (or the dry-run list) as JSON."),
    ) -> None:
        """Run a grid of datasets x resolutions x backbones x arms (cache-images -> extract -> probe / finetune),
        skipping finished cells, then write results.csv and report.md with figures."""
        if example:
            from embedkit.study.config import EXAMPLE

            typer.echo(EXAMPLE, nl=False)
            return
        if config is None or out is None:
            raise typer.BadParameter("embedkit study needs CONFIG and --out (or --example to print a configuration).")
        if not config.is_file():
            raise typer.BadParameter(f"The study configuration '{config}' does not exist or is not a file.")
        from embedkit.extract.dist import detect_env

        main = detect_env().is_main  # under torchrun / Slurm, rank 0 owns the console
        if dry_run:
            if not main:
                return
            from embedkit.app.study import study_plan

            plan = study_plan(config, out, only=only)
            if json_out:
                print_json([{"key": k, "stage": kind, "state": s} for k, kind, s in plan])
                return
            width = max((len(k) for k, _, _ in plan), default=10)
            for k, kind, s in plan:
                typer.echo(f"{k:<{width}}  {kind:<8}  {s}")
            counts = {s: sum(1 for *_, x in plan if x == s) for s in sorted({x for *_, x in plan})}
            typer.echo(", ".join(f"{v} {k}" for k, v in counts.items()), err=True)
            return
        check_out(out, noun="study folder", is_ours=_is_study)
        from embedkit.app.study import study

        def say(msg: str) -> None:
            if not json_out:
                typer.echo(msg, err=True)

        res = study(config, out, only=only, say=say)
        if not main:
            return  # rank 0 reports (and exits 2 on failures); an early exit here would make torchrun kill it
        ran = sum(1 for s in res.states.values() if s == "ran")
        if json_out:
            print_json({"out": str(res.out), "states": res.states, "failures": res.failures,
                        "results": str(res.results), "report": str(res.report), "seconds": round(res.seconds, 2)})
        else:
            typer.echo(f"{res.report}  ({ran} stage(s) run, {len(res.failures)} failed, {res.seconds:.1f} s)")
        if res.failures:
            first = next(iter(sorted(res.failures.items())))
            raise typer.BadParameter(f"{len(res.failures)} cell(s) failed (first: {first[0]}: {first[1]}); "
                                     f"see {res.out / 'failures.json'}, fix and re-run to finish the grid.")
