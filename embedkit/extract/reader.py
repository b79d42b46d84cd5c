"""The reader: batches of preprocessed uint8 images, produced in DataLoader worker processes.

A *plan* cuts the pending work units into batches that never straddle a unit, so the writer can hand a unit to
the store as soon as its last batch is mapped. Each dataset item is a whole batch (clip-retrieval's reader shape):
a worker decodes and resizes ``batch_size`` images (or slices them out of an image cache in one read) while the
main process runs the model on the previous batch.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSpec:
    """One batch of the plan: rows ``start:stop`` of work unit ``unit``."""

    unit: int
    start: int
    stop: int


def plan_batches(unit_slices: Sequence[tuple[int, slice]], batch_size: int) -> list[BatchSpec]:
    """Cut units into batches of at most ``batch_size`` rows, unit by unit, in order.

    Parameters
    ----------
    unit_slices : sequence of (unit, slice)
    batch_size : int

    Returns
    -------
    list of BatchSpec

    Examples
    --------
    >>> [(b.start, b.stop) for b in plan_batches([(0, slice(0, 5))], 2)]
    [(0, 2), (2, 4), (4, 5)]
    """
    plan: list[BatchSpec] = []
    for unit, sl in unit_slices:
        for start in range(sl.start, sl.stop, batch_size):
            plan.append(BatchSpec(unit, start, min(sl.stop, start + batch_size)))
    return plan


class FileBatches(Dataset):
    """Decode + ``preset.to_uint8`` image files; unreadable files become empty rows with a reason.

    Parameters
    ----------
    plan : list of BatchSpec
    paths : sequence of str, length N
        Absolute paths, indexed by global row.
    preset : Preset
        ``to_uint8`` runs here, in the worker.

    Items are dicts: ``unit``, ``start``, ``stop`` (int), ``images`` uint8 tensor (b, R, R), ``ok`` bool tensor (b,),
    ``reasons`` list of str (b,).
    """

    def __init__(self, plan: Sequence[BatchSpec], paths: Sequence[str], preset: Any, resolution: int) -> None:
        from embedkit.data import decode_image  # imported before the workers fork, not once per worker

        self._decode = decode_image
        self.plan = list(plan)
        self.paths = np.asarray(paths, dtype=object)
        self.preset = preset
        self.resolution = int(resolution)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict:
        from embedkit.errors import DecodeError

        spec = self.plan[index]
        n = spec.stop - spec.start
        images = np.zeros((n, self.resolution, self.resolution), dtype=np.uint8)
        ok = np.ones(n, dtype=bool)
        reasons = [""] * n
        for i, path in enumerate(self.paths[spec.start:spec.stop]):
            try:
                # preset.load picks the preset's decoder (decode_raw for 'paper', decode_image otherwise).
                images[i] = self.preset.load(path)
            except (DecodeError, OSError) as exc:
                # One bad file must not stop a 10-hour run: record it, leave the row empty, go on.
                ok[i] = False
                # The file's directory may encode identifiers: keep only its base name in the store.
                reasons[i] = _reason(exc).replace(str(path), Path(path).name)
        return _item(spec, images, ok, reasons)


class CacheBatches(Dataset):
    """Slices of an image cache: no decoding, one contiguous read per batch.

    The cache is opened lazily in each worker (zarr handles are not shared across processes).
    """

    def __init__(self, plan: Sequence[BatchSpec], cache_path: str | Path) -> None:
        from stores.image_cache import ImageCache  # noqa: F401 - imported before the workers fork

        self.plan = list(plan)
        self.cache_path = str(cache_path)
        self._cache = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def __getitem__(self, index: int) -> dict:
        from stores.image_cache import ImageCache

        if self._cache is None:
            self._cache = ImageCache.open(self.cache_path)
        spec = self.plan[index]
        sl = slice(spec.start, spec.stop)
        images = self._cache.read(sl)
        filled = np.asarray(self._cache._group["filled"][sl], dtype=bool)
        reasons = [""] * (spec.stop - spec.start)
        if not filled.all():
            why = self._cache.failure_reasons(sl)
            reasons = [("" if f else (str(w) or "not in the image cache")) for f, w in zip(filled, why)]
        return _item(spec, images, filled, reasons)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _item(spec: BatchSpec, images: np.ndarray, ok: np.ndarray, reasons: list[str]) -> dict:
    return {
        "unit": spec.unit,
        "start": spec.start,
        "stop": spec.stop,
        "images": torch.from_numpy(np.ascontiguousarray(images)),
        "ok": torch.from_numpy(ok),
        "reasons": reasons,
    }


def _identity(item: dict) -> dict:
    return item


def make_loader(dataset: Dataset, *, workers: int, pin_memory: bool, prefetch: int = 2) -> DataLoader:
    """A DataLoader yielding whole batches in plan order, ``prefetch`` batches ahead per worker.

    Parameters
    ----------
    dataset : FileBatches or CacheBatches
    workers : int
        Worker processes (0 = read in the main process).
    pin_memory : bool
        Pin the uint8 batches (CUDA) so the host-to-device copy can overlap compute.
    prefetch : int
        Batches each worker keeps ready; bounds memory to ``workers * prefetch`` batches.
    """
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(prefetch_factor=prefetch, persistent_workers=False)
    return DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
        collate_fn=_identity, **kwargs,
    )
