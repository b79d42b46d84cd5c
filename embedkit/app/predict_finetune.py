"""Scores of a finetuned run (``model.safetensors``) on new data, for :func:`embedkit.app.predict.predict`.

The images are read exactly as the finetune read its own: :func:`embedkit.app.finetune_data.load_train_data` with
the run's resolution and preprocessing (``finetune.json``), so a manifest or ``ADAPTER:ROOT`` is cached once into
``OUT/images`` and an embedding store stands for the images its provenance names. The backbone is loaded from the
run's recorded model and refused when its weights' sha256 differs from the one the run trained.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def finetuned_scores(run: Path, metrics: dict, data: str, out: Path, *, device: str, batch_size: int, say):
    """:class:`embedkit.app.predict.Scored` of every row of ``data`` under the finetuned model of ``run``.

    Raises
    ------
    PredictError
        No ``model.safetensors`` / ``finetune.json``, or a backbone whose weights changed since the run.
    """
    from safetensors.torch import load_file

    from embedkit.app.finetune_data import load_train_data
    from embedkit.app.identity import run_identity
    from embedkit.app.predict import PredictError, Scored
    from embedkit.backbones import load_backbone
    from embedkit.devices import resolve_device
    from embedkit.extract.source import uint8_params
    from embedkit.finetune import Prepare, build_model
    from probes.finetune import predict as predict_logits

    for name in ("model.safetensors", "finetune.json"):
        if not (run / name).exists():
            raise PredictError(f"Finetune run '{run}' has no {name}; it did not finish. Re-run the finetune.")
    settings = json.loads((run / "finetune.json").read_text())["settings"]
    pre = settings["preprocess"]
    dev = resolve_device(device)
    bb = load_backbone(settings["model"], device=dev, precision="fp32")
    sha = bb.provenance().get("sha256")
    if settings.get("backbone_sha256") and sha != settings["backbone_sha256"]:
        raise PredictError(f"The backbone at '{settings['model']}' has other weights (sha256 {str(sha)[:12]}) than "
                           f"the run trained ({settings['backbone_sha256'][:12]}); restore the run's backbone.")
    out.mkdir(parents=True, exist_ok=True)
    # Evaluation only: any split (or none, then made by image) serves to pick the scored rows; leaks cannot bias it.
    td = load_train_data(str(data), res=int(settings["res"]), preset=pre["preset"], preprocess=uint8_params(pre),
                         run_dir=out, limit=None, split_seed=int(settings.get("split_seed", 0)),
                         log=lambda m: None if m.startswith("split:") else say(m),  # a made split is not used
                         split_unit="image", allow_leak=True, require_labels=False)
    st_prov = td.store_provenance or {}
    if td.store is not None:
        bb_name = (st_prov.get("backbone") or {}).get("name")
        say(f"the store's features ({bb_name} @{st_prov.get('resolution')} px) are not used: the finetuned model "
            f"reads the images the store names, at the run's {settings['res']} px")
    labels = list(metrics["labels"])
    net = build_model(bb, len(labels), pool=metrics["features"], mode=settings["mode"])
    net.load_state_dict(load_file(str(run / "model.safetensors")))
    net.to(dev)
    rows = np.flatnonzero(np.asarray(td.split).astype(str) != "")
    say(f"scoring {rows.size} images with the finetuned {bb.spec.name} ({settings['mode']}) @{settings['res']}")
    logits = predict_logits(net, td.images, rows, prepare=Prepare(pre.get("mean"), pre.get("std"), None),
                            batch_size=batch_size, device=dev)
    scores = np.full((len(td.ids), len(labels)), np.nan, dtype=np.float32)
    scores[rows] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    filled = np.zeros(len(td.ids), dtype=bool)
    filled[rows] = True
    prov = {"backbone": bb.provenance(), "resolution": settings["res"], "preprocess": pre, "dataset": td.spec}
    # The data's own split picks the scored rows (its test split, else every labelled row), as for a probe run;
    # a split load_train_data made up for data without one is no test split of the data.
    split = td.source_split if td.source_split is not None else np.full(len(td.ids), "", dtype=object)
    return Scored(ids=np.asarray(td.ids).astype(str), split=np.asarray(split).astype(str), filled=filled,
                  scores=scores, head_labels=labels, head=str(metrics.get("head")), features=str(metrics["features"]),
                  y_all=td.y if td.label_names else None, data_labels=list(td.label_names), patients=td.patients,
                  studies=None, identity=run_identity(prov, td.datasets), store_info=td.store,
                  meta_path=None if td.meta_path is None else Path(td.meta_path))
