"""``probe``: heads on a store's features, evaluated on its test split with bootstrap CIs, written as run directories.

What this layer decides (``probes`` only does the arithmetic on the arrays it is given): the split, the rows left
out and the bootstrap unit (:mod:`embedkit.app.probe_data`); the recipe (a protocol from :mod:`embedkit.protocols`
under the explicit options, which win and are recorded); the run's identity (:mod:`embedkit.app.identity`).

Bootstrap plans live in ``<parent of out>/.embedkit-bootstrap/`` unless ``boot_dir`` says otherwise: runs written
side by side share one plan per test set. A plan is content-addressed by the test ids, ``n_boot``, ``boot_seed`` and
the bootstrap groups, so a run elsewhere regenerates the identical matrix.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from embedkit.app.probe_data import Bootstrap, ProbeData, SplitUnit, bad_option, bootstrap_groups, read_for_probe
from embedkit.errors import DataError, EmbedkitError

logger = logging.getLogger(__name__)

__all__ = ["ProbeResult", "probe", "write_summary"]


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`probe` produced.

    Attributes
    ----------
    out : Path
        The run directory (one run) or the parent of the sub-runs ``frac<F>-seed<S>``.
    runs : list[dict]
        The ``metrics.json`` document of each run, in order.
    summary : dict or None
        Mean and SD over seeds per label fraction (several runs only; also in ``summary.json``).
    notes : list[str]
        Everything said along the way (split, rows left out, warnings).
    """

    out: Path
    runs: list[dict]
    summary: dict | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Recipe:
    head: str
    features: str
    head_options: dict
    thresholds: str
    youden_rule: str
    n_boot: int
    protocol: dict | None  # metrics.json's ``protocol`` block


def _recipe(protocol: str | None, *, head: str | None, features: str | None, head_options: dict | None,
            thresholds: str | None, n_boot: int | None) -> _Recipe:
    """What to run: the protocol's fields (if any) under the explicit arguments, which win and are recorded."""
    explicit = {k: v for k, v in (head_options or {}).items() if v is not None}
    if protocol is None:
        return _Recipe(head or "linear", features or "cls", explicit, thresholds or "val", "ge", n_boot or 1000, None)
    from embedkit.protocols import get_protocol

    p = get_protocol(protocol)
    given = {"head": head, "features": features, "thresholds": thresholds, "n_boot": n_boot}
    base = {"head": p.head, "features": p.features, "thresholds": p.threshold_mode, "n_boot": p.n_bootstrap}
    overrides = {k: v for k, v in given.items() if v is not None and v != base[k]}
    chosen = {k: given[k] if given[k] is not None else base[k] for k in base}
    # The protocol's head options belong to its head; another head starts from its own defaults.
    options = dict(p.head_options) if chosen["head"] == p.head else {}
    overrides.update({f"head_options.{k}": v for k, v in explicit.items() if options.get(k) != v})
    options.update(explicit)
    return _Recipe(chosen["head"], chosen["features"], options, chosen["thresholds"], p.youden_rule,
                   chosen["n_boot"], {**p.params(), "overrides": overrides})


def probe(
    store: str | Path,
    out: str | Path,
    *,
    head: str | None = None,
    features: str | None = None,
    labels: Sequence[str] | None = None,
    label_fractions: Sequence[float] = (1.0,),
    seeds: int = 1,
    seed: int = 0,
    n_boot: int | None = None,
    bootstrap: Bootstrap = "auto",
    boot_seed: int = 0,
    boot_dir: str | Path | None = None,
    thresholds: Literal["val", "youden-test"] | None = None,
    protocol: str | None = None,
    head_options: dict | None = None,
    device: str = "auto",
    split_unit: SplitUnit | None = None,
    allow_partial: bool = False,
    allow_leak: bool = False,
    overwrite: bool = False,
    subgroups: bool = True,
    age_bands: Sequence[float] = (0, 40, 60, 80),
    say: Callable[[str], None] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> ProbeResult:
    """Train probe heads on a store's features; evaluate each on the test split with bootstrap CIs.

    Parameters
    ----------
    store : str or Path
        Embedding store written by ``extract``.
    out : str or Path
        Run directory; with several label fractions or seeds, the parent of ``frac<F>-seed<S>`` sub-runs
        (finished sub-runs are kept: the call resumes).
    head : {"linear", "mlp", "knn", "sklearn"}, optional
        Default: the protocol's head, else ``linear``.
    features : str, optional
        A view or '+'-joined views (default: the protocol's, else ``cls``).
    labels : sequence of str, optional
        Subset of the store's labels.
    label_fractions : sequence of float in (0, 1]
        Fractions of the training units used.
    seeds : int
        Repeats per fraction, with seeds ``seed, seed+1, ...``.
    seed : int
        Seed of the head, the subsample and a made split.
    n_boot : int, optional
        Bootstrap resamples of the test set (default: the protocol's, else 1,000).
    boot_seed : int
        Seed of the resamples (keep it and ``n_boot`` fixed to pair runs).
    bootstrap : {"auto", "patients", "images"}
        ``auto``: patients when the store has patient ids, else images.
    boot_dir : str or Path, optional
        Where bootstrap plans are kept (default ``<out>/../.embedkit-bootstrap``).
    thresholds : {"val", "youden-test"}, optional
        Youden thresholds from validation, or re-picked on each test resample (the reference study); default: the
        protocol's, else ``val``.
    protocol : {"paper", "modern"}, optional
        A recipe from :mod:`embedkit.protocols` (features, head, head options, threshold mode and Youden rule,
        resamples); explicit arguments override it and are recorded as overrides.
    head_options : dict, optional
        ``lr``, ``batch_size``, ``epochs`` ... passed to the head (None values are ignored).
    device : str
        ``auto``, ``cpu``, ``cuda`` (linear and mlp heads).
    split_unit : {"patient", "study", "image"}, optional
        Accept splitting a store without patient ids by this unit.
    allow_partial : bool
        Probe the filled rows of a store that is still being filled (the left-out count is recorded).
    allow_leak : bool
        Go on when a patient or study sits in two splits.
    overwrite : bool
        Replace finished runs.
    subgroups : bool
        After each run is written, add its subgroup metrics (AUROC/AP per sex, age band, view and source dataset
        from the store's metadata; :func:`embedkit.app.subgroups.add_subgroups`): ``subgroups.csv`` and a
        ``subgroups`` block in ``metrics.json``. A resumed sub-run without them gets them.
    age_bands : sequence of float
        Lower bounds of the subgroup age bands (increasing, >= 0).
    say : callable(str), optional
        Receives each message meant for the user (default: the module logger).
    progress : callable(dict), optional
        Receives the head's training events (step and epoch, :class:`probes.heads.FitProgress`; the mlp head
        reports them), each with ``head``, ``run`` (1-based) and ``runs`` added.

    Returns
    -------
    ProbeResult

    Raises
    ------
    EmbedkitError, DataError, LeakageError, ProbeError

    Examples
    --------
    >>> res = probe("runs/nih.zarr", "runs/nih-linear", features="cls", n_boot=1000)  # doctest: +SKIP
    >>> res.runs[0]["mean_auroc"]["value"]                                           # doctest: +SKIP
    """
    from probes.bootstrap import plan_for_test_set
    from probes.heads import HEADS
    from probes.runner import canonical_test_rows
    from stores import EmbeddingStore

    notes: list[str] = []

    def tell(msg: str) -> None:
        notes.append(msg)
        (say or logger.info)(msg)

    recipe = _recipe(protocol, head=head, features=features, head_options=head_options, thresholds=thresholds,
                     n_boot=n_boot)
    head, features, thresholds, n_boot = recipe.head, recipe.features, recipe.thresholds, recipe.n_boot
    if head not in HEADS:
        raise bad_option("head", f"one of {', '.join(HEADS)}", head)
    if thresholds not in ("val", "youden-test"):
        raise bad_option("thresholds", "'val' or 'youden-test'", thresholds)
    fractions = [float(f) for f in label_fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise bad_option("label_fraction", "numbers in (0, 1]", list(label_fractions))
    if seeds < 1:
        raise bad_option("seeds", "an integer >= 1", seeds)
    if n_boot < 1:
        raise bad_option("n_boot", "an integer >= 1", n_boot)
    if subgroups:
        from probes.subgroups import age_band_labels

        age_band_labels(age_bands)  # a bad band list is refused before any run is trained
    out = Path(out)
    if (out / "metrics.json").exists() and not overwrite and len(fractions) * seeds == 1:
        raise DataError(f"Run directory '{out}' already holds a finished run. Use --overwrite or another --out.")
    t_load = time.perf_counter()
    with EmbeddingStore.open(store, "r") as st:
        data = read_for_probe(st, store, features=features, labels=labels, seed=seed, split_unit=split_unit,
                              allow_partial=allow_partial, allow_leak=allow_leak, say=tell)
    load_s = time.perf_counter() - t_load
    tell(f"loaded {features}: {data.x.shape[0]} x {data.x.shape[1]} {data.x.dtype} ({data.x.nbytes / 2**20:,.1f} MiB)")
    test_rows = canonical_test_rows(data.ids, data.split)
    if test_rows.size == 0:
        raise DataError("The test split is empty. Check the store's split array.")
    groups, unit = bootstrap_groups(data, test_rows, bootstrap)
    plan_dir = Path(boot_dir) if boot_dir is not None else out.parent / ".embedkit-bootstrap"
    plan, plan_path = plan_for_test_set(plan_dir, data.ids[test_rows], n_boot=n_boot, seed=boot_seed, groups=groups)
    n_groups = plan.describe()["n_groups"]
    sizes = f"{n_groups} patients, {test_rows.size} images" if unit == "patients" else f"{test_rows.size} images"
    tell(f"bootstrap: {n_boot} resamples of test {unit} ({sizes}; --bootstrap {bootstrap})")
    dev = _device(device) if head in ("linear", "mlp") else "cpu"
    if recipe.protocol is not None and data.identity.get("preprocess") != recipe.protocol["preset"]:
        tell(f"warning: the {recipe.protocol['name']} protocol expects features extracted with --preprocess "
             f"{recipe.protocol['preset']}; this store used {data.identity.get('preprocess')!r}")
    meta = {"kind": "probe", "head": head, "features": features, "device": dev, "threshold_mode": thresholds,
            "youden_rule": recipe.youden_rule, "protocol": recipe.protocol, "head_options": recipe.head_options,
            "store": data.store_info, "provenance": data.identity, "split": data.split_info,
            "bootstrap": {**plan.describe(), "requested": bootstrap, "unit": unit}}
    n_runs = len(fractions) * seeds
    multi = n_runs > 1
    docs = []
    for i, (frac, s) in enumerate(((f, s) for f in fractions for s in range(seed, seed + seeds)), 1):
        run_dir = out / f"frac{frac:g}-seed{s}" if multi else out
        which = f"run {i}/{n_runs}: fraction {frac:g} seed {s}" if multi else f"fraction {frac:g}, seed {s}"
        if multi and (run_dir / "metrics.json").exists() and not overwrite:
            from probes.report import load_run

            tell(f"{which}: {run_dir} is done; skipping (resume)")
            done = load_run(run_dir).metrics
            if subgroups and "subgroups" not in done:
                done["subgroups"] = _subgroups(run_dir, store, age_bands, tell)
            docs.append(done)
            continue
        tell(f"{which}: probe {head} on {features} ...")
        report = None if progress is None else _with_run(progress, head, i, n_runs)
        docs.append(_one_run(data, run_dir, head=head, frac=frac, seed=s, plan=plan, plan_path=plan_path,
                             thresholds=thresholds, youden_rule=recipe.youden_rule, device=dev,
                             options=recipe.head_options, progress=report,
                             meta=meta, load_s=load_s, overwrite=overwrite, tell=tell))
        if subgroups:
            docs[-1]["subgroups"] = _subgroups(run_dir, store, age_bands, tell)
    summary = write_summary(out, docs) if multi else None
    return ProbeResult(out=out, runs=docs, summary=summary, notes=notes)


def _with_run(progress: Callable[[dict], None], head: str, run: int, runs: int) -> Callable[[dict], None]:
    """``progress`` with the head's name and the run's place (``run`` 1-based of ``runs``) added to each event."""
    return lambda ev: progress({**ev, "head": head, "run": run, "runs": runs})


def _subgroups(run_dir: Path, store: str | Path, age_bands: Sequence[float], tell) -> dict | None:
    """Subgroup metrics of a written run (also in its metrics.json and subgroups.csv)."""
    from embedkit.app.subgroups import add_subgroups

    block = add_subgroups(run_dir, store=store, age_bands=age_bands)
    axes = sorted((block or {}).get("axes", {}))
    tell(f"subgroups ({', '.join(axes) or 'no sex / age / view / dataset metadata in the store'}): "
         f"{run_dir / 'subgroups.csv'}")
    return block


def _device(device: str) -> str:
    from embedkit.devices import resolve_device

    return str(resolve_device(device, error=EmbedkitError))


def _one_run(data: ProbeData, run_dir: Path, *, head, frac, seed, plan, plan_path, thresholds, youden_rule, device,
             options, progress, meta, load_s, overwrite, tell) -> dict:
    from probes.metrics import SingleClassWarning
    from probes.report import write_run
    from probes.runner import run_probe

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SingleClassWarning)
        res = run_probe(data.x, data.y, split=data.split, ids=data.ids, head=head, label_names=data.label_names,
                        groups=data.units, label_fraction=frac, seed=seed, plan=plan, threshold_mode=thresholds,
                        youden_rule=youden_rule, device=device, head_options=options, progress=progress)
    for w in caught:
        if issubclass(w.category, SingleClassWarning):
            tell(f"warning: {w.message}")
    res.timings["load_s"] = load_s
    return write_run(run_dir, res, ids=data.ids, split=data.split, y=data.y, meta=meta, plan=plan,
                     plan_path=plan_path, overwrite=overwrite)


def write_summary(out: Path, docs: list[dict]) -> dict:
    """Mean and SD over seeds of the test mean AUROC, per label fraction (``summary.json`` and ``summary.csv``)."""
    from probes.report import to_json, write_csv

    def num(v) -> float:
        return float("nan") if v is None else float(v)

    rows = []
    for frac in sorted({d["label_fraction"] for d in docs}):
        vals = np.array([num(d["test"]["means"]["auroc"]["value"]) for d in docs if d["label_fraction"] == frac])
        maps = np.array([num(d["test"]["means"]["ap"]["value"]) for d in docs if d["label_fraction"] == frac])
        rows.append({"label_fraction": frac, "n_seeds": int(vals.size), "mean_auroc": float(np.mean(vals)),
                     "sd_auroc": float(np.std(vals, ddof=1)) if vals.size > 1 else 0.0,
                     "mean_ap": float(np.mean(maps))})
    summary = {"head": docs[0]["head"], "features": docs[0]["features"], "rows": rows,
               "runs": [{"label_fraction": d["label_fraction"], "seed": d["seed"],
                         "mean_auroc": d["test"]["means"]["auroc"]} for d in docs]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(to_json(summary) + "\n")
    write_csv(out / "summary.csv", list(rows[0]), rows)
    return summary
