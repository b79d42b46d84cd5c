"""``embedkit probe`` (heads on stored features, test metrics with bootstrap CIs) and ``embedkit compare``.

Bootstrap plans live in ``<parent of --out>/.embedkit-bootstrap/`` unless ``--boot-dir`` says otherwise: runs written
side by side (the usual ``runs/`` folder) share one plan per test set. A plan is content-addressed by the test ids,
``--n-boot``, ``--boot-seed`` and ``--bootstrap``, so a run elsewhere regenerates the identical matrix; ``compare``
checks the hashes recorded in each ``metrics.json`` rather than file locations.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from embedkit.cli._common import bad_parameter, out_console, print_json


def _parse_fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad_parameter("label-fraction", "probe", "comma-separated numbers in (0, 1]", text) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise bad_parameter("label-fraction", "probe", "comma-separated numbers in (0, 1]", text)
    return values


def _resolve_split(st, patients, *, seed: int, log) -> tuple:
    """The store's split (a validation split carved from train if absent), or a recorded patient-level split."""
    import numpy as np

    from probes.splits import carve_val, check_no_leak, patient_split

    split = st.split
    if split is None or not np.isin(np.asarray(split).astype(str), ("train", "test")).any():
        split = patient_split(st.n_rows, groups=patients, seed=seed)
        source = f"made: patient-level, seed {seed}, fractions 0.7/0.1/0.2"
        log(f"store has no split; {source}")
    else:
        split = np.asarray(split).astype(str)
        source = "store"
        if not (split == "val").any():
            split = carve_val(split, groups=patients, seed=seed)
            source = f"store; val carved from 10% of train patients (seed {seed})"
            log(f"store split has no 'val'; {source}")
    check_no_leak(split, patients)
    return split, source


def _read_store(st, store, *, features: str, labels: str | None, seed: int, log):
    """Features, labels, ids, patients and the split of a store, checked against the options."""
    import numpy as np

    from embedkit.errors import DataError

    views = features.split("+")
    unknown = [v for v in views if v not in st.views]
    if unknown:
        raise bad_parameter("features", "probe", f"store views joined by '+' ({', '.join(st.views)})", features)
    if st.labels is None or not st.label_names:
        raise DataError(f"Store '{store}' has no labels. Re-extract from a manifest with label columns.")
    names = list(st.label_names)
    cols = list(range(len(names)))
    if labels:
        wanted = [s.strip() for s in labels.split(",") if s.strip()]
        missing = [w for w in wanted if w not in names]
        if missing:
            raise bad_parameter("labels", "probe", f"labels of the store ({', '.join(names)})", labels)
        cols = [names.index(w) for w in wanted]
        names = wanted
    y = np.asarray(st.labels, dtype=np.float32)[:, cols]
    ids = np.asarray(st.ids).astype(str)
    patients = st.metadata("patient_id")
    patients = None if patients is None else np.asarray(patients).astype(str)
    split, split_source = _resolve_split(st, patients, seed=seed, log=log)
    filled = np.asarray(st.filled, dtype=bool)
    if not filled.all():
        log(f"{int((~filled).sum())} rows have no features (unreadable or not extracted); they are left out")
        split = np.where(filled, split, "")
    # The store's dtype (float16 by default) is kept: the heads convert bounded chunks when they use them, so an
    # 800k x 4096 float16 store costs 6.5 GB here instead of 13 GB (plus copies) as float32.
    x = st.load(features, dtype=None)
    store_info = {"path": str(Path(store).resolve()), "fingerprint": st.fingerprint, "n_rows": st.n_rows}
    return x, y, names, ids, patients, split, split_source, filled, store_info, st.provenance


def _provenance_summary(prov: dict) -> dict:
    from probes.report import describe_provenance

    info = describe_provenance(prov)
    bb = prov.get("backbone") or {}
    info.update({"backbone_id": bb.get("id"), "backbone_sha256": bb.get("sha256"), "source": bb.get("source"),
                 "preprocess": (prov.get("preprocess") or {}).get("preset"), "store_dtype": prov.get("dtype"),
                 "precision": prov.get("precision"), "dataset_spec": (prov.get("dataset") or {}).get("spec"),
                 "embedkit_version": prov.get("embedkit_version")})
    return info


def _fmt(v, digits: int = 4) -> str:
    return "nan" if v is None or v != v else f"{v:.{digits}f}"


def _print_run_table(doc: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{doc['head']} on {doc['features']} (fraction {doc['label_fraction']}, seed {doc['seed']})")
    for col in ("label", "AUROC", "95% CI", "AP", "threshold"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for label, row in doc["test"]["per_label"].items():
        a = row["auroc"]
        t.add_row(label, _fmt(a["value"]), f"[{_fmt(a['ci_low'])}, {_fmt(a['ci_high'])}]",
                  _fmt(row["ap"]["value"]), _fmt(row["threshold"], 3))
    m, p = doc["test"]["means"]["auroc"], doc["test"]["means"]["ap"]
    t.add_row("mean", _fmt(m["value"]), f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]", _fmt(p["value"]), "",
              style="bold")
    out_console().print(t)


def register(app: typer.Typer) -> None:
    """Add ``probe`` and ``compare``."""

    @app.command("probe")
    def probe_cmd(
        store: Path = typer.Argument(..., help="Embedding store (.zarr) written by 'embedkit extract'."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
        head: str = typer.Option("linear", "--head",
                                 help="linear | mlp | knn | sklearn (sklearn: float32 reference, small stores only)."),
        features: str = typer.Option("cls", "--features",
                                     help="A store view or a '+' concatenation (cls+mean_patch)."),
        labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated subset of the store's labels."),
        label_fraction: str = typer.Option("1", "--label-fraction",
                                           help="Fractions of training patients, e.g. 0.01,0.1,1."),
        seeds: int = typer.Option(1, "--seeds", min=1, help="Repeated runs with seeds seed, seed+1, ..."),
        n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples of the test set."),
        bootstrap: str = typer.Option("images", "--bootstrap", help="Resample 'images' or 'patients' (cluster)."),
        boot_seed: int = typer.Option(0, "--boot-seed",
                                      help="Seed of the bootstrap plan (keep it fixed to pair runs)."),
        boot_dir: Optional[Path] = typer.Option(None, "--boot-dir",
                                                help="Where bootstrap plans are kept [<out>/../.embedkit-bootstrap]."),
        thresholds: str = typer.Option("val", "--thresholds",
                                       help="'val' (Youden on validation) or 'youden-test' (reference study)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (linear and mlp heads)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the head, the subsample and a made split."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in --out."),
        json_out: bool = typer.Option(False, "--json", help="Print the metrics as one JSON document."),
    ) -> None:
        """Train a probe head on stored features and evaluate it on the test split with bootstrap CIs."""

        from embedkit.errors import DataError
        from probes.bootstrap import plan_for_test_set
        from probes.heads import HEADS
        from probes.metrics import SingleClassWarning
        from probes.report import write_run
        from probes.runner import canonical_test_rows, run_probe
        from stores import EmbeddingStore

        if head not in HEADS:
            raise bad_parameter("head", "probe", f"one of {', '.join(HEADS)}", head)
        if bootstrap not in ("images", "patients"):
            raise bad_parameter("bootstrap", "probe", "'images' or 'patients'", bootstrap)
        if thresholds not in ("val", "youden-test"):
            raise bad_parameter("thresholds", "probe", "'val' or 'youden-test'", thresholds)
        fractions = _parse_fractions(label_fraction)

        def log(msg: str) -> None:
            if not json_out:
                typer.echo(msg, err=True)

        t_load = time.perf_counter()
        with EmbeddingStore.open(store, "r") as st:
            x, y, names, ids, patients, split, split_source, filled, store_info, prov = _read_store(
                st, store, features=features, labels=labels, seed=seed, log=log)
        load_s = time.perf_counter() - t_load
        log(f"loaded {features}: {x.shape[0]} x {x.shape[1]} {x.dtype} ({x.nbytes / 2**20:,.1f} MiB)")

        test_rows = canonical_test_rows(ids, split)
        if test_rows.size == 0:
            raise DataError("The test split is empty. Check the store's split array.")
        groups = None if bootstrap == "images" else (patients[test_rows] if patients is not None else None)
        if bootstrap == "patients" and patients is None:
            raise DataError("--bootstrap patients needs the store's patient_id metadata; use --bootstrap images.")
        plan_dir = boot_dir or (out.parent / ".embedkit-bootstrap")
        plan, plan_path = plan_for_test_set(plan_dir, ids[test_rows], n_boot=n_boot, seed=boot_seed, groups=groups)

        from probes._common import resolve_device

        dev = str(resolve_device(device)) if head in ("linear", "mlp") else "cpu"
        meta = {
            "head": head, "features": features, "device": dev, "threshold_mode": thresholds,
            "store": store_info,
            "provenance": _provenance_summary(prov),
            "split": {"source": split_source, "n_unfilled": int((~filled).sum())},
            "bootstrap": plan.describe(),
        }
        multi = len(fractions) * seeds > 1
        docs = []
        for frac in fractions:
            for s in range(seed, seed + seeds):
                run_dir = out / f"frac{frac:g}-seed{s}" if multi else out
                if multi and (run_dir / "metrics.json").exists() and not overwrite:
                    log(f"{run_dir} is done; skipping (resume)")
                    from probes.report import load_run

                    docs.append(load_run(run_dir).metrics)
                    continue
                log(f"probe {head} on {features}: fraction {frac:g}, seed {s} ...")
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", SingleClassWarning)
                    res = run_probe(x, y, split=split, ids=ids, head=head, label_names=names, groups=patients,
                                    label_fraction=frac, seed=s, plan=plan, threshold_mode=thresholds, device=dev)
                for w in caught:
                    if issubclass(w.category, SingleClassWarning):
                        typer.echo(f"warning: {w.message}", err=True)
                res.timings["load_s"] = load_s
                doc = write_run(run_dir, res, ids=ids, split=split, y=y, meta=meta, plan=plan,
                                plan_path=plan_path, overwrite=overwrite)
                docs.append(doc)
                if not json_out:
                    _print_run_table(doc)
        if multi:
            summary = _write_summary(out, docs)
            if json_out:
                print_json(summary)
            else:
                _print_summary(summary)
        elif json_out:
            print_json(docs[0])

    @app.command("compare")
    def compare_cmd(
        runs: List[Path] = typer.Argument(..., help="Run directories written by 'embedkit probe'."),
        reference: Optional[Path] = typer.Option(None, "--reference",
                                                 help="Run the others are tested against [the first]."),
        out: Optional[Path] = typer.Option(None, "--out",
                                           help="Write compare.json, compare.csv, per_label_deltas.csv, forest.png."),
        json_out: bool = typer.Option(False, "--json", help="Print the comparison as one JSON document."),
    ) -> None:
        """Mean AUROC [95% CI] per run, paired bootstrap tests against a reference, per-label deltas."""
        import json

        from probes.report import compare_runs, forest_plot, json_default, load_run, write_csv

        records = [load_run(p) for p in _expand_runs(runs)]
        ref = load_run(reference) if reference is not None else None
        if ref is not None and all(r.path.resolve() != ref.path.resolve() for r in records):
            records.insert(0, ref)
        result = compare_runs(records, reference=ref)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "compare.json").write_text(json.dumps(result, indent=2, default=json_default) + "\n")
            cols = ["run", "dataset", "initialization", "backbone", "image_size", "head", "features",
                    "label_fraction", "seed", "auroc", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high",
                    "p_run_le_ref", "p_ref_le_run", "p_two_sided", "is_reference"]
            write_csv(out / "compare.csv", cols, result["runs"])
            if result["per_label"]:
                write_csv(out / "per_label_deltas.csv", list(result["per_label"][0]), result["per_label"])
            forest_plot(out / "forest.png", result["runs"])
        if json_out:
            print_json(result)
            return
        _print_compare(result)


def _expand_runs(paths) -> list[Path]:
    """A directory of sub-runs (multi-fraction / multi-seed probe output) stands for its sub-runs."""
    out = []
    for p in paths:
        p = Path(p)
        if (p / "metrics.json").exists() or not p.is_dir():
            out.append(p)
        else:
            subs = sorted(d for d in p.iterdir() if (d / "metrics.json").exists())
            out.extend(subs or [p])
    return out


def _write_summary(out: Path, docs: list[dict]) -> dict:
    """Mean and SD over seeds of the test mean AUROC, per label fraction (summary.json and summary.csv)."""
    import json

    import numpy as np

    from probes.report import json_default, write_csv

    rows = []
    for frac in sorted({d["label_fraction"] for d in docs}):
        vals = np.array([d["test"]["means"]["auroc"]["value"] for d in docs if d["label_fraction"] == frac])
        maps = np.array([d["test"]["means"]["ap"]["value"] for d in docs if d["label_fraction"] == frac])
        rows.append({"label_fraction": frac, "n_seeds": int(vals.size), "mean_auroc": float(np.mean(vals)),
                     "sd_auroc": float(np.std(vals, ddof=1)) if vals.size > 1 else 0.0,
                     "mean_ap": float(np.mean(maps))})
    summary = {"head": docs[0]["head"], "features": docs[0]["features"], "rows": rows,
               "runs": [{"label_fraction": d["label_fraction"], "seed": d["seed"],
                         "mean_auroc": d["test"]["means"]["auroc"]} for d in docs]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default) + "\n")
    write_csv(out / "summary.csv", list(rows[0]), rows)
    return summary


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{summary['head']} on {summary['features']}: test mean AUROC over seeds")
    for col in ("label fraction", "seeds", "mean AUROC", "SD", "mAP"):
        t.add_column(col, justify="right")
    for r in summary["rows"]:
        t.add_row(f"{r['label_fraction']:g}", str(r["n_seeds"]), _fmt(r["mean_auroc"]), _fmt(r["sd_auroc"]),
                  _fmt(r["mean_ap"]))
    out_console().print(t)


def _print_compare(result: dict) -> None:
    from rich.table import Table

    t = Table(title=f"Mean AUROC [95% CI]; paired bootstrap against {result['reference']}")
    for col in ("run", "init/backbone", "res", "head", "mean AUROC [95% CI]", "Δ vs ref [95% CI]", "p (paired)"):
        t.add_column(col)
    for r in result["runs"]:
        delta = "reference" if r["is_reference"] else (
            f"{r['delta']:+.4f} [{_fmt(r['delta_ci_low'])}, {_fmt(r['delta_ci_high'])}]")
        p = "" if r["is_reference"] else _fmt(r["p_two_sided"], 3)
        t.add_row(r["run"], f"{r['initialization']}/{r['backbone']}", str(r["image_size"]), str(r["head"]),
                  f"{_fmt(r['auroc'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]", delta, p)
    out_console().print(t)
