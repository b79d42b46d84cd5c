"""The options of ``extract`` and ``cache-images``, written once: frozen dataclasses that validate themselves.

The CLI (:mod:`embedkit.cli.extract`) and the API (:func:`embedkit.api.extract`, :func:`embedkit.api.cache_images`)
build an :class:`ExtractOptions` / :class:`CacheOptions`; the engine (:func:`embedkit.extract.run.run_extract`,
:func:`~embedkit.extract.run.run_cache_images`) takes it. Every option value is checked here, in ``__post_init__``,
before any model is loaded or anything written -- with two deliberate exceptions that have one owner elsewhere:
``device`` (:func:`embedkit.devices.resolve_device`, the one device resolver) and the manifest policies
``labels`` / ``uncertain`` / ``views`` / ``split`` (:func:`embedkit.data.load_manifest`, which every command that
reads a manifest shares).

Importing this module is cheap (no torch, no numpy).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from embedkit.backbones.base import PRECISIONS
from embedkit.errors import ExtractionError

__all__ = ["ImageOptions", "ExtractOptions", "CacheOptions", "PREPROCESS", "RESIZE", "DTYPES", "check_int",
           "check_choice", "build_options", "with_options_signature"]

PREPROCESS = ("model", "paper")
RESIZE = ("pad", "stretch")
DTYPES = ("float16", "float32")


def check_int(name: str, value: Any, lo: int = 1, *, command: str = "extract") -> int:
    """``value`` if it is an int >= ``lo`` (bools refused).

    Raises
    ------
    ExtractionError
        ``The 'batch_size' parameter of extract must be an int >= 1. Got 0.``
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ExtractionError(f"The '{name}' parameter of {command} must be an int >= {lo}. Got {value!r}.")
    return value


def check_choice(name: str, value: Any, allowed: Sequence[str], *, command: str = "extract") -> str:
    """``value`` if it is one of ``allowed``.

    Raises
    ------
    ExtractionError
        ``The 'resize' parameter of extract must be 'pad' or 'stretch'. Got 'crop'.``
    """
    if value not in allowed:
        choices = " or ".join(repr(a) for a in allowed) if len(allowed) <= 2 else \
            "one of " + ", ".join(repr(a) for a in allowed)
        raise ExtractionError(f"The '{name}' parameter of {command} must be {choices}. Got {value!r}.")
    return value


def _optional_int(name: str, value: Any, lo: int, command: str) -> None:
    if value is not None:
        check_int(name, value, lo, command=command)


@dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """What both commands do to the images: which rows, how they are decoded and preprocessed, how they are batched.

    Attributes
    ----------
    res : int
        Square input side R (>= 8).
    preprocess : {"model", "paper"}
        Preset: the backbone's mean/std, or the reference protocol's x/255 without mean/std (always stretched).
    resize : {"pad", "stretch"}
        How non-square images become square.
    batch_size : int
        Images per forward pass (extract) or per worker batch (cache-images).
    workers : int or None
        Loader processes (0: decode in the main process; None: automatic).
    limit : int or None
        First N rows only.
    labels : "full", "paper" or tuple of str
        Label columns of the manifest (a sequence is kept as a tuple).
    uncertain : str
        CheXpert-style -1 labels: ``zeros``, ``ones`` or ``ignore`` (checked by the manifest reader).
    views : str
        ``frontal`` or ``all`` (checked by the manifest reader).
    split : str or None
        ``official`` or ``patient:SEED:TRAIN,VAL,TEST`` (checked by the manifest reader).
    """

    command: ClassVar[str] = "extract"

    res: int
    preprocess: Literal["model", "paper"] = "model"
    resize: Literal["pad", "stretch"] = "pad"
    batch_size: int = 32
    workers: int | None = None
    limit: int | None = None
    labels: str | tuple[str, ...] = "full"
    uncertain: str = "zeros"
    views: str = "frontal"
    split: str | None = None

    def __post_init__(self) -> None:
        cmd = self.command
        check_int("res", self.res, 8, command=cmd)
        check_choice("preprocess", self.preprocess, PREPROCESS, command=cmd)
        check_choice("resize", self.resize, RESIZE, command=cmd)
        check_int("batch_size", self.batch_size, command=cmd)
        _optional_int("workers", self.workers, 0, cmd)
        _optional_int("limit", self.limit, 1, cmd)
        if not isinstance(self.labels, str):
            object.__setattr__(self, "labels", tuple(self.labels))

    def policies(self) -> dict[str, Any]:
        """The manifest policies, as :func:`embedkit.extract.source.open_source` takes them."""
        labels = self.labels if isinstance(self.labels, str) else list(self.labels)
        return dict(labels=labels, uncertain=self.uncertain, views=self.views, split=self.split, limit=self.limit)


@dataclass(frozen=True, kw_only=True)
class ExtractOptions(ImageOptions):
    """Options of ``embedkit extract`` (:class:`ImageOptions` plus the model side).

    Attributes
    ----------
    features : tuple of str or None
        Feature views (None: the backbone family's defaults); a sequence is kept as a tuple, an empty one as None.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked by :func:`embedkit.devices.resolve_device`).
    precision : {"auto", "fp32", "bf16", "bf16-weights"}
        ``auto``: bf16-weights on CUDA, fp32 on CPU (see :func:`embedkit.backbones.load_backbone`).
    dtype : {"float16", "float32"}
        Stored dtype of the features.
    compile : bool
        ``torch.compile`` the backbone's forward.
    rows_per_shard : int or None
        Rows per work unit of a new store (None: the store's default).
    allow_download : bool
        Fetch missing weights from the hub (only while ``HF_HUB_OFFLINE`` is unset).

    Examples
    --------
    >>> ExtractOptions(res=512, features=["cls", "mean_patch"]).features
    ('cls', 'mean_patch')
    >>> ExtractOptions(res=512, batch_size=0)
    Traceback (most recent call last):
    ...
    embedkit.errors.ExtractionError: The 'batch_size' parameter of extract must be an int >= 1. Got 0.
    """

    features: tuple[str, ...] | None = None
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "bf16-weights"] = "auto"
    dtype: Literal["float16", "float32"] = "float16"
    compile: bool = False
    rows_per_shard: int | None = None
    allow_download: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("dtype", self.dtype, DTYPES)
        _optional_int("rows_per_shard", self.rows_per_shard, 1, self.command)
        if self.features is not None:
            if isinstance(self.features, str):
                raise ExtractionError(f"The 'features' parameter of extract must be a sequence of view names. "
                                      f"Got {self.features!r}.")
            object.__setattr__(self, "features", tuple(self.features) or None)


@dataclass(frozen=True, kw_only=True)
class CacheOptions(ImageOptions):
    """Options of ``embedkit cache-images`` (:class:`ImageOptions` plus the cache's work unit).

    Attributes
    ----------
    unit_rows : int
        Images per work unit (one shard).
    """

    command: ClassVar[str] = "cache-images"

    unit_rows: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("unit_rows", self.unit_rows, command=self.command)


def build_options(cls: type[ImageOptions], options: ImageOptions | None, fields: dict[str, Any]) -> ImageOptions:
    """``options`` as given, or ``cls(**fields)``; both at once is refused.

    Raises
    ------
    ExtractionError
        Both given, or a keyword that is not an option of ``cls``.
    """
    if options is not None:
        if fields:
            raise ExtractionError(f"Pass either options= or keyword options ({', '.join(sorted(fields))}), not both.")
        if not isinstance(options, cls):
            raise ExtractionError(f"options= must be a {cls.__name__}. Got {type(options).__name__}.")
        return options
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ExtractionError(f"Unknown option(s) of {cls.command}: {', '.join(unknown)}. "
                              f"Options: {', '.join(sorted(known))}.")
    return cls(**fields)


def with_options_signature(cls: type[ImageOptions]) -> Callable[[Callable], Callable]:
    """Give ``func(..., options=None, *, ..., **fields)`` a signature that lists ``cls``'s fields as keywords, so that
    ``help()`` and editors show every option although it is written once, in ``cls``."""

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in params}
        for f in dataclasses.fields(cls):
            if f.name in taken:
                continue
            default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=f.type))
        # Keyword-only parameters may come in any default order; positional ones keep theirs.
        func.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return func

    return decorate
