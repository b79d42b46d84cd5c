"""Progress on stderr for long commands: a rich bar in a terminal, a plain line every few seconds otherwise.

A Slurm log (or any file or pipe) cannot show a live bar, and rich shows nothing there until the bar stops, so a
long extract looked dead. :class:`Progress` writes, when stderr is not a terminal, one line per interval::

    extract: 1200/5000 (24.0%), 35.2 img/s, elapsed 0:00:34, ETA 0:01:48

Environment: ``EMBEDKIT_PROGRESS_INTERVAL`` (seconds between plain lines, default 10; 0 = every update) and
``EMBEDKIT_PROGRESS`` (``auto`` default, ``plain`` to force lines in a terminal, ``off``). The CLI owns output:
library code takes a ``progress(done, total)`` callable and never prints.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

DEFAULT_INTERVAL_S = 10.0


def _interval_from_env() -> float:
    text = os.environ.get("EMBEDKIT_PROGRESS_INTERVAL", "")
    try:
        value = float(text) if text.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        value = DEFAULT_INTERVAL_S
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL_S


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Progress of one task on stderr (rank 0 only: pass ``enabled=env.is_main``).

    Parameters
    ----------
    description : str
        What is progressing, e.g. ``"extract"`` or ``"probe linear"``; starts every line.
    total : int, optional
        Units to do; may also be given (or changed) with each :meth:`update`.
    unit : str
        Unit of the rate (``"img"`` -> ``img/s``; ``"epoch"``, ``"step"``).
    enabled : bool
        False: do nothing (other ranks, ``--json`` runs that want a quiet stderr).
    interval : float, optional
        Seconds between plain lines; default ``EMBEDKIT_PROGRESS_INTERVAL`` or 10.
    mode : {"auto", "rich", "plain", "off"}, optional
        Default ``EMBEDKIT_PROGRESS`` or ``auto`` (rich when stderr is a terminal, plain lines otherwise).

    Examples
    --------
    >>> with Progress("probe linear", total=30, unit="epoch") as bar:  # doctest: +SKIP
    ...     for epoch in range(30):
    ...         bar.update(epoch + 1, loss=0.3)

    Also usable directly as the ``progress(done, total)`` hook of :func:`embedkit.extract.run.run_extract`.
    """

    def __init__(self, description: str, *, total: int | None = None, unit: str = "img", enabled: bool = True,
                 interval: float | None = None, mode: str | None = None) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.interval = _interval_from_env() if interval is None else float(interval)
        mode = (mode or os.environ.get("EMBEDKIT_PROGRESS", "auto")).strip().lower()
        if not enabled or mode == "off":
            mode = "off"
        elif mode not in ("rich", "plain"):
            mode = "rich" if _stderr_is_terminal() else "plain"
        self.mode = mode
        self.done = 0
        self._t0: float | None = None
        self._done0 = 0
        self._last_line = -math.inf
        self._printed_done: int | None = None
        self._fields: dict[str, Any] = {}
        self._bar = None
        self._task = None

    # -- the hook ------------------------------------------------------------------------------------------------
    def __call__(self, done: int, total: int | None = None) -> None:
        self.update(done, total)

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Add ``n`` done units (see :meth:`update` for ``fields``)."""
        self.update(self.done + n, **fields)

    def update(self, done: int, total: int | None = None, **fields: Any) -> None:
        """Set the number of done units; ``fields`` (e.g. ``loss=0.31``; a second rate as ``**{"img/s": 35.2}``)
        are shown after the rate."""
        if self.mode == "off":
            return
        now = time.monotonic()
        if self._t0 is None:  # the first call starts the clock: model loading is not part of the rate
            self._t0, self._done0, self._last_line = now, int(done), now
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        self._fields.update(fields)
        if self.mode == "rich":
            self._rich_update()
        elif self.done > 0 and now - self._last_line >= self.interval:
            self._line(now)

    def rate(self, now: float | None = None) -> float:
        """Units per second since the first update (0.0 before any progress)."""
        if self._t0 is None:
            return 0.0
        elapsed = (time.monotonic() if now is None else now) - self._t0
        return (self.done - self._done0) / elapsed if elapsed > 0 else 0.0

    def close(self, *, success: bool = True) -> None:
        """Stop the bar; in plain mode a last line when anything was done (skipped after an error)."""
        if self.mode == "rich" and self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.mode == "plain" and success and self.done > 0 and self._printed_done != self.done:
            self._line(time.monotonic())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)

    # -- output --------------------------------------------------------------------------------------------------
    def format_line(self, now: float | None = None) -> str:
        """The plain line for the current state."""
        now = time.monotonic() if now is None else now
        rate = self.rate(now)
        elapsed = now - self._t0 if self._t0 is not None else 0.0
        if self.total:
            pct = 100.0 * self.done / self.total
            head = f"{self.description}: {self.done}/{self.total} ({pct:.1f}%)"
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            tail = f", elapsed {_hms(elapsed)}, ETA {_hms(eta) if self.done < self.total else '0:00:00'}"
        else:
            head, tail = f"{self.description}: {self.done}", f", elapsed {_hms(elapsed)}"
        extra = "".join(f", {_field(k, v)}" for k, v in self._fields.items())
        return f"{head}, {rate:.1f} {self.unit}/s{extra}{tail}"

    def _line(self, now: float) -> None:
        stream = sys.stderr
        stream.write(self.format_line(now) + "\n")
        stream.flush()
        self._last_line = now
        self._printed_done = self.done

    def _rich_update(self) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=max(self.total or 0, 1), rate="")
        extra = "".join(f" {_field(k, v)}" for k, v in self._fields.items())
        rate = self.rate()
        self._bar.update(self._task, completed=self.done, total=max(self.total or 0, 1),
                         rate=(f"{rate:.1f} {self.unit}/s" if rate else "") + extra)


def _field(name: str, value: Any) -> str:
    """``loss 0.3125``; a rate (a name ending in ``/s``, e.g. ``img/s``) reads ``35.2 img/s``."""
    if name.endswith("/s") and isinstance(value, (int, float)):
        return f"{value:.1f} {name}"
    return f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False
