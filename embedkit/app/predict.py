"""``predict``: a trained probe head applied to another store or to new images -- external validation.

- **Data**: an embedding store is used as it is, after checking it was written like the run's own store (same
  backbone weights, resolution, preprocessing preset and resize, and the head's views with the head's dimension);
  any difference is refused by name. Anything else (manifest, ``ADAPTER:ROOT``, image cache) is embedded first with
  the run's own backbone and preprocessing, read from the provenance of the store the run was trained on, into
  ``OUT/embeddings.zarr`` (resumable: re-running continues it).
- **Labels** are matched by name after normalisation (case, ``_ - /`` and spaces) and a small synonym table
  (``Pleural Effusion`` = ``effusion``); no substring matching. Head labels the data lacks are not scored (their
  predictions are still written); data labels the head never learned are listed and ignored.
- **With labels**: the rows scored are the data's test split when it has one, else every labelled row; the output
  is a run directory like the probe's (``metrics.json`` with ``kind: predict``, ``per_label.csv``,
  ``predictions.csv``, ``test_labels.csv``, ``bootstrap.npz``, ``roc.png``, ``subgroups.csv``), with the run's own
  validation thresholds and a bootstrap plan of the new test set (patients when it has patient ids).
  **Without labels**: ``predictions.csv`` only.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedkit.errors import DataError, EmbedkitError

logger = logging.getLogger(__name__)

__all__ = ["PredictResult", "predict", "match_labels", "normalise_label"]

#: Spellings of one finding across datasets (normalised form -> canonical normalised form); after torchxrayvision's
#: label harmonisation (github.com/mlmed/torchxrayvision, ``default_pathologies``).
SYNONYMS = {
    "pleural effusion": "effusion",
    "airspace opacity": "lung opacity",
    "opacity": "lung opacity",
    "lesion": "lung lesion",
    "enlarged cardiomediastinum": "enlarged cardiomediastinum",
    "pleural thickening": "pleural thickening",
    "no findings": "no finding",
    "normal": "no finding",
}
STORE_FILES = ("embeddings.zarr",)


class PredictError(EmbedkitError):
    """The run cannot be applied to this data (another backbone, resolution, preset or view)."""


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` produced.

    Attributes
    ----------
    out : Path
    metrics : dict or None
        The ``metrics.json`` document (None without labels).
    matched : dict
        Head label -> data label.
    unmatched_head : list[str]
        Head labels the data lacks (predicted, not scored).
    unmatched_data : list[str]
        Data labels the head never learned (ignored).
    notes : list[str]
    """

    out: Path
    metrics: dict | None
    matched: dict[str, str]
    unmatched_head: list[str]
    unmatched_data: list[str]
    notes: list[str] = field(default_factory=list)


def normalise_label(name: str) -> str:
    """Case-folded, ``_ - /`` as spaces, single spaces, then the synonym table.

    >>> normalise_label("Pleural_Effusion"), normalise_label("pleural-effusion"), normalise_label("Effusion")
    ('effusion', 'effusion', 'effusion')
    """
    t = " ".join(str(name).casefold().replace("_", " ").replace("-", " ").replace("/", " ").split())
    return SYNONYMS.get(t, t)


def match_labels(head: Sequence[str], data: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """(head label -> data label, head labels unmatched, data labels unmatched), by normalised exact name.

    >>> match_labels(["Effusion", "Nodule"], ["pleural_effusion", "cardiomegaly"])
    ({'Effusion': 'pleural_effusion'}, ['Nodule'], ['cardiomegaly'])
    """
    by_norm: dict[str, str] = {}
    for d in data:
        by_norm.setdefault(normalise_label(d), d)
    matched = {h: by_norm[normalise_label(h)] for h in head if normalise_label(h) in by_norm}
    used = set(matched.values())
    return matched, [h for h in head if h not in matched], [d for d in data if d not in used]


def _is_store(path: str | Path) -> bool:
    """True for a finished embedding store (an image cache, a manifest or ``ADAPTER:ROOT`` is embedded first)."""
    from stores import EmbeddingStore
    from stores.errors import StoreError

    if not Path(path).is_dir():
        return False
    try:
        return EmbeddingStore.check_path(path) == "complete"
    except StoreError:
        return False


def _training_provenance(metrics: dict) -> dict | None:
    """The full provenance of the store the run was trained on, when that store still exists."""
    from stores import EmbeddingStore

    path = (metrics.get("store") or {}).get("path")
    if not path or not Path(path).exists():
        return None
    with EmbeddingStore.open(path, "r") as st:
        return st.provenance


def check_compatible(run_identity: dict, train_prov: dict | None, st, store: str | Path, *,
                     features: str, in_dim: int) -> None:
    """Refuse a store written differently from the run's, naming the first difference.

    Raises
    ------
    PredictError
        Another backbone (weights), resolution, preprocessing preset or resize, a missing view, or another
        feature dimension.
    """
    from embedkit.app.identity import run_identity as identity_of

    new = identity_of(st.provenance)
    old = run_identity
    checks = [("backbone", f"{old.get('backbone_name')} (sha256 {str(old.get('backbone_sha256'))[:12]})",
               f"{new.get('backbone_name')} (sha256 {str(new.get('backbone_sha256'))[:12]})",
               (old.get("backbone_sha256") or old.get("backbone_name"))
               != (new.get("backbone_sha256") or new.get("backbone_name"))),
              ("resolution", old.get("image_size"), new.get("image_size"), old.get("image_size") != new.get("image_size")),
              ("preprocessing preset", old.get("preprocess"), new.get("preprocess"),
               old.get("preprocess") != new.get("preprocess"))]
    if train_prov is not None:
        r_old = (train_prov.get("preprocess") or {}).get("resize")
        r_new = (st.provenance.get("preprocess") or {}).get("resize")
        checks.append(("resize", r_old, r_new, r_old != r_new))
    for what, a, b, differs in checks:
        if differs:
            raise PredictError(f"Store '{store}' was written with {what} {b}; the run was trained on {a}. "
                               "Extract the data with the run's settings (pass images instead of a store and "
                               "predict embeds them for you).")
    views = features.split("+")
    missing = [v for v in views if v not in st.views]
    if missing:
        raise PredictError(f"Store '{store}' lacks the view(s) {', '.join(missing)} the head was trained on "
                           f"({features}); it has {', '.join(st.views)}.")
    dim = sum(int(st.views[v]) for v in views)
    if dim != in_dim:
        raise PredictError(f"Store '{store}' has {features} of dimension {dim}; the head expects {in_dim}.")


def _check_image_source(data: str) -> None:
    """Refuse, before anything is written, data that is neither a store nor an existing image source."""
    from embedkit.data.adapters import parse_data

    src = parse_data(data)  # an unknown adapter is refused here, by name
    if not src.root.exists():
        what = f"The root of '{data}'" if src.adapter else f"'{data}'"
        raise DataError(f"{what} does not exist. --data takes an embedding store, a manifest CSV, ADAPTER:ROOT or "
                        "an image cache.")


def _embed(data: str, out: Path, metrics: dict, train_prov: dict | None, *, features: str, model: str | None,
           batch_size: int, device: str, say) -> Path:
    """Embed images with the run's backbone and preprocessing into ``out/embeddings.zarr``."""
    from embedkit.api import extract

    ident = metrics.get("provenance") or {}
    bb = (train_prov or {}).get("backbone") or {}
    model = model or bb.get("path") or bb.get("id") or ident.get("backbone_id")
    if not model:
        why = ("The run's training store is gone and the run records no hub id" if train_prov is None else
               f"The run's backbone {bb.get('name')!r} records no hub id or path")
        raise PredictError(f"{why}, so the images cannot be embedded like the training data. Pass --model with the "
                           "backbone the run used.")
    pre = (train_prov or {}).get("preprocess") or {}
    target = out / "embeddings.zarr"
    say(f"embedding {data} with {model} @{ident.get('image_size')} (preset {ident.get('preprocess')}) -> {target}")
    extract(model, data, target, res=int(ident["image_size"]), features=sorted(set(features.split("+"))),
            preprocess=ident.get("preprocess") or "model", resize=pre.get("resize", "pad"),
            dtype=(train_prov or {}).get("dtype", "float16"), batch_size=batch_size, device=device,
            workers=0)
    return target


def predict(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    n_boot: int | None = None,
    boot_seed: int = 0,
    bootstrap: str = "auto",
    rows: str = "auto",
    age_bands: Sequence[float] = (0, 40, 60, 80),
    batch_size: int = 32,
    device: str = "auto",
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
) -> PredictResult:
    """Apply the head of probe run RUN to DATA; with labels, evaluate it there (external validation).

    Parameters
    ----------
    run : str or Path
        A probe run directory (``metrics.json`` + ``head.safetensors``).
    data : str or Path
        An embedding store, or images (manifest CSV, ``ADAPTER:ROOT``, image cache) to embed with the run's backbone.
    out : str or Path
        Output directory.
    model : str, optional
        The backbone to embed images with, when the run's training store (which records it) is gone.
    n_boot : int, optional
        Bootstrap resamples (default: the run's).
    boot_seed : int
    bootstrap : {"auto", "patients", "images"}
    rows : {"auto", "test", "all"}
        Rows scored: ``auto`` = the test split when the data has one, else all labelled rows.
    age_bands : sequence of float
        Lower bounds of the subgroup age bands.
    batch_size, device : embedding options (images only).
    overwrite : bool
        Replace a finished output.
    say : callable(str), optional

    Returns
    -------
    PredictResult

    Raises
    ------
    PredictError, DataError, ProbeError

    Examples
    --------
    >>> res = predict("runs/nih-linear", "runs/chexpert.zarr", "runs/nih-linear-on-chexpert")  # doctest: +SKIP
    >>> res.metrics["mean_auroc"]["value"], res.unmatched_head                                # doctest: +SKIP
    """
    from probes.report import load_run

    notes: list[str] = []

    def tell(msg: str) -> None:
        notes.append(msg)
        (say or logger.info)(msg)

    if rows not in ("auto", "test", "all"):
        raise EmbedkitError(f"The 'rows' parameter of predict must be 'auto', 'test' or 'all'. Got {rows!r}.")
    out = Path(out)
    if (out / "metrics.json").exists() or (out / "predictions.csv").exists():
        if not overwrite:
            raise DataError(f"'{out}' already holds predictions. Use --overwrite or another --out.")
    record = load_run(run)
    metrics = record.metrics
    t0 = time.perf_counter()
    created = not out.exists()
    try:
        if metrics.get("kind") == "finetune":
            from embedkit.app.predict_finetune import finetuned_scores

            sc = finetuned_scores(Path(run), metrics, str(data), out, device=device, batch_size=batch_size,
                                  say=tell)
        else:
            sc = _probe_scores(Path(run), metrics, data, out, model=model, batch_size=batch_size, device=device,
                               say=tell)
    except BaseException:
        # Data that could not be read leaves no empty OUT behind; begun embeddings are kept (a re-run resumes them).
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    sc.seconds = time.perf_counter() - t0
    if not sc.filled.all():
        tell(f"{int((~sc.filled).sum())} of {len(sc.ids)} rows have no features or image (unreadable or pending); "
             "left out")
    matched, head_only, data_only = match_labels(sc.head_labels, sc.data_labels)
    if head_only:
        tell(f"head labels without a match in the data (predicted, not scored): {', '.join(head_only)}")
    if data_only:
        tell(f"data labels the head never learned (ignored): {', '.join(data_only)}")
    if sc.y_all is None or not matched:
        from probes.report import write_predictions

        out.mkdir(parents=True, exist_ok=True)
        keep = np.flatnonzero(sc.filled)
        write_predictions(out / "predictions.csv", sc.ids[keep], sc.split[keep], sc.scores[keep], sc.head_labels)
        tell(f"no labels to score against: wrote {out / 'predictions.csv'} ({keep.size} rows)")
        return PredictResult(out, None, matched, head_only, data_only, notes)
    return _evaluate(out, sc, metrics, matched, head_only, data_only, run=Path(run), n_boot=n_boot,
                     boot_seed=boot_seed, bootstrap=bootstrap, rows=rows, age_bands=age_bands, tell=tell, notes=notes)


@dataclass
class Scored:
    """Scores of every data row and what evaluating them needs (from a store, or from images for a finetune)."""

    ids: np.ndarray  # (N,) str
    split: np.ndarray  # (N,) str
    filled: np.ndarray  # (N,) bool: rows that were scored
    scores: np.ndarray  # (N, K) probabilities, NaN where not filled
    head_labels: list[str]
    head: str
    features: str
    y_all: np.ndarray | None  # (N, L) data labels
    data_labels: list[str]
    patients: np.ndarray | None
    studies: np.ndarray | None
    identity: dict
    store_info: dict | None
    meta_path: Path | None  # an embedding store or image cache holding the rows' metadata
    seconds: float = 0.0


def _probe_scores(run: Path, metrics: dict, data, out: Path, *, model, batch_size, device, say) -> Scored:
    from embedkit.app.identity import run_identity
    from probes.head_io import load_head
    from stores import EmbeddingStore

    head = load_head(run)
    train_prov = _training_provenance(metrics)
    if _is_store(data):
        store = Path(data)
    else:
        _check_image_source(str(data))
        out.mkdir(parents=True, exist_ok=True)
        store = _embed(str(data), out, metrics, train_prov, features=head.features, model=model,
                       batch_size=batch_size, device=device, say=say)
    with EmbeddingStore.open(store, "r") as st:
        check_compatible(metrics.get("provenance") or {}, train_prov, st, store, features=head.features,
                         in_dim=head.in_dim)
        filled = np.asarray(st.filled, dtype=bool)
        ids = np.asarray(st.ids).astype(str)
        x = st.load(head.features, dtype=None)
        split = np.asarray(st.split).astype(str) if st.split is not None else np.full(len(ids), "", dtype=object)
        sc = Scored(ids=ids, split=split, filled=filled, scores=np.full((len(ids), len(head.labels)), np.nan,
                                                                        dtype=np.float32),
                    head_labels=list(head.labels), head=head.kind, features=head.features,
                    y_all=None if st.labels is None else np.asarray(st.labels, dtype=np.float32),
                    data_labels=list(st.label_names or []), patients=st.metadata("patient_id"),
                    studies=st.metadata("study_id"), identity=run_identity(st.provenance, st.metadata("dataset")),
                    store_info={"path": str(Path(store).resolve()), "fingerprint": st.fingerprint,
                                "n_rows": st.n_rows}, meta_path=Path(store))
    sc.scores[filled] = head.predict_proba(x[filled])
    return sc


def _evaluate(out: Path, sc: Scored, metrics: dict, matched, head_only, data_only, *, run: Path, n_boot, boot_seed,
              bootstrap, rows, age_bands, tell, notes) -> PredictResult:
    import warnings

    from embedkit.app.subgroups import write_subgroups
    from embedkit.data.splits import split_units
    from probes.bootstrap import plan_for_test_set
    from probes.evaluate import evaluate
    from probes.metrics import SingleClassWarning
    from probes.report import write_run
    from probes.runner import RunResult
    from probes.subgroups import subgroup_metrics

    names = list(matched)
    ids, split, filled, patients, studies = sc.ids, sc.split, sc.filled, sc.patients, sc.studies
    store = sc.meta_path
    y = sc.y_all[:, [sc.data_labels.index(matched[h]) for h in names]]
    s = sc.scores[:, [sc.head_labels.index(h) for h in names]]
    has_test = bool(((split == "test") & filled).any())
    use_test = rows == "test" or (rows == "auto" and has_test)
    if rows == "test" and not has_test:
        raise DataError(f"Store '{store}' has no test split; use --rows all (rows='all') to score every labelled row.")
    scored = filled & (split == "test" if use_test else True) & ~np.isnan(y).all(axis=1)
    sel = np.flatnonzero(scored)
    test_rows = sel[np.argsort(ids[sel], kind="stable")]
    if test_rows.size == 0:
        raise DataError(f"Store '{store}' has no labelled rows to score.")
    tell(f"scoring {test_rows.size} rows ({'the test split' if use_test else 'all labelled rows'}) on "
         f"{len(names)} matched labels")
    n_boot = int(n_boot or (metrics.get("bootstrap") or {}).get("n_boot") or 1000)
    groups, unit = None, "images"
    if bootstrap not in ("auto", "patients", "images"):
        raise EmbedkitError(f"The 'bootstrap' parameter of predict must be 'auto', 'patients' or 'images'. "
                            f"Got {bootstrap!r}.")
    has_patients = patients is not None and any(str(p).strip() not in ("", "None", "nan") for p in patients)
    if bootstrap == "patients" and not has_patients:
        raise DataError("--bootstrap patients needs the data's patient_id metadata; use --bootstrap images.")
    if bootstrap != "images" and has_patients:
        units, _ = split_units(patients, studies, ids)
        groups, unit = np.asarray(units).astype(str)[test_rows], "patients"
    plan, plan_path = plan_for_test_set(out.parent / ".embedkit-bootstrap", ids[test_rows], n_boot=n_boot,
                                        seed=boot_seed, groups=groups)
    thr = np.array([float((metrics.get("thresholds") or {}).get(h, 0.5)) for h in names])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SingleClassWarning)
        ev = evaluate(y[test_rows], s[test_rows], plan=plan, thresholds=thr, threshold_mode="val",
                      label_names=names, youden_rule=metrics.get("youden_rule") or "ge")
    for w in caught:
        if issubclass(w.category, SingleClassWarning):
            tell(f"warning: {w.message}")
    axes = _axes(store, list(ids[test_rows]), age_bands)
    sub = subgroup_metrics(y[test_rows], s[test_rows], axes, label_names=names, plan=plan)
    sub["age_bands"] = [float(b) for b in age_bands]
    # predictions.csv holds the rows with features; write_run indexes them through test_rows, so renumber.
    keep = np.flatnonzero(filled)
    renum = np.full(len(ids), -1)
    renum[keep] = np.arange(keep.size)
    res = RunResult(head=None, label_names=names, label_fraction=metrics.get("label_fraction", 1.0),
                    seed=metrics.get("seed", 0), n_train=0, n_val=0, n_test=int(test_rows.size),
                    test_rows=renum[test_rows], scores=s[keep], thresholds=thr, evaluation=ev,
                    timings={"score_s": sc.seconds})
    trained_on = metrics.get("provenance") or {}
    meta = {"kind": "predict", "head": sc.head, "features": sc.features, "threshold_mode": "val (the run's)",
            "youden_rule": metrics.get("youden_rule") or "ge", "store": sc.store_info, "provenance": sc.identity,
            "evaluation_type": f"external:{trained_on.get('dataset')}",
            "trained": {"run": str(run.resolve()), "dataset": trained_on.get("dataset"),
                        "store": metrics.get("store"), "mean_auroc": metrics.get("mean_auroc")},
            "label_matching": {"matched": matched, "head_only": head_only, "data_only": data_only},
            "split": {"rows": "test split" if use_test else "all labelled rows", "n_scored": int(test_rows.size)},
            "bootstrap": {**plan.describe(), "requested": bootstrap, "unit": unit}, "subgroups": sub,
            "notes": notes}
    # write_run replaces its whole directory; OUT may also hold embeddings.zarr, so write beside it and move the
    # files in, metrics.json last (a directory with metrics.json is complete).
    staging = out / ".run"
    shutil.rmtree(staging, ignore_errors=True)
    doc = write_run(staging, res, ids=ids[keep], split=split[keep], y=y[keep], meta=meta, plan=plan,
                    plan_path=plan_path.resolve())
    write_subgroups(staging / "subgroups.csv", sub)
    for f in sorted(staging.iterdir(), key=lambda p: p.name == "metrics.json"):
        os.replace(f, out / f.name)
    staging.rmdir()
    m = doc["mean_auroc"]
    tell(f"external mean AUROC {_num(m['value'])} [{_num(m['ci_low'])}, {_num(m['ci_high'])}] -> {out}")
    return PredictResult(out, doc, matched, head_only, data_only, notes)


def _axes(path: Path | None, ids: list[str], age_bands) -> dict:
    """Subgroup levels of ``ids`` from the per-row metadata of an embedding store or image cache (none without)."""
    from embedkit.app.subgroups import store_axes

    if path is None:
        return {}
    from stores import EmbeddingStore
    from stores.image_cache import ImageCache

    opener = ImageCache.open if ImageCache.is_cache(path) else EmbeddingStore.open
    st = opener(path)
    try:
        return store_axes(st, ids, age_bands=age_bands)
    finally:
        close = getattr(st, "close", None)
        if close:
            close()


def _num(v) -> str:
    return "nan" if v is None or v != v else f"{v:.4f}"
