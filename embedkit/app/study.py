"""``study``: a grid of datasets x resolutions x backbones x arms run through :mod:`embedkit.api`, then one results
table and one report.

Each stage (image cache, store, run, external validation) is skipped when its marker holds the current fingerprint
(:mod:`embedkit.study.grid`), resumed when its output was begun (the api functions resume their own work: an
extract continues its store, a finetune its checkpoint, a multi-seed probe its finished sub-runs) and redone from
scratch when the settings changed. A failed cell is recorded and the grid goes on; failures are listed at the end.
Killing the study and re-running it finishes the grid. Display names come from the configuration.
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
from embedkit.study.config import StudyConfig, check_inputs, load_config
from embedkit.study.grid import Grid, Stage, build_grid

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
        Receives each progress message.

    Returns
    -------
    StudyResult

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
    tell = say or logger.info
    cfg = load_config(config)
    check_inputs(cfg)
    grid = build_grid(cfg, out)
    selected = grid.select(only)
    if only and not selected:
        raise _no_match(only)
    grid.out.mkdir(parents=True, exist_ok=True)
    todo = [st for c in selected for st in _closure(c) if grid.state(st) != "done"]
    states: dict[str, str] = {}
    failures: dict[str, str] = {}
    if todo:
        _make_inputs(cfg, tell)
    n = len(selected)
    for i, cell in enumerate(selected, 1):
        if grid.state(cell) == "done":
            states[cell.key] = "done"
            continue
        tell(f"[{i}/{n}] {cell.key}")
        try:
            for st in _closure(cell):
                if states.get(st.key) == "failed":
                    raise EmbedkitError(f"its input {st.key} failed")
                if grid.state(st) != "done":
                    _run_stage(grid, st, tell)
                    states[st.key] = "ran"
            states[cell.key] = "ran"
        except CellNotApplicable as exc:
            states[cell.key] = "n/a"
            grid.mark_done(cell, {"not_applicable": str(exc)})
            tell(f"  n/a: {exc}")
        except (EmbedkitError, ValueError, OSError, RuntimeError) as exc:
            # One broken cell must not stop the grid (Hydra's pitfall): record it, go on, list failures at the end.
            if os.environ.get("EMBEDKIT_DEBUG") == "1":
                raise
            msg = " ".join(str(exc).split()) or type(exc).__name__
            failures[cell.key] = msg
            states[cell.key] = "failed"
            for st in _closure(cell):
                states.setdefault(st.key, "failed")
            tell(f"  failed: {msg}")
    _write_json(grid.out / "failures.json", failures)
    res_path = rep_path = None
    if report:
        from embedkit.study.document import write_report
        from embedkit.study.results import collect, write_results

        rows = collect(grid)
        res_path = write_results(grid.out / "results.csv", rows)
        rep_path = write_report(grid, rows, failures=failures)
        tell(f"results: {res_path} ({len(rows)} rows); report: {rep_path}")
    return StudyResult(grid.out, states, failures, res_path, rep_path, time.perf_counter() - t0)


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


def _run_stage(grid: Grid, st: Stage, tell) -> None:
    import embedkit.api as ek

    s = grid.config.settings
    _fresh(grid, st)
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
        _run_cell(grid, st, tell)
    else:
        from embedkit.app.predict import predict

        train, store = st.deps
        tell(f"  predict {train.key} on {st.test_dataset}")
        predict(train.path, store.path, st.path, n_boot=int(st.params["n_boot"]), boot_seed=st.params["boot_seed"],
                bootstrap=st.params["bootstrap"], age_bands=s["age_bands"], device=s["device"], overwrite=True)
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


def _run_cell(grid: Grid, st: Stage, tell) -> None:
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
        run_dirs = [st.path]
    for d in run_dirs:
        add_subgroups(d, store=store, age_bands=s["age_bands"], min_count=s["min_count"])
