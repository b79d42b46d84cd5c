"""The two entry points behind ``embedkit extract`` and ``embedkit cache-images`` (and :mod:`embedkit.api`).

Both take their options as one frozen, self-validating dataclass (:class:`~embedkit.extract.options.ExtractOptions`,
:class:`~embedkit.extract.options.CacheOptions`); keyword options build it, so ``run_extract(m, d, o, res=512)``
and ``run_extract(m, d, o, ExtractOptions(res=512))`` are the same call.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD
from embedkit.errors import ExtractionError
from embedkit.extract import pipeline as P
from embedkit.extract.dist import DistEnv, detect_env
from embedkit.extract.options import CacheOptions, ExtractOptions, build_options, with_options_signature
from embedkit.extract.source import check_cache_matches, open_source, uint8_params

logger = logging.getLogger(__name__)


@with_options_signature(ExtractOptions)
def run_extract(
    model: str | Any,
    data: str,
    out: str | Path,
    options: ExtractOptions | None = None,
    *,
    progress: P.ProgressHook | None = None,
    env: DistEnv | None = None,
    **fields: Any,
) -> P.ExtractReport:
    """Embed every pending row of DATA with MODEL into the store at OUT (resumable, multi-rank).

    Parameters
    ----------
    model : str or Backbone
        Registry name, hub id, ``timm:NAME``, a ``save_pretrained`` directory or a checkpoint file; or an already
        loaded backbone (then ``device``/``precision``/``features`` are the backbone's own).
    data : str
        Manifest CSV, ``ADAPTER:ROOT`` or an image cache directory.
    out : str or Path
        Store directory; an existing store with the same provenance is resumed.
    options : ExtractOptions, optional
        Every option (resolution, preset, batching, device, precision, dtype, manifest policies...); see
        :class:`~embedkit.extract.options.ExtractOptions`. With a loaded backbone, ``device``/``precision``/
        ``features`` are the backbone's own. The manifest policies are ignored for image caches (fixed at cache
        time).
    progress : callable(done, total), optional
    env : DistEnv, optional
        Rank layout (default: read from torchrun/Slurm variables).
    **fields
        The options as keywords (``res=512, batch_size=64``), when ``options`` is not given.

    Returns
    -------
    ExtractReport

    Raises
    ------
    ExtractionError, ModelError, DataError, ProvenanceMismatchError
    """
    import torch

    from embedkit.backbones import load_backbone
    from stores import EmbeddingStore

    opts: ExtractOptions = build_options(ExtractOptions, options, fields)  # type: ignore[assignment]
    res, dtype = opts.res, opts.dtype
    EmbeddingStore.check_path(out)  # a foreign --out is refused before the model is loaded or anything written
    env = env or detect_env()
    loaded = hasattr(model, "embed")
    source = open_source(data, **opts.policies())
    # load_backbone owns the device rule: this rank's visible GPU, and no silent CPU fallback for a 7B.
    bb = model if loaded else load_backbone(model, device=opts.device, local_rank=env.local_rank,
                                            precision=opts.precision,
                                            features=list(opts.features) if opts.features else None,
                                            allow_download=opts.allow_download)
    dev = bb.device
    # Caught before the store is created; HF DINOv2 ignores the partial patches (the study's 512/1024 runs).
    if bb.spec.family == "vit" and res % bb.spec.patch_size and not getattr(bb, "ignores_partial_patches", False):
        raise ExtractionError(f"The 'res' parameter of extract must be a multiple of the patch size "
                              f"{bb.spec.patch_size} of {bb.spec.name!r}. Got {res}.")
    if opts.compile:
        _compile(bb)
    preset = P.make_preset_for(opts.preprocess, resolution=res, mean=bb.spec.mean, std=bb.spec.std,
                               resize=opts.resize)
    pre_block = P.preset_block(opts.preprocess, preset)
    check_cache_matches(source, resolution=res, preprocess=pre_block)
    used_precision = _precision_label(bb, dev)
    provenance = {
        "backbone": bb.provenance(resolution=res),  # + input_geometry: patch grid, ignored pixels (ViTs)
        "resolution": int(res),
        "preprocess": pre_block,
        "views": {k: {"dim": int(d), "definition": bb.view_definitions.get(k, k)} for k, d in bb.views.items()},
        "dtype": dtype,
        "precision": used_precision,
        "dataset": dict(source.spec, n_rows=source.n_rows),
        **P.base_provenance(),
    }
    create_kwargs = dict(
        ids=list(source.ids), views=dict(bb.views), provenance=provenance, labels=source.labels,
        label_names=source.label_names or None, split=None if source.split is None else list(source.split),
        metadata=source.metadata or None, dtype=dtype, rank=0, world_size=env.world_size,
    )
    if opts.rows_per_shard is not None:
        create_kwargs.update(rows_per_shard=opts.rows_per_shard, rows_per_chunk=_chunk_rows(opts.rows_per_shard))
    out = Path(out)
    workers = P.default_workers(source.kind) if opts.workers is None else opts.workers
    with P.new_group(env, dev.type) as group:
        store = P.open_sink(
            lambda: EmbeddingStore.open_or_create(out, **create_kwargs),
            lambda: EmbeddingStore.open(out, "r+", rank=env.rank, world_size=env.world_size),
            group,
        )
        from embedkit.extract.mapper import EmbedMapper

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        mapper = EmbedMapper(bb, preset, dev)
        t0 = time.perf_counter()
        stats, skipped = P.run_sink(
            store, source=source, mapper=mapper, resolution=res, preset=preset, batch_size=opts.batch_size,
            workers=workers, pin_memory=dev.type == "cuda", lag=1 if dev.type == "cuda" else 0, env=env,
            progress=progress,
        )
        seconds = time.perf_counter() - t0
        group.barrier()
        if env.is_main:
            store.finalize()
        report = _report(out, env, store, stats, skipped, seconds, dev, used_precision)
        store.close()
        group.barrier()
    return report


@with_options_signature(CacheOptions)
def run_cache_images(
    data: str,
    out: str | Path,
    options: CacheOptions | None = None,
    *,
    progress: P.ProgressHook | None = None,
    env: DistEnv | None = None,
    **fields: Any,
) -> P.ExtractReport:
    """Decode + preprocess DATA once into an image cache at OUT (resumable, multi-rank).

    Parameters are those of :func:`run_extract`, with :class:`~embedkit.extract.options.CacheOptions` (the image
    options plus ``unit_rows``, the cache's work unit) as ``options`` or keywords.

    Returns
    -------
    ExtractReport

    Raises
    ------
    ExtractionError, DataError, ProvenanceMismatchError
    """
    import torch

    from embedkit.extract.engine import ImageMapper
    from stores.image_cache import ImageCache

    opts: CacheOptions = build_options(CacheOptions, options, fields)  # type: ignore[assignment]
    res = opts.res
    ImageCache.check_path(out)  # a foreign --out is refused before anything is decoded or written
    env = env or detect_env()
    source = open_source(data, **opts.policies())
    if source.kind == "cache":
        raise ExtractionError(f"'{data}' is already an image cache; pass the manifest it was written from.")
    # mean/std only matter to to_tensor, which a cache never applies; they are left out of its provenance.
    preset = P.make_preset_for(opts.preprocess, resolution=res, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                               resize=opts.resize)
    provenance = {
        "kind": "image_cache",
        "resolution": int(res),
        "preprocess": uint8_params(P.preset_block(opts.preprocess, preset)),
        "dataset": dict(source.spec, n_rows=source.n_rows),
        **P.base_provenance(),
    }
    create_kwargs = dict(
        ids=list(source.ids), resolution=res, provenance=provenance, labels=source.labels,
        label_names=source.label_names or None, split=None if source.split is None else list(source.split),
        metadata=source.metadata or None, unit_rows=opts.unit_rows, rank=0, world_size=env.world_size,
    )
    out = Path(out)
    workers = P.default_workers("files") if opts.workers is None else opts.workers
    dev = torch.device("cpu")
    with P.new_group(env, "cpu") as group:
        cache = P.open_sink(
            lambda: ImageCache.open_or_create(out, **create_kwargs),
            lambda: ImageCache.open(out, "r+", rank=env.rank, world_size=env.world_size),
            group,
        )
        t0 = time.perf_counter()
        stats, skipped = P.run_sink(
            cache, source=source, mapper=ImageMapper(res), resolution=res, preset=preset,
            batch_size=opts.batch_size,
            workers=workers, pin_memory=False, lag=0, env=env, progress=progress,
        )
        seconds = time.perf_counter() - t0
        group.barrier()
        if env.is_main:
            cache.finalize()
        report = _report(out, env, cache, stats, skipped, seconds, dev, "none")
        cache.close()
        group.barrier()
    return report


def _report(out, env, sink, stats, skipped, seconds, dev, precision) -> P.ExtractReport:
    own, kids = P.peak_rss_mb()
    failures = sink.failures()
    filled = sink.filled
    return P.ExtractReport(
        out=out, rank=env.rank, world_size=env.world_size, rows_total=int(sink.n_rows),
        done=stats.rows_done, failed=stats.rows_failed, skipped=int(skipped), seconds=seconds,
        img_per_s=(stats.rows_done + stats.rows_failed) / seconds if seconds > 0 else 0.0,
        peak_rss_mb=own, peak_rss_workers_mb=kids, gpu_max_allocated_mb=P.gpu_peak_mb(dev),
        store_filled=int(filled.sum()), store_failed=len(failures), complete=bool(sink.done_units().all()),
        failures=failures, device=str(dev), precision=precision,
    )


def _chunk_rows(rows_per_shard: int) -> int:
    """Chunk rows dividing a user-chosen shard: ~1k-row chunks (fast whole reads) when the shard is bigger."""
    for rows in (1024, 512, 256, 128, 64):
        if rows_per_shard > rows and rows_per_shard % rows == 0:
            return rows
    return rows_per_shard


def _precision_label(bb, dev) -> str:
    from embedkit.backbones.base import PRECISION_LABELS

    label = getattr(bb, "precision", None)
    if isinstance(label, str) and label:
        return PRECISION_LABELS.get(label, label)
    return "bf16-autocast" if dev.type == "cuda" else "fp32"


def _compile(bb) -> None:
    """torch.compile the module behind the backbone (dynamic=False: one resolution per run)."""
    import torch

    module = getattr(bb, "module", None) or getattr(bb, "model", None)
    if module is None:
        raise ExtractionError("This backbone does not expose its module; run without --compile.")
    compiled = torch.compile(module, dynamic=False)
    for attr in ("module", "model"):
        if getattr(bb, attr, None) is module:
            setattr(bb, attr, compiled)
            return
