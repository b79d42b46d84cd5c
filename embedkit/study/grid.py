"""The study grid: stages (image cache, store), cells (one run per dataset x resolution x backbone x arm, plus
external-validation cells), where each lives under the study folder, its fingerprint and its state.

A fingerprint is the sha256 of the resolved parameters of a stage *and of the stages it reads*, so changing a
dataset's split rule re-does its caches, stores and every run on them, and nothing else. A stage is done when its
marker ``DIR/work/done/<key>.json`` holds the current fingerprint (the marker is written after the stage finished);
deciding that needs no heavy import, which is what makes a finished study's re-run take seconds.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.study.config import Arm, Backbone, Dataset, StudyConfig

STATES = ("done", "todo", "partial", "stale", "excluded", "failed")


def fingerprint(doc: dict) -> str:
    """sha256 of a JSON document with sorted keys (the identity of a stage or cell)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Stage:
    """One unit of work: ``kind`` in cache / extract / run / external; ``path`` is what it writes."""

    kind: str
    key: str  # readable id, also the marker's file name
    path: Path
    params: dict
    deps: tuple[Stage, ...] = ()
    dataset: str = ""
    resolution: int = 0
    backbone: str = ""
    arm: str = ""
    test_dataset: str = ""
    fp: str = field(default="", compare=False)

    @property
    def fingerprint(self) -> str:
        return self.fp


def _stage(kind: str, key: str, path: Path, params: dict, deps: tuple[Stage, ...] = (), **names) -> Stage:
    fp = fingerprint({"kind": kind, "params": params, "deps": [d.fp for d in deps]})
    return Stage(kind, key, path, params, deps, fp=fp, **names)


@dataclass
class Grid:
    """Every stage of a study, in run order, and where the study writes."""

    config: StudyConfig
    out: Path
    caches: dict[tuple[str, int], Stage]
    stores: dict[tuple[str, int, str], Stage]
    cells: list[Stage]

    @property
    def done_dir(self) -> Path:
        return self.out / "work" / "done"

    def marker(self, stage: Stage) -> Path:
        return self.done_dir / f"{stage.key.replace('/', '__')}.json"

    def state(self, stage: Stage) -> str:
        """``done`` (marker matches), ``stale`` (marker of other settings), ``partial`` (output begun), ``todo``."""
        m = self.marker(stage)
        if m.exists():
            try:
                fp = json.loads(m.read_text()).get("fingerprint")
            except (OSError, ValueError):
                fp = None
            if fp == stage.fp:
                return "done"
            return "stale"
        return "partial" if stage.path.exists() else "todo"

    def mark_done(self, stage: Stage, extra: dict | None = None) -> None:
        """Write the stage's marker atomically (after its outputs are complete)."""
        self.done_dir.mkdir(parents=True, exist_ok=True)
        m = self.marker(stage)
        tmp = m.with_name(f".{m.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"key": stage.key, "kind": stage.kind, "fingerprint": stage.fp,
                                   "path": str(stage.path), "params": stage.params, **(extra or {})},
                                  sort_keys=True, default=str, indent=1, allow_nan=False) + "\n")
        os.replace(tmp, m)

    def select(self, only: str | None) -> list[Stage]:
        """The cells whose key matches the glob ``only`` (all cells when None)."""
        if not only:
            return list(self.cells)
        pats = [p.strip() for p in only.split(",") if p.strip()]
        return [c for c in self.cells if any(fnmatch.fnmatchcase(c.key, p) for p in pats)]


def _excluded(cfg: StudyConfig, ds: str, res: int, bb: str, arm: str) -> bool:
    values = {"dataset": ds, "resolution": res, "backbone": bb, "arm": arm}
    return any(all(values[k] == v for k, v in rule.items()) for rule in cfg.exclude)


def _data_params(cfg: StudyConfig, d: Dataset) -> dict:
    return {"data": cfg.resolve(d.data), "split": d.split, "labels": d.labels, "uncertain": d.uncertain,
            "views": d.views, "limit": d.limit}


def _arm_params(a: Arm, s: dict) -> dict:
    common = {"n_boot": s["n_boot"], "boot_seed": s["boot_seed"], "bootstrap": s["bootstrap"],
              "options": a.options}
    if a.kind == "frozen":
        return {"kind": "frozen", "head": a.head, "features": a.features, "label_fractions": list(a.label_fractions),
                "seeds": a.seeds, "protocol": a.protocol, **common}
    return {"kind": "finetune", "mode": a.mode, "protocol": a.protocol, **common}


def build_grid(cfg: StudyConfig, out: str | Path) -> Grid:
    """Lay out every stage of the study under ``out`` (nothing is read or written)."""
    out = Path(out)
    s = cfg.settings
    caches: dict[tuple[str, int], Stage] = {}
    stores: dict[tuple[str, int, str], Stage] = {}
    cells: list[Stage] = []
    for d in cfg.datasets:
        for r in cfg.resolutions:
            dp = {**_data_params(cfg, d), "res": r, "preprocess": s["preprocess"], "resize": s["resize"]}
            cache = None
            if s["cache_images"]:
                cache = _stage("cache", f"cache/{d.name}/{r}", out / "work" / "cache" / f"{d.name}@{r}", dp,
                               dataset=d.name, resolution=r)
                caches[(d.name, r)] = cache
            for b in cfg.backbones:
                params = {"model": _model_path(cfg, b), "dtype": s["dtype"], **({} if cache else dp)}
                store = _stage("extract", f"store/{d.name}/{r}/{b.name}",
                               out / "work" / "stores" / f"{d.name}@{r}" / f"{b.name}.zarr", params,
                               (cache,) if cache else (), dataset=d.name, resolution=r, backbone=b.name)
                stores[(d.name, r, b.name)] = store
                for a in cfg.arms:
                    if _excluded(cfg, d.name, r, b.name, a.name):
                        continue
                    cells.append(_stage("run", f"{d.name}/{r}/{b.name}/{a.name}",
                                        out / "runs" / d.name / str(r) / b.name / a.name, _arm_params(a, s),
                                        (store,), dataset=d.name, resolution=r, backbone=b.name, arm=a.name))
    by_key = {(c.dataset, c.resolution, c.backbone, c.arm): c for c in cells}
    for tr, te in cfg.external:
        for r in cfg.resolutions:
            for b in cfg.backbones:
                for a in cfg.arms:
                    train = by_key.get((tr, r, b.name, a.name))
                    # Frozen single-run arms only: a finetuned model is applied by predict in a later version.
                    if train is None or a.kind != "frozen" or a.curves or _excluded(cfg, te, r, b.name, a.name):
                        continue
                    cells.append(_stage("external", f"external/{tr}>{te}/{r}/{b.name}/{a.name}",
                                        out / "external" / f"{tr}-on-{te}" / str(r) / b.name / a.name,
                                        {"n_boot": s["n_boot"], "boot_seed": s["boot_seed"],
                                         "bootstrap": s["bootstrap"]}, (train, stores[(te, r, b.name)]),
                                        dataset=tr, test_dataset=te, resolution=r, backbone=b.name, arm=a.name))
    return Grid(cfg, out, caches, stores, cells)


def _model_path(cfg: StudyConfig, b: Backbone) -> str:
    """A local folder or file resolves against the config's folder; a registry name or hub id stays as written."""
    candidate = Path(cfg.resolve(b.model))
    made = (cfg.make.get("tiny_models") or {}).get("folder")
    if candidate.exists() or b.model.startswith((".", "/", "~")) or (made and Path(b.model).parent == Path(made)):
        return str(candidate)  # a local model (or one [make] builds before the grid runs)
    return b.model
