"""The runner: reader -> mapper -> writer, one work unit at a time (clip-retrieval's shape, with a ledger).

- The reader (a DataLoader over :mod:`embedkit.extract.reader`) prefetches decoded batches in worker processes.
- The mapper turns a uint8 batch into output rows: backbone embeddings (:class:`EmbedMapper`) or the images
  themselves (:class:`ImageMapper`, for the image cache). On CUDA it returns a handle whose device-to-host copy is
  already queued, and the runner collects it only after the next batch is launched, so the GPU never waits on Python.
- The writer thread hands each *complete* unit to the sink (``EmbeddingStore`` or ``ImageCache``: both offer
  ``write_unit``), which writes rows, then the filled mask, then the ledger entry. A unit still being computed is
  never written, so a killed run loses at most the units in flight and the next run redoes only those.

Memory stays bounded: one unit being accumulated, at most one unit queued for writing, and the loader's prefetch.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from embedkit.errors import ExtractionError

logger = logging.getLogger(__name__)

#: Test hook (documented in the README's testing notes): SIGKILL this process after it has written this many
#: units, to exercise resume exactly as a pre-empted job would.
KILL_ENV = "EMBEDKIT_TEST_KILL_AFTER_UNITS"


class Sink(Protocol):
    """What the runner writes to (EmbeddingStore and ImageCache both qualify)."""

    def unit_slice(self, unit: int) -> slice: ...

    def write_unit(self, unit: int, features: Mapping[str, np.ndarray], ok: np.ndarray | None = None,
                   failures: Mapping[int, str] | None = None) -> None: ...


class Mapper(Protocol):
    """Turns a uint8 batch (b, R, R) into output rows."""

    outputs: dict[str, tuple[tuple[int, ...], Any]]  # name -> (row shape, numpy dtype)

    def submit(self, images: Any) -> Any: ...

    def result(self, handle: Any) -> dict[str, np.ndarray]: ...


class ImageMapper:
    """Identity mapper: the preprocessed uint8 images are the output (``cache-images``)."""

    def __init__(self, resolution: int) -> None:
        self.outputs = {"images": ((resolution, resolution), np.uint8)}

    def submit(self, images: Any) -> dict[str, np.ndarray]:
        return {"images": images.numpy()}

    def result(self, handle: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return handle


@dataclass
class RunStats:
    """Counts and timings of one runner call (this process only)."""

    rows_done: int = 0
    rows_failed: int = 0
    units_written: int = 0
    seconds: float = 0.0
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        """Images mapped per second (done + failed rows over wall time)."""
        n = self.rows_done + self.rows_failed
        return n / self.seconds if self.seconds > 0 else 0.0


class _UnitAccumulator:
    def __init__(self, unit: int, sl: slice, outputs: Mapping[str, tuple[tuple[int, ...], Any]]) -> None:
        self.unit = unit
        self.start = sl.start
        n = sl.stop - sl.start
        self.arrays = {k: np.zeros((n, *shape), dtype=dtype) for k, (shape, dtype) in outputs.items()}
        self.ok = np.zeros(n, dtype=bool)
        self.failures: dict[int, str] = {}
        self.remaining = n

    def add(self, start: int, stop: int, feats: Mapping[str, np.ndarray] | None, ok: np.ndarray,
            reasons: list[str]) -> None:
        a, b = start - self.start, stop - self.start
        if feats is not None:
            for k, arr in self.arrays.items():
                arr[a:b] = feats[k]
        self.ok[a:b] = ok
        for i, (good, why) in enumerate(zip(ok, reasons)):
            if not good:
                self.failures[start + i] = why or "unreadable"
        self.remaining -= stop - start


class _Writer:
    """One background thread writing complete units; a queue of one keeps at most two units in memory."""

    def __init__(self, sink: Sink, on_unit: Callable[[int], None] | None) -> None:
        self.sink = sink
        self.on_unit = on_unit
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.written = 0
        kill = os.environ.get(KILL_ENV, "").strip()
        self.kill_after = int(kill) if kill.isdigit() else None
        self.thread = threading.Thread(target=self._loop, name="embedkit-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            acc = self.queue.get()
            if acc is None:
                return
            if self.error is not None:
                continue
            try:
                self.sink.write_unit(acc.unit, acc.arrays, ok=acc.ok, failures=acc.failures)
                self.written += 1
                if self.on_unit is not None:
                    self.on_unit(acc.unit)
                if self.kill_after is not None and self.written >= self.kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc

    def put(self, acc: _UnitAccumulator) -> None:
        self._raise()
        self.queue.put(acc)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def run_units(
    loader: Any,
    mapper: Mapper,
    sink: Sink,
    *,
    lag: int = 1,
    on_rows: Callable[[int], None] | None = None,
    on_unit: Callable[[int], None] | None = None,
) -> RunStats:
    """Map every batch of ``loader`` and write each unit to ``sink`` once all its rows are mapped.

    Parameters
    ----------
    loader : iterable of dict
        Batches from :func:`embedkit.extract.reader.make_loader`, in plan order (units contiguous).
    mapper : Mapper
    sink : Sink
    lag : int
        Batches launched before the oldest one is collected (1 on CUDA: overlap copy-out with compute).
    on_rows : callable(int), optional
        Called with the number of rows mapped after each batch (progress).
    on_unit : callable(int), optional
        Called from the writer thread after a unit is durably written.

    Returns
    -------
    RunStats

    Raises
    ------
    ExtractionError
        The loader yields units out of order (a bug, reported rather than silently mis-writing).
    """
    stats = RunStats()
    writer = _Writer(sink, on_unit)
    inflight: deque = deque()
    acc: _UnitAccumulator | None = None
    t0 = time.perf_counter()

    def collect(item: dict, handle: Any) -> None:
        nonlocal acc
        unit, start, stop = int(item["unit"]), int(item["start"]), int(item["stop"])
        if acc is None or acc.unit != unit:
            if acc is not None:
                raise ExtractionError(f"Unit {acc.unit} was left incomplete before unit {unit}; this is a bug.")
            acc = _UnitAccumulator(unit, sink.unit_slice(unit), mapper.outputs)
        ok = item["ok"].numpy().astype(bool)
        feats = mapper.result(handle) if handle is not None else None
        acc.add(start, stop, feats, ok, item["reasons"])
        n_ok = int(ok.sum())
        stats.rows_done += n_ok
        stats.rows_failed += len(ok) - n_ok
        if on_rows is not None:
            on_rows(len(ok))
        if acc.remaining == 0:
            stats.failures.update(acc.failures)
            writer.put(acc)
            stats.units_written += 1
            acc = None

    try:
        for item in loader:
            handle = mapper.submit(item["images"]) if bool(item["ok"].any()) else None
            inflight.append((item, handle))
            while len(inflight) > lag:
                collect(*inflight.popleft())
        while inflight:
            collect(*inflight.popleft())
    finally:
        writer.close()
    if acc is not None:
        raise ExtractionError(f"Unit {acc.unit} ended with {acc.remaining} rows unmapped; this is a bug.")
    stats.seconds = time.perf_counter() - t0
    return stats
