"""``dcam report``: the self-contained HTML report (and publication PNGs) of an explain run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from schemas.errors import DcamError


def report(
    run: Path = typer.Argument(..., help="Artifact root of 'dcam explain' (the directory holding run.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: RUN/report); an earlier report there is replaced."),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="Show at most this many samples (default: all)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Presets to show, comma-separated (default: every preset of the run)."),
) -> None:
    """Write report.html (opens offline), overlays/<method>/*.png and ablation.png for an explain run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from stages.report.build import NOT_A_RUN, RUN_FILE, build_report

    if not (run / RUN_FILE).is_file():
        raise DcamError(f"{run}: {NOT_A_RUN}")
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
    if names is not None and not names:
        raise DcamError("--methods: expected comma-separated preset names, got an empty list")
    # The total is known only once the run is read, so the bar is driven by (done, total).
    with Progress(TextColumn("report"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("report", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        path = build_report(run, out, max_samples=max_samples, methods=names, progress=progress)
    size = path.stat().st_size / 2**20
    typer.echo(f"report: {path} ({size:.1f} MiB)")


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``dcam`` app."""
    app.command("report")(report)
