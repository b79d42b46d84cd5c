"""The extraction engine: reader (DataLoader workers) -> mapper (backbone) -> writer (store units, ledgered).

Entry points: :func:`embedkit.extract.run.run_extract` and :func:`embedkit.extract.run.run_cache_images` (the CLI and
:mod:`embedkit.api` call them), configured by :class:`~embedkit.extract.options.ExtractOptions` /
:class:`~embedkit.extract.options.CacheOptions`. Names resolve lazily so that importing this package does not import
torch.

What each module holds, top down (a module imports only modules listed below it, function-level imports
included; ``tests/test_architecture.py`` checks that there is no cycle):

- ``run``: the two entry points; each builds the provenance and the store's create arguments for its command.
- ``pipeline``: the steps both commands share: open the sink on rank 0 first, run this rank's pending units,
  report (:class:`ExtractReport`), preset and provenance blocks.
- ``options``: the frozen, self-validating options of both commands (the one place option values are checked).
- ``source``: where rows come from (a manifest or an image cache): ids, labels, split, metadata, dataset spec.
- ``reader``: the batch plan and the DataLoader datasets that decode (files) or slice (cache) batches in workers.
- ``mapper``: backbone forward over uint8 batches (asynchronous device-to-host copies on CUDA).
- ``engine``: the runner loop (reader -> mapper -> writer thread, whole units to the ledgered sink), the image
  mapper of ``cache-images`` and the ``Sink`` protocol.
- ``dist``: rank discovery (torchrun, Slurm) and heartbeat barriers.

The names were kept rather than renamed: ``reader`` / ``mapper`` / ``engine`` (the runner) are clip-retrieval's
reader -> mapper -> writer vocabulary that the style guide points to, ``run`` holds the entry points' ``run_*``
functions, and ``pipeline`` the steps they share; renaming would move every import in the application layer,
tests and benchmarks for no change in meaning.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_extract": "embedkit.extract.run",
    "run_cache_images": "embedkit.extract.run",
    "ExtractReport": "embedkit.extract.pipeline",
    "ExtractOptions": "embedkit.extract.options",
    "CacheOptions": "embedkit.extract.options",
    "DistEnv": "embedkit.extract.dist",
    "detect_env": "embedkit.extract.dist",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embedkit.extract' has no attribute {name!r}")
