"""``study``: a grid of datasets x resolutions x backbones x arms run through :mod:`embedkit.api`, then one results
table and one report.

Each stage (image cache, store, run, external validation) is skipped when its marker holds the current fingerprint
(:mod:`embedkit.study.grid`), resumed when its output was begun (the api functions resume their own work: an
extract continues its store, a finetune its checkpoint, a multi-seed probe its finished sub-runs) and redone from
scratch when the settings changed. A failed cell is recorded and the grid goes on; failures are listed at the end.
Killing the study and re-running it finishes the grid. Display names come from the configuration.

Under torchrun or Slurm (``WORLD_SIZE`` > 1) the same command and configuration work: ``torchrun --nproc-per-node N
-m embedkit study CONFIG --out DIR``. Every rank runs the rank-aware stages together (cache-images and extract
split a store's units between them, finetune trains with DDP); rank 0 alone probes, predicts, adds subgroups, writes
the markers, ``results.csv`` and ``report.md`` while the other ranks wait at a barrier
(:mod:`embedkit.study.ranks`). Which stages run is read from the markers by every rank between two barriers, before
anything is written, so every rank takes the same decisions. A failed probe or prediction is recorded as in one
process; a failed rank-aware stage stops the study (re-run to resume), since a rank that failed alone cannot tell
whether its peers wait for it inside that stage. The study's fingerprints do not include the number of ranks: a
study begun in one process is finished (or found done) under torchrun, and the other way round.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.errors import EmbedkitError
from embedkit.extract.dist import ProcessGroup, detect_env
from embedkit.study.config import StudyConfig, check_inputs, load_config
from embedkit.study.grid import Grid, Stage, build_grid
from embedkit.study.ranks import on_main, study_group

logger = logging.getLogger(__name__)

__all__ = ["StudyResult", "study", "study_plan"]


class CellNotApplicable(EmbedkitError):
    """The cell does not apply to this backbone (e.g. a view the backbone does not have)."""


@dataclass(frozen=True)
class StudyResult:
    """What :func:`study` did.

    Attributes
    ----------
    out : Path
    states : dict key -> state
        Every selected stage: ``done`` (now or before), ``ran``, ``failed``, ``n/a`` -- or, for a dry run, the state
        it would start from (``done``, ``todo``, ``partial``, ``stale``).
    failures : dict key -> message
    results : Path or None
        ``results.csv`` (None for a dry run).
    report : Path or None
    seconds : float
    """

    out: Path
    states: dict[str, str]
    failures: dict[str, str] = field(default_factory=dict)
    results: Path | None = None
    report: Path | None = None
    seconds: float = 0.0


def study_plan(config: str | Path, out: str | Path, *, only: str | None = None) -> list[tuple[str, str, str]]:
    """(key, kind, state) of every stage the selected cells need, in run order -- what ``--dry-run`` prints."""
    cfg = load_config(config)
    check_inputs(cfg)
    grid = build_grid(cfg, out)
    cells = grid.select(only)
    if only and not cells:
        raise _no_match(only)
    rows, seen = [], set()
    for cell in cells:
        for st in _closure(cell):
            if st.key not in seen:
                seen.add(st.key)
                rows.append((st.key, st.kind, grid.state(st)))
    return rows


def _no_match(only: str) -> EmbedkitError:
    return EmbedkitError(f"--only {only!r} matches no cell. Run --dry-run without --only to list the cell keys.")


def _closure(stage: Stage) -> list[Stage]:
    """The stage's dependencies (depth first) then the stage."""
    out: list[Stage] = []
    for d in stage.deps:
        out.extend(_closure(d))
    out.append(stage)
    return out


def study(
    config: str | Path,
    out: str | Path,
    *,
    only: str | None = None,
    report: bool = True,
    say: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run (or finish) the study described by ``config`` into ``out``.

    Parameters
    ----------
    config : str or Path
        A study TOML file (``embedkit study --example`` prints a documented one).
    out : str or Path
        The study folder: ``work/`` (caches, stores, markers), ``runs/``, ``external/``, ``results.csv``,
        ``report.md`` and ``figures/``.
    only : str, optional
        Comma-separated globs over cell keys (``phantom-a/*/vit/*``, ``external/*``); the stages they need run too.
    report : bool
        Write ``results.csv`` and ``report.md`` (from every finished cell, selected or not).
    say : callable(str), optional
        Receives each progress message (on rank 0 only under torchrun / Slurm).

    Returns
    -------
    StudyResult
        On a rank other than 0: the states and failures that rank saw (a probe's failure message stays on rank 0).

    Raises
    ------
    StudyConfigError
        A bad configuration (nothing is run).

    Examples
    --------
    >>> res = study("study.toml", "study-out")   # doctest: +SKIP
    >>> res.failures, res.report                 # doctest: +SKIP
    """
    t0 = time.perf_counter()
    cfg = load_config(config)
    check_inputs(cfg)
    grid = build_grid(cfg, out)
    selected = grid.select(only)
    if only and not selected:
        raise _no_match(only)
    env = detect_env()
    tell = (say or logger.info) if env.is_main else logger.debug  # one console: rank 0's
    grid.out.mkdir(parents=True, exist_ok=True)
    with study_group(env, device=str(cfg.settings["device"])) as group:
        # Rank 0 builds the inputs; then every rank reads the markers between two barriers (nothing is written
        # in between), so the plan -- which stages run -- is the same on every rank.
        on_main(group, lambda: _make_inputs(cfg, tell)
                if any(grid.state(st) != "done" for c in selected for st in _closure(c)) else None)
        pending = {st.key for c in selected for st in _closure(c) if grid.state(st) != "done"}
        group.barrier()
        states, failures = _run_grid(grid, selected, pending, group, tell)

        def finish() -> tuple[Path | None, Path | None]:
            _write_json(grid.out / "failures.json", failures)
            if not report:
                return None, None
            from embedkit.study.document import write_report
            from embedkit.study.results import collect, write_results

            rows = collect(grid)
            res, rep = write_results(grid.out / "results.csv", rows), write_report(grid, rows, failures=failures)
            tell(f"results: {res} ({len(rows)} rows); report: {rep}")
            return res, rep

        paths = on_main(group, finish)
    if paths is None:  # another rank: rank 0 wrote them
        paths = (grid.out / "results.csv", grid.out / "report.md") if report else (None, None)
    return StudyResult(grid.out, states, failures, paths[0], paths[1], time.perf_counter() - t0)


def _collective(grid: Grid, st: Stage) -> bool:
    """Stages every rank runs together (rank-aware); the others run on rank 0 alone."""
    if st.kind in ("cache", "extract"):
        return True
    return st.kind == "run" and next(a for a in grid.config.arms if a.name == st.arm).kind == "finetune"


def _run_grid(grid: Grid, selected: list[Stage], pending: set[str], group: ProcessGroup,
              tell) -> tuple[dict[str, str], dict[str, str]]:
    """Run the ``pending`` stages of the selected cells; (states, failures) as this rank saw them."""
    states: dict[str, str] = {}
    failures: dict[str, str] = {}
    n = len(selected)
    for i, cell in enumerate(selected, 1):
        if cell.key not in pending:
            states[cell.key] = "done"
            continue
        tell(f"[{i}/{n}] {cell.key}")
        for st in _closure(cell):
            if st.key not in pending:
                states.setdefault(st.key, "done")
                continue
            if st.key in states and states[st.key] != "failed":
                continue  # ran earlier in this run (a cache or store shared by cells)
            if states.get(st.key) == "failed":
                state, msg = "failed", f"its input {st.key} failed"
            else:
                state, msg = _attempt(grid, st, tell, group)
                states[st.key] = state
            if state == "failed":
                failures[cell.key] = msg
                for later in _closure(cell):
                    states.setdefault(later.key, "failed")
                states[cell.key] = "failed"
                tell(f"  failed: {msg}")
                break
            if state == "n/a":
                tell(f"  n/a: {msg}")
    return states, failures


def _attempt(grid: Grid, st: Stage, tell, group: ProcessGroup) -> tuple[str, str]:
    """Run one stage: ('ran' | 'n/a' | 'failed', message). Rank-0 stages: the other ranks wait for the outcome."""
    env = group.env
    collective = _collective(grid, st)
    state, msg = "ran", ""
    if env.is_main or collective:
        try:
            _run_stage(grid, st, tell, group)
        except CellNotApplicable as exc:
            state, msg = "n/a", str(exc)
            if env.is_main:
                grid.mark_done(st, {"not_applicable": msg})
        except (EmbedkitError, ValueError, OSError, RuntimeError) as exc:
            # One broken cell must not stop the grid (Hydra's pitfall): record it, go on, list failures at the end.
            # Under torchrun a failed rank-aware stage stops the study instead: a rank that failed alone cannot
            # tell whether its peers wait for it at a barrier inside that stage.
            if os.environ.get("EMBEDKIT_DEBUG") == "1" or (collective and env.distributed):
                raise
            state, msg = "failed", " ".join(str(exc).split()) or type(exc).__name__
    if env.distributed and not collective and not group.all_ok(state != "failed"):
        return "failed", msg or "failed on rank 0 (see its output)"
    return state, msg


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _make_inputs(cfg: StudyConfig, tell) -> None:
    """Build what ``[make]`` asks for (phantoms, tiny random models) when it is not there yet."""
    for spec in cfg.make.get("phantoms", []):
        dest = Path(cfg.resolve(spec["out"]))
        if (dest / "manifest.csv").exists():
            continue
        from embedkit.data.phantoms import make_phantoms

        tell(f"make: phantoms -> {dest}")
        make_phantoms(dest, **{k: v for k, v in spec.items() if k != "out"})
    tiny = cfg.make.get("tiny_models")
    if tiny:
        folder = Path(cfg.resolve(tiny["folder"]))
        for kind in tiny.get("kinds", []):
            if (folder / f"tiny-{kind}").exists() or any(folder.glob(f"tiny-{kind}.*")):
                continue
            from embedkit.testing import make_tiny_backbone

            tell(f"make: tiny random {kind} -> {folder}")
            make_tiny_backbone(kind, folder, seed=int(tiny.get("seed", 0)))


def _fresh(grid: Grid, st: Stage) -> None:
    """Remove the output of a stage whose settings changed (a resumable partial output is kept)."""
    if grid.state(st) == "stale" and st.path.exists():
        shutil.rmtree(st.path)
        grid.marker(st).unlink(missing_ok=True)


def _run_stage(grid: Grid, st: Stage, tell, group: ProcessGroup) -> None:
    """Run a stage (on every rank when it is rank-aware) and let rank 0 write its marker."""
    import embedkit.api as ek

    s = grid.config.settings
    if group.env.is_main:
        _fresh(grid, st)
    if _collective(grid, st):
        group.barrier()  # no rank opens the output while rank 0 may still be removing a stale one
    t = time.perf_counter()
    if st.kind == "cache":
        p = st.params
        tell(f"  cache-images {st.dataset} @{st.resolution}")
        ek.cache_images(p["data"], st.path, res=p["res"], preprocess=p["preprocess"], resize=p["resize"],
                        batch_size=s["batch_size"], workers=s["workers"], limit=p["limit"], labels=p["labels"],
                        uncertain=p["uncertain"], views=p["views"], split=p["split"])
    elif st.kind == "extract":
        p = st.params
        tell(f"  extract {st.backbone} on {st.dataset} @{st.resolution}")
        if st.deps:  # from the image cache: its label / split policies were fixed when it was written
            ek.extract(p["model"], str(st.deps[0].path), st.path, res=st.resolution, preprocess=s["preprocess"],
                       resize=s["resize"], batch_size=s["batch_size"], workers=s["workers"], device=s["device"],
                       dtype=p["dtype"])
        else:
            ek.extract(p["model"], p["data"], st.path, res=st.resolution, preprocess=p["preprocess"],
                       resize=p["resize"], batch_size=s["batch_size"], workers=s["workers"], device=s["device"],
                       dtype=p["dtype"], limit=p["limit"], labels=p["labels"], uncertain=p["uncertain"],
                       views=p["views"], split=p["split"])
    elif st.kind == "run":
        _run_cell(grid, st, tell, group)
    else:
        from embedkit.app.predict import predict

        train, store = st.deps
        tell(f"  predict {train.key} on {st.test_dataset}")
        predict(train.path, store.path, st.path, n_boot=int(st.params["n_boot"]), boot_seed=st.params["boot_seed"],
                bootstrap=st.params["bootstrap"], age_bands=s["age_bands"], device=s["device"], overwrite=True)
    if group.env.is_main:
        grid.mark_done(st, {"seconds": round(time.perf_counter() - t, 3)})


def _features(store: Path, wanted: str) -> str:
    from stores import EmbeddingStore

    with EmbeddingStore.open(store, "r") as st:
        views = list(st.views)
    if wanted == "default":
        return "cls" if "cls" in views else views[0]
    missing = [v for v in wanted.split("+") if v not in views]
    if missing:
        raise CellNotApplicable(f"this backbone's store has no view {', '.join(missing)} (it has {', '.join(views)})")
    return wanted


def _run_cell(grid: Grid, st: Stage, tell, group: ProcessGroup) -> None:
    import embedkit.api as ek
    from embedkit.app.subgroups import add_subgroups

    s, p = grid.config.settings, st.params
    store = st.deps[0].path
    arm = next(a for a in grid.config.arms if a.name == st.arm)
    if arm.kind == "frozen":
        features = _features(store, arm.features)
        tell(f"  probe {arm.head} on {features}")
        ek.probe(store, st.path, head=arm.head, features=features, label_fractions=arm.label_fractions,
                       seeds=arm.seeds, n_boot=p["n_boot"], boot_seed=p["boot_seed"], bootstrap=p["bootstrap"],
                       protocol=arm.protocol, head_options=dict(arm.options), device=s["device"],
                       overwrite=not arm.curves, subgroups=False)  # added below, with the study's min_count
        run_dirs = [st.path] if not arm.curves else sorted(d.parent for d in st.path.glob("*/metrics.json"))
    else:
        model = grid.stores[(st.dataset, st.resolution, st.backbone)].params["model"]
        tell(f"  finetune {arm.mode} ({arm.protocol})")
        ek.finetune(model, str(store), st.path, res=st.resolution, mode=arm.mode, protocol=arm.protocol,
                    n_boot=p["n_boot"], boot_seed=p["boot_seed"], bootstrap=p["bootstrap"], device=s["device"],
                    workers=s["workers"], subgroups=False, **arm.options)
        run_dirs = [st.path] if group.env.is_main else []  # subgroups: rank 0's files
    for d in run_dirs:
        add_subgroups(d, store=store, age_bands=s["age_bands"], min_count=s["min_count"])
