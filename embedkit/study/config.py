"""The study configuration: a TOML file (read with :mod:`tomllib`) naming datasets, resolutions, backbones and arms.

Every key is documented in :data:`EXAMPLE` (``embedkit study --example`` prints it); unknown keys are refused with
a suggestion, so a typo never silently drops part of the grid. Relative paths resolve against the config file's
folder. TOML has no null: an unset option is an absent key.
"""
from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from embedkit.errors import EmbedkitError

__all__ = ["StudyConfigError", "StudyConfig", "Dataset", "Backbone", "Arm", "load_config", "check_inputs",
           "EXAMPLE"]


class StudyConfigError(EmbedkitError):
    """The study configuration cannot be used (syntax, unknown key, bad value)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    data: str
    split: str | None = None
    labels: str = "full"
    uncertain: str = "zeros"
    views: str = "frontal"
    limit: int | None = None


@dataclass(frozen=True)
class Backbone:
    name: str
    model: str
    random_weights: bool = False


@dataclass(frozen=True)
class Arm:
    name: str
    kind: Literal["frozen", "finetune"]
    head: str = "linear"
    features: str = "default"
    label_fractions: tuple[float, ...] = (1.0,)
    seeds: int = 1
    mode: str = "full"
    protocol: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def curves(self) -> bool:
        """True when the arm has several label fractions or seeds (sub-runs ``frac<F>-seed<S>``)."""
        return len(self.label_fractions) * self.seeds > 1


@dataclass(frozen=True)
class StudyConfig:
    path: Path
    name: str
    resolutions: tuple[int, ...]
    datasets: tuple[Dataset, ...]
    backbones: tuple[Backbone, ...]
    arms: tuple[Arm, ...]
    external: tuple[tuple[str, str], ...] = ()
    exclude: tuple[dict, ...] = ()
    settings: dict = field(default_factory=dict)
    make: dict = field(default_factory=dict)

    def resolve(self, p: str) -> str:
        """A path relative to the config file's folder (an ``ADAPTER:ROOT`` spec keeps its adapter)."""
        if ":" in p and not Path(p).exists() and not p.startswith(("/", ".")):
            adapter, _, root = p.partition(":")
            if len(adapter) > 1:  # not a Windows drive letter
                return f"{adapter}:{self.resolve(root)}"
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (self.path.parent / q).resolve())


SETTINGS = {"n_boot": 1000, "boot_seed": 0, "bootstrap": "auto", "device": "auto", "workers": 0, "batch_size": 32,
            "preprocess": "model", "resize": "pad", "dtype": "float16", "cache_images": True,
            "age_bands": [0, 40, 60, 80], "adjust": "holm", "min_count": 10}
_TOP = ("study", "make", "datasets", "backbones", "arms", "external", "exclude")
_STUDY = ("name", "resolutions", *SETTINGS)
_DATASET = ("name", "data", "split", "labels", "uncertain", "views", "limit")
_BACKBONE = ("name", "model", "random_weights")
_ARM_FROZEN = ("name", "kind", "heads", "features", "label_fractions", "seeds", "protocol", "options")
_ARM_FT = ("name", "kind", "modes", "protocols", "options")
_MAKE = ("phantoms", "tiny_models")


def _fail(where: str, msg: str) -> StudyConfigError:
    return StudyConfigError(f"Study config {where}: {msg}")


def _keys(d: dict, allowed: tuple[str, ...], where: str) -> None:
    for k in d:
        if k not in allowed:
            near = difflib.get_close_matches(k, allowed, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else f" Allowed: {', '.join(allowed)}."
            raise _fail(where, f"unknown key '{k}'.{hint} 'embedkit study --example' documents every key.")


def _need(d: dict, key: str, typ, where: str) -> Any:
    if key not in d:
        raise _fail(where, f"the key '{key}' is required.")
    v = d[key]
    if not isinstance(v, typ) or (typ is str and not v.strip()):
        raise _fail(where, f"'{key}' must be {getattr(typ, '__name__', typ)}; got {v!r}.")
    return v


def _name_ok(name: str, where: str) -> str:
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise _fail(where, f"name {name!r} may hold only letters, digits, '-', '_' and '.' (it names folders).")
    return name


def _choice(value, allowed, key: str, where: str) -> None:
    if value not in allowed:
        near = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise _fail(where, f"'{key}' {value!r} is not one of {', '.join(map(str, allowed))}.{hint}")


#: finetune arguments the study sets itself (an arm's ``options`` may not).
_STUDY_SETS = ("model", "data", "out", "res", "mode", "protocol", "n_boot", "boot_seed", "bootstrap", "device",
               "workers", "subgroups", "progress", "log")


def _check_head(head: str, options: dict, where: str) -> None:
    """A value typo is refused here, before any cell runs (as a key typo is)."""
    from probes.heads import HEADS, head_spec

    _choice(head, HEADS, "heads", where)
    accepted = list(head_spec(head).accepted_options())
    for k in options:
        if k not in accepted:
            near = difflib.get_close_matches(k, accepted, n=1)
            hint = f"Did you mean '{near[0]}'?" if near else f"Options of {head}: {', '.join(accepted)}."
            raise _fail(where, f"options: unknown {head} head option '{k}'. {hint}")


def _check_finetune(modes, protocols, options: dict, where: str) -> None:
    import inspect

    from embedkit.app.finetune import PROTOCOLS, run_finetune

    for m in modes:
        k = m[5:] if isinstance(m, str) and m.startswith("last:") else None
        if m not in ("full", "lora") and not (k is not None and k.isdigit() and int(k) >= 1):
            raise _fail(where, f"'modes' {m!r} is not 'full', 'lora' or 'last:K' (K >= 1).")
    for p in protocols:
        _choice(p, list(PROTOCOLS), "protocols", where)
    accepted = [k for k in inspect.signature(run_finetune).parameters if k not in _STUDY_SETS]
    for k in options:
        if k in _STUDY_SETS:
            raise _fail(where, f"options: '{k}' is set by the study itself, not per arm.")
        if k not in accepted:
            near = difflib.get_close_matches(k, accepted, n=1)
            hint = f"Did you mean '{near[0]}'?" if near else "See 'embedkit finetune --help'."
            raise _fail(where, f"options: unknown finetune option '{k}'. {hint}")


def check_inputs(cfg: StudyConfig) -> None:
    """Refuse a dataset whose manifest or ``ADAPTER:ROOT`` root does not exist (and that ``[make]`` does not
    build), before any cell runs.

    Raises
    ------
    StudyConfigError
        Naming the dataset and the missing path.
    """
    made = {str(Path(cfg.resolve(s["out"])) / "manifest.csv") for s in cfg.make.get("phantoms", [])}
    for i, d in enumerate(cfg.datasets):
        data = cfg.resolve(d.data)
        adapter, sep, root = data.partition(":")
        path = root if sep and len(adapter) > 1 and not Path(data).exists() else data
        if not Path(path).exists() and data not in made:
            raise _fail(f"[[datasets]][{i}] ({d.name})", f"'{path}' does not exist. 'data' takes a manifest CSV or "
                        "ADAPTER:ROOT; relative paths resolve against the config file's folder.")


def _arms(raw: list, where: str) -> list[Arm]:
    arms: list[Arm] = []
    for i, a in enumerate(raw):
        w = f"{where}[{i}]"
        kind = a.get("kind")
        if kind not in ("frozen", "finetune"):
            raise _fail(w, f"'kind' must be 'frozen' or 'finetune'; got {kind!r}.")
        options = a.get("options", {})
        if not isinstance(options, dict):
            raise _fail(w, "'options' must be a table of keyword arguments.")
        base = a.get("name")
        if kind == "frozen":
            _keys(a, _ARM_FROZEN, w)
            heads = a.get("heads", ["linear"])
            feats = a.get("features", ["default"])
            fr = tuple(float(f) for f in a.get("label_fractions", [1.0]))
            if not fr or any(not 0 < f <= 1 for f in fr):
                raise _fail(w, f"'label_fractions' must be numbers in (0, 1]; got {fr!r}.")
            seeds = int(a.get("seeds", 1))
            if seeds < 1:
                raise _fail(w, f"'seeds' must be >= 1; got {seeds}.")
            if a.get("protocol") is not None:
                from embedkit.protocols import list_protocols

                _choice(a["protocol"], list_protocols(), "protocol", w)
            for h in heads:
                _check_head(h, dict(options), w)
                for f in feats:
                    name = base if base and len(heads) * len(feats) == 1 else \
                        "-".join(x for x in (base, h, f.replace("+", "_")) if x)
                    arms.append(Arm(_name_ok(name, w), "frozen", head=h, features=f, label_fractions=fr, seeds=seeds,
                                    protocol=a.get("protocol"), options=dict(options)))
        else:
            _keys(a, _ARM_FT, w)
            modes, protocols = a.get("modes", ["full"]), a.get("protocols", ["modern"])
            _check_finetune(modes, protocols, options, w)
            for m in modes:
                for p in protocols:
                    name = base if base and len(modes) * len(protocols) == 1 else \
                        "-".join(x for x in (base or "ft", m.replace(":", ""), p) if x)
                    arms.append(Arm(_name_ok(name, w), "finetune", mode=m, protocol=p, options=dict(options)))
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(where, f"arm names must be unique; {', '.join(dup)} repeat. Give each arm a 'name'.")
    return arms


def load_config(path: str | Path) -> StudyConfig:
    """Read and check a study TOML file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    StudyConfig

    Raises
    ------
    StudyConfigError
        Syntax errors (with line), unknown keys (with a suggestion), missing or bad values.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise StudyConfigError(f"Study config '{path}' is not valid TOML: {exc}.") from None
    _keys(raw, _TOP, f"'{path}'")
    study = raw.get("study", {})
    _keys(study, _STUDY, "[study]")
    res = study.get("resolutions")
    if not isinstance(res, list) or not res or not all(isinstance(r, int) and r > 0 for r in res):
        raise _fail("[study]", f"'resolutions' must be a list of positive integers, e.g. [224, 512]; got {res!r}.")
    settings = {**SETTINGS, **{k: v for k, v in study.items() if k in SETTINGS}}
    if settings["adjust"] not in ("holm", "bh", "none"):
        raise _fail("[study]", f"'adjust' must be 'holm', 'bh' or 'none'; got {settings['adjust']!r}.")
    datasets = []
    for i, d in enumerate(raw.get("datasets", [])):
        w = f"[[datasets]][{i}]"
        _keys(d, _DATASET, w)
        datasets.append(Dataset(_name_ok(_need(d, "name", str, w), w), _need(d, "data", str, w), d.get("split"),
                                d.get("labels", "full"), d.get("uncertain", "zeros"), d.get("views", "frontal"),
                                d.get("limit")))
    backbones = []
    for i, b in enumerate(raw.get("backbones", [])):
        w = f"[[backbones]][{i}]"
        _keys(b, _BACKBONE, w)
        backbones.append(Backbone(_name_ok(_need(b, "name", str, w), w), _need(b, "model", str, w),
                                  bool(b.get("random_weights", False))))
    arms = _arms(raw.get("arms", []), "[[arms]]")
    for what, items in (("datasets", datasets), ("backbones", backbones), ("arms", arms)):
        if not items:
            raise _fail(f"'{path}'", f"at least one entry in [[{what}]] is needed.")
        names = [x.name for x in items]
        if len(set(names)) != len(names):
            raise _fail(f"[[{what}]]", f"names must be unique; got {names}.")
    dnames = {d.name for d in datasets}
    external = []
    for i, e in enumerate(raw.get("external", [])):
        w = f"[[external]][{i}]"
        _keys(e, ("train", "test"), w)
        tr, te = _need(e, "train", str, w), _need(e, "test", str, w)
        for n in (tr, te):
            if n not in dnames:
                raise _fail(w, f"dataset {n!r} is not in [[datasets]] ({', '.join(sorted(dnames))}).")
        external.append((tr, te))
    exclude = tuple(raw.get("exclude", []))
    for i, e in enumerate(exclude):
        _keys(e, ("dataset", "resolution", "backbone", "arm"), f"[[exclude]][{i}]")
    make = raw.get("make", {})
    _keys(make, _MAKE, "[make]")
    return StudyConfig(path=path.resolve(), name=str(study.get("name", path.stem)), resolutions=tuple(res),
                       datasets=tuple(datasets), backbones=tuple(backbones), arms=tuple(arms),
                       external=tuple(external), exclude=exclude, settings=settings, make=make)


EXAMPLE = '''\
# embedkit study -- a runnable example: synthetic phantoms and tiny RANDOM models, so it runs offline in minutes.
# Save it (embedkit study --example > study.toml) and run:  embedkit study study.toml --out study-out
# Relative paths resolve against this file's folder. TOML has no null: leave a key out to keep its default.

[study]
name = "phantom-example"          # title of the report
resolutions = [32, 64]             # input sides in pixels; one image cache + one store per dataset x resolution
n_boot = 200                       # bootstrap resamples of each test set (the reference study: 1000)
boot_seed = 0                      # seed of the resamples; runs on one test set share them (paired comparisons)
bootstrap = "auto"                 # "patients" (cluster), "images", or "auto" (patients when ids exist)
device = "cpu"                     # "auto" | "cpu" | "cuda"
workers = 0                        # decode workers (0 = in the main process)
batch_size = 16                    # extraction batch size
preprocess = "model"               # "model" (the backbone's own normalisation) | "paper" (the reference preset)
resize = "pad"                     # "pad" (letterbox) | "stretch"
dtype = "float16"                  # store dtype: "float16" | "float32"
cache_images = true                # decode each dataset x resolution once into an image cache, shared by backbones
age_bands = [0, 40, 60, 80]        # lower bounds of the subgroup age bands
min_count = 10                     # subgroups with fewer positives or negatives than this are flagged "small"
adjust = "holm"                    # multiple-comparison adjustment of the report's p-values: "holm" | "bh" | "none"

# [make]: inputs the study builds itself before the grid (skipped when already there). Real studies leave it out.
[make]
phantoms = [                       # synthetic radiographs (embedkit phantoms): out folder, images, side, seed
  { out = "study-assets/phantoms-a", n = 90, size = 64, seed = 0 },
  { out = "study-assets/phantoms-b", n = 90, size = 64, seed = 1 },
]
tiny_models = { folder = "study-assets/models", kinds = ["dinov3-vit", "dinov3-convnext"] }  # random weights

# [[datasets]]: one per dataset. data = manifest CSV or ADAPTER:ROOT (nih:/data/nih ...).
[[datasets]]
name = "phantom-a"                 # display name (results.csv, figures); letters, digits, - _ .
data = "study-assets/phantoms-a/manifest.csv"
# split = "patient:0:0.7,0.1,0.2"  # split rule: leave out to keep the data's split; "official";
#                                  # "official+val:SEED:FRACTION"; "patient:SEED:TRAIN,VAL,TEST"
# labels = "full"                  # "full", "paper" or a comma-separated list
# uncertain = "zeros"              # policy for uncertain labels (CheXpert/MIMIC -1)
# views = "frontal"                # "frontal" | "all"
# limit = 1000                     # first N rows only (a quick look)

[[datasets]]
name = "phantom-b"
data = "study-assets/phantoms-b/manifest.csv"

# [[backbones]]: registry name, hub id, timm:NAME, save_pretrained folder or checkpoint file.
[[backbones]]
name = "vit"                       # display name
model = "study-assets/models/tiny-dinov3-vit"
random_weights = true              # the report says so plainly (models from [make] are always marked random)

[[backbones]]
name = "convnext"
model = "study-assets/models/tiny-dinov3-convnext"
random_weights = true

# [[arms]]: what is trained on each dataset x resolution x backbone.
# Frozen heads: heads x features expand into one arm each (named NAME-HEAD-FEATURES when several).
[[arms]]
name = "linear"
kind = "frozen"
heads = ["linear"]                 # linear | mlp | knn | sklearn
features = ["default"]             # store views, '+'-joined views, or "default" (cls, else the first view)
# label_fractions = [0.1, 1.0]     # training fractions (label-fraction curves in the report)
# seeds = 3                        # repeats per fraction (seed curves; mean +- SD)
# protocol = "paper"               # a probe recipe: "paper" | "modern"
# options = { epochs = 50 }        # head options: lr, batch_size, epochs ...

# Finetunes: modes x protocols expand into one arm each.
[[arms]]
name = "ft"
kind = "finetune"
modes = ["full"]                   # "full" | "last:K"
protocols = ["modern"]             # "paper" | "modern"
options = { epochs = 2, batch_size = 16 }   # embedkit.api.finetune options (epochs, lr, batch_size, select ...)

# [[external]]: apply every frozen head trained on one dataset to another (external validation, embedkit predict).
[[external]]
train = "phantom-a"
test = "phantom-b"

# [[exclude]]: holes in the grid; any subset of dataset / resolution / backbone / arm.
# [[exclude]]
# dataset = "phantom-b"
# resolution = 64
'''
