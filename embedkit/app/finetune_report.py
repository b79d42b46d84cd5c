"""The files of a finished finetune run, in the probe's schema (so ``compare`` reads both kinds alike)."""
from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TRAIN_LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_mean_auroc", "lr", "img_per_s", "steps", "best")


def _atomic_text(path: Path, text: str) -> None:
    from probes.finetune import atomic_write

    atomic_write(path, lambda f: f.write(text.encode()))


def write_train_log(out: Path, log: list[dict], *, kept: int | None = None, select: str = "val-loss") -> None:
    """``train_log.csv`` (one row per epoch) and ``train_curve.png`` (losses and validation mean AUROC; ``kept``
    marks the epoch whose weights were kept, chosen by ``select``)."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TRAIN_LOG_COLUMNS), extrasaction="ignore")
    w.writeheader()
    for row in log:
        w.writerow(row)
    _atomic_text(out / "train_log.csv", buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] for r in log]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(ep, [r["train_loss"] for r in log], "o-", label="train loss")
    ax.plot(ep, [r["val_loss"] for r in log], "s-", label="val loss")
    ax.set(xlabel="epoch", ylabel="masked BCE (pos_weight)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax2 = ax.twinx()
    auc = np.array([r["val_mean_auroc"] for r in log], dtype=float)
    ax2.plot(ep, auc, "^--", color="tab:green", label="val mean AUROC")
    # An absolute AUROC axis: autoscaling draws a 0.007 change as a collapse.
    finite = auc[np.isfinite(auc)]
    ax2.set_ylim(min(0.5, float(finite.min()) - 0.02) if finite.size else 0.5, 1.0)
    ax2.set_ylabel("val mean AUROC")
    if kept is not None:
        ax.axvline(kept, color="grey", ls=":", lw=1, label=f"kept epoch {kept} ({select})")
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4,
              fontsize=7, frameon=False)
    ax.set_title("Finetuning: losses (left axis), validation mean AUROC (right axis)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "train_curve.png", dpi=110)
    plt.close(fig)


def finish_run(out: Path, net, td, result, *, prepare, cfg, device, env, settings: dict, backbone_provenance: dict,
               preprocess: dict, n_boot: int, boot_seed: int, bootstrap: str, boot_dir, train_s: float) -> dict:
    """Load the kept epoch's weights, score val and test, pick thresholds on val, evaluate test on the shared
    bootstrap plan and write every file; returns the ``metrics.json`` document (on every rank)."""
    import time

    from embedkit.app.identity import run_identity
    from embedkit.app.probe_data import bootstrap_groups
    from probes.bootstrap import plan_for_test_set
    from probes.evaluate import evaluate
    from probes.finetune import predict, save_weights
    from probes.metrics import SingleClassWarning, youden_thresholds
    from probes.report import PER_LABEL_COLUMNS, json_default, per_label_rows, plot_roc, write_csv
    from probes.report import label_hash, write_test_labels
    from probes.runner import canonical_test_rows

    net.load_state_dict(result.best_state)
    ids, y, split = td.ids, td.y, td.split
    test_rows = canonical_test_rows(ids, split)
    val_rows = np.flatnonzero(split == "val")
    rows = np.concatenate([val_rows, test_rows])
    t0 = time.perf_counter()
    logits = predict(net, td.images, rows, prepare=prepare, batch_size=cfg.batch_size, device=device,
                     precision=cfg.precision, rank=env.rank, world_size=env.world_size)
    predict_s = time.perf_counter() - t0
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    p_val, p_test = probs[: len(val_rows)], probs[len(val_rows):]
    thresholds = youden_thresholds(y[val_rows], p_val)
    # The probe's rule, by the probe's code: patients (split units) when the data has patient ids, else images.
    groups, boot_unit = bootstrap_groups(td, test_rows, bootstrap)
    plan_dir = Path(boot_dir) if boot_dir is not None else out.parent / ".embedkit-bootstrap"
    plan, plan_path = plan_for_test_set(plan_dir, ids[test_rows], n_boot=n_boot, seed=boot_seed, groups=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingleClassWarning)
        ev = evaluate(y[test_rows], p_test, plan=plan, thresholds=thresholds, threshold_mode="val",
                      label_names=td.label_names)
    summary = ev.to_dict()
    prov = {"backbone": backbone_provenance, "resolution": settings["res"], "preprocess": preprocess,
            "dataset": td.spec, "precision": settings["precision"],
            "embedkit_version": __import__("embedkit").__version__}
    identity = run_identity(prov, td.datasets)
    head = f"finetune-{settings['mode'].replace(':', '')}"
    doc = {
        "schema": "embedkit.finetune/1", "kind": "finetune", "head": head, "features": net.pool, "device": str(device),
        "threshold_mode": "val", "store": td.store,
        "provenance": identity,
        "split": {**td.split_info, "n_unused": int((split == "").sum())},
        "bootstrap": {**plan.describe(), "requested": bootstrap, "unit": boot_unit},
        "label_fraction": 1.0, "seed": settings["seed"], "labels": td.label_names,
        "chosen": {"epoch": result.best_epoch, "select": cfg.select, "val_loss": result.best_val_loss},
        "val_mean_auroc": result.best_val_auroc, "candidates": result.log, "history": result.log,
        "n": {"train": int((split == "train").sum()), "val": int(val_rows.size), "test": int(test_rows.size)},
        "thresholds": dict(zip(td.label_names, map(float, thresholds))),
        "test": summary, "mean_auroc": summary["means"]["auroc"],
        "pairing": {"test_ids_sha256": plan.ids_sha256,
                    "test_labels_sha256": label_hash(td.label_names, y[test_rows].astype(np.float64)),
                    "boot_matrix_sha256": plan.matrix_sha256,
                    "boot_key": plan.key, "plan_path": str(plan_path)},
        "timings": {"train_s": round(train_s, 4), "predict_s": round(predict_s, 4)},
        "finetune": {**settings, "pos_weight": result.pos_weight, "steps": result.steps,
                     "resumed_at": result.resumed_at, "store_provenance_backbone":
                         (td.store_provenance or {}).get("backbone", {}).get("name")},
    }
    if env.is_main:
        save_weights(out / "model.safetensors", net.state_dict(),
                     metadata={"pool": net.pool, "labels": json.dumps(td.label_names), "epoch": str(result.best_epoch),
                               "model": settings["model"], "res": str(settings["res"])})
        write_train_log(out, result.log, kept=result.best_epoch, select=cfg.select)
        write_csv(out / "per_label.csv", PER_LABEL_COLUMNS, per_label_rows(summary, td.label_names, identity))
        _write_predictions(out / "predictions.csv", ids[rows], split[rows], probs, td.label_names)
        write_test_labels(out / "test_labels.csv", ids[test_rows], y[test_rows], td.label_names)
        if ev.boot:
            np.savez(out / "bootstrap.npz", auroc=ev.boot["auroc"], ap=ev.boot["ap"])
        plot_roc(out / "roc.png", y[test_rows], p_test, td.label_names,
                 f"{identity.get('initialization')}/{identity.get('backbone')} @{settings['res']} — {head}")
        # metrics.json last: a run directory with metrics.json is complete.
        text = json.dumps(_nan_to_none(json.loads(json.dumps(doc, default=json_default))), indent=2,
                          allow_nan=False)
        _atomic_text(out / "metrics.json", text + "\n")
    return doc


def _write_predictions(path: Path, ids, split, probs, names) -> None:
    from probes.report import write_predictions

    write_predictions(path, ids, split, probs, names)


def _nan_to_none(v):
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    if hasattr(v, "item") and np.ndim(v) == 0:
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
