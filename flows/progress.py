"""Progress of long commands, on stderr so stdout stays machine-readable.

On a terminal: a rich bar with the count, elapsed time and ETA. Off a terminal (a pipe, a log file, a
scheduled run): plain lines, ``capture: 3/10 (30%) elapsed 0:00:12 ETA 0:00:28 ok 3 failed 0``, one per
tenth of the work and at least every ``min_interval`` seconds, so a log shows where a run is.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Count work done; ``progress(n=1, status=None)`` advances, :meth:`update` sets the count and total."""

    def __init__(self, label: str, total: int | None, *, bar=None, task=None, stream: TextIO | None = None,
                 min_interval: float = 30.0, clock=time.monotonic):
        self.label, self.total, self.done, self.status = label, total, 0, ""
        self._bar, self._task, self._stream = bar, task, stream
        self._min_interval, self._clock = min_interval, clock
        self._t0 = self._last = clock()
        self._last_tenth = -1

    def __call__(self, n: int = 1, status: str | None = None) -> None:
        self.update(self.done + n, status=status)

    def update(self, done: int, total: int | None = None, *, status: str | None = None) -> None:
        """Set the work done (and the total, once known)."""
        self.done = done
        if total is not None:
            self.total = total
        if status is not None:
            self.status = status
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, status=self.status)
        elif self._stream is not None:
            self._plain_line()

    def line(self, now: float | None = None) -> str:
        """The plain progress line of the current state (at clock reading ``now``, default: the clock's)."""
        elapsed = (self._clock() if now is None else now) - self._t0
        if self.total:
            pct = f" ({100 * self.done / self.total:.0f}%)"
            eta = f" ETA {_clock(elapsed / self.done * (self.total - self.done))}" if self.done else ""
            count = f"{self.done}/{self.total}{pct}"
        else:
            count, eta = f"{self.done}", ""
        status = f" {self.status}" if self.status else ""
        return f"{self.label}: {count} elapsed {_clock(elapsed)}{eta}{status}"

    def _plain_line(self) -> None:
        now = self._clock()
        tenth = int(10 * self.done / self.total) if self.total else -1
        finished = self.total is not None and self.done >= self.total
        if tenth > self._last_tenth or finished or now - self._last >= self._min_interval:
            self._stream.write(self.line(now) + "\n")
            self._stream.flush()
            self._last, self._last_tenth = now, tenth


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, *, stream: TextIO | None = None, plain: bool | None = None,
                 min_interval: float = 30.0) -> Iterator[Progress]:
    """Progress of one command; yields a :class:`Progress`.

    Parameters
    ----------
    label : str
    total : int or None
        Units of work, when known (an ETA needs it); :meth:`Progress.update` can set it later.
    stream : text stream, optional
        Where to write (default stderr).
    plain : bool, optional
        Plain lines instead of a bar; default: when ``stream`` is not a terminal.
    min_interval : float
        Plain lines: the longest silence, in seconds.
    """
    stream = stream if stream is not None else sys.stderr
    plain = not stream.isatty() if plain is None else plain
    if plain:
        yield Progress(label, total, stream=stream, min_interval=min_interval)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    with RichProgress(
        TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(file=stream), transient=True,
    ) as bar:
        yield Progress(label, total, bar=bar, task=bar.add_task(label, total=total, status=""))
