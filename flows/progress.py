"""Progress bars for long commands (on stderr, so stdout stays machine-readable)."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def progress_bar(label: str, total: int | None) -> Iterator:
    """A rich progress bar; yields ``advance(n=1, status=None)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(label, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            bar.update(task, advance=n, status=status or "")

        yield advance
