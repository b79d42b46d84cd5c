"""Python API for notebooks, mirroring the CLI: ``extract``, ``cache_images``, ``probe`` and ``compare``.

>>> import embedkit.api as ek                                                  # doctest: +SKIP
>>> st = ek.extract("dinov3-vitb16", "nih:/data/nih", "runs/nih_b16.zarr", res=512)  # doctest: +SKIP
>>> X = st.load("cls", split="train")                                          # doctest: +SKIP

``extract`` and ``cache_images`` resume an interrupted run when given the same arguments, and may run under torchrun (each rank calls
the same function). They return the opened result, read-only. ``probe`` and ``compare`` are the application layer's
functions (:mod:`embedkit.app`), returning :class:`~embedkit.app.probe.ProbeResult` /
:class:`~embedkit.app.compare.CompareResult`:

>>> res = ek.probe("runs/nih_b16.zarr", "runs/nih_b16-linear", features="cls")  # doctest: +SKIP
>>> ek.compare(["runs/nih_b16-linear", "runs/nih_b16-mlp"]).runs              # doctest: +SKIP

``index``, ``search``, ``search_eval`` (:mod:`embedkit.app.retrieval`) and ``info``, ``models``, ``manifest``,
``phantoms`` (:mod:`embedkit.app.catalog`) return frozen dataclasses whose ``to_dict()`` is the command's ``--json``:

>>> ek.index("runs/nih_b16.zarr").info["factory"]                              # doctest: +SKIP
>>> ek.search("runs/nih_b16.zarr", query_id="00000001_000.png", k=5).results   # doctest: +SKIP

``predict`` (:mod:`embedkit.app.predict`) applies a probe run's head to another store or to new images (external
validation); ``study`` (:mod:`embedkit.app.study`) runs a TOML-described grid and writes results.csv + report.md:

>>> ek.predict("runs/nih_b16-linear", "runs/chexpert_b16.zarr", "runs/nih-on-chexpert").metrics  # doctest: +SKIP
>>> ek.study("study.toml", "study-out").report                                                 # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from embedkit.app.catalog import build_manifest as manifest
from embedkit.app.catalog import list_models as models
from embedkit.app.catalog import store_info as info
from embedkit.app.catalog import write_phantoms as phantoms
from embedkit.app.compare import compare
from embedkit.app.predict import predict
from embedkit.app.probe import probe
from embedkit.app.retrieval import build_store_index as index
from embedkit.app.retrieval import search, search_eval
from embedkit.app.study import study
from embedkit.errors import ExtractionError
from embedkit.extract.options import CacheOptions, ExtractOptions, build_options, with_options_signature

if TYPE_CHECKING:  # pragma: no cover
    from stores import EmbeddingStore
    from stores.image_cache import ImageCache

__all__ = ["ExtractOptions", "CacheOptions",
           "extract", "cache_images", "probe", "compare", "finetune", "index", "search", "search_eval", "info", "models",
           "manifest", "phantoms", "predict", "study"]


@with_options_signature(ExtractOptions)
def extract(
    model: str,
    data: str,
    out: str | Path,
    options: ExtractOptions | None = None,
    *,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **fields: Any,
) -> EmbeddingStore:
    """Embed DATA with MODEL into the store OUT; the same as ``embedkit extract``.

    Parameters
    ----------
    model : str
        Registry name (``dinov3-vitb16``), hub id, ``timm:NAME``, a ``save_pretrained`` directory or a checkpoint.
    data : str
        Manifest CSV, ``ADAPTER:ROOT`` or an image cache written by :func:`cache_images`.
    out : str or Path
        Store directory; an existing one with the same provenance is resumed, another is refused.
    options : ExtractOptions, optional
        All options at once; or pass them as keywords (``res=512, features=["cls", "mean_patch"], batch_size=64,
        workers, device, precision, dtype, limit, labels, uncertain, views, split, compile, rows_per_shard,
        allow_download``), documented on :class:`~embedkit.extract.options.ExtractOptions` and checked there.
    strict : bool
        Raise :class:`ExtractionError` after the run if any image was unreadable.
    progress : callable(done, total), optional
        Called after each batch.

    Returns
    -------
    EmbeddingStore
        Opened read-only; rows (N, D_view) per view, labels (N, K), split, metadata.

    Raises
    ------
    ExtractionError, ModelError, DataError, ProvenanceMismatchError
    """
    from embedkit.extract.run import run_extract
    from stores import EmbeddingStore

    report = run_extract(model, data, out, build_options(ExtractOptions, options, fields), progress=progress)
    _strict(report, strict)
    return EmbeddingStore.open(out)


@with_options_signature(CacheOptions)
def cache_images(
    data: str,
    out: str | Path,
    options: CacheOptions | None = None,
    *,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **fields: Any,
) -> ImageCache:
    """Decode and preprocess DATA once into an image cache (N, R, R) uint8; the same as ``embedkit cache-images``.

    Parameters
    ----------
    data : str
        Manifest CSV or ``ADAPTER:ROOT``.
    out : str or Path
        Cache directory; re-running resumes it.
    options : CacheOptions, optional
        All options at once; or as keywords (``res``, ``unit_rows`` -- images per work unit -- and the image
        options of :func:`extract`), documented on :class:`~embedkit.extract.options.CacheOptions`.
    strict, progress
        As :func:`extract`.

    Returns
    -------
    ImageCache
        Opened read-only.

    Raises
    ------
    ExtractionError, DataError, ProvenanceMismatchError
    """
    from embedkit.extract.run import run_cache_images
    from stores.image_cache import ImageCache

    report = run_cache_images(data, out, build_options(CacheOptions, options, fields), progress=progress)
    _strict(report, strict)
    return ImageCache.open(out)


def _strict(report, strict: bool) -> None:
    if strict and report.store_failed:
        first = next(iter(report.failures.items()), ("?", "?"))
        raise ExtractionError(
            f"{report.store_failed} image(s) could not be read (first: {first[0]}: {first[1]}); "
            "fix or drop them from the manifest, or pass strict=False to keep going."
        )


def finetune(model: str, data: str, out: str | Path, *, res: int, mode: str = "full",
             protocol: Literal["paper", "modern"] = "paper", **options) -> dict:
    """Finetune MODEL (backbone + linear head) on DATA into the run directory OUT; the same as ``embedkit finetune``.

    Parameters
    ----------
    model : str
        Registry name, hub id, ``timm:NAME``, a ``save_pretrained`` folder or a checkpoint file.
    data : str
        An embedding store (then the rows, labels, split and test ids are its probes'), an image cache, a manifest
        CSV or ``ADAPTER:ROOT``.
    out : str or Path
        Run directory; calling again with the same arguments resumes (or returns the finished metrics).
    res : int
        Input side in pixels.
    mode : str
        ``full`` or ``last:K``.
    protocol : {"paper", "modern"}
        Training recipe; ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``precision``, ``select`` ... in
        ``options`` override it (see :func:`embedkit.app.finetune.run_finetune`).

    Returns
    -------
    dict
        The run's ``metrics.json`` document (``mean_auroc``, ``test``, ``chosen`` epoch, ``history``, ``pairing``).

    Raises
    ------
    EmbedkitError, ProbeError, StoreError

    Examples
    --------
    >>> doc = finetune("dinov3-vitb16", "runs/nih_b16.zarr", "runs/ft_b16", res=512)  # doctest: +SKIP
    >>> doc["mean_auroc"]["value"]  # doctest: +SKIP
    """
    from embedkit.app.finetune import run_finetune

    return run_finetune(model, data, out, res=res, mode=mode, protocol=protocol, **options).metrics
