"""``dcam report``: the self-contained HTML report (and publication PNGs) of an explain run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.options import check_at_least, check_choice, require, split_list


def report(
    run: Path = typer.Argument(..., help="Artifact root of 'dcam explain' (the directory holding run.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: RUN/report)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Show only the first N samples, in sample-id order (default: all)."),
    preset: Optional[list[str]] = typer.Option(None, "--preset", help="Presets (methods) to show, repeated or comma-separated (default: every preset of the run)."),
    cmap: str = typer.Option("jet", "--cmap", help="Colour map of the overlays: jet or viridis (maps ReLU'd, / max, as scored), diverging (raw signed maps)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier report at --out."),
) -> None:
    """Write report.html (opens offline), overlays/<preset>/*.png and ablation.png for an explain run."""
    from flows.progress import progress_bar
    from stages.report.build import CMAPS, NOT_A_RUN, RUN_FILE, build_report, read_run

    check_at_least(limit, 1, "--limit")
    check_choice(cmap, tuple(CMAPS), "--cmap")
    names = split_list(preset)
    require(names is None or bool(names), "--preset", "expected preset names, got an empty list")
    require((run / RUN_FILE).is_file(), "RUN", f"{run}: {NOT_A_RUN}")
    known = list(read_run(run)["presets"])
    unknown = [n for n in names or [] if n not in known]
    require(not unknown, "--preset", f"unknown preset(s) {', '.join(unknown)}: this run has {', '.join(known)}")
    target = out if out is not None else run / "report"
    require(overwrite or not target.is_dir() or not any(target.iterdir()), "--out",
            f"{target} exists; pass --overwrite to replace the report there")
    with progress_bar("report", None) as progress:
        path = build_report(run, out, max_samples=limit, methods=names, cmap=cmap, overwrite=overwrite,
                            progress=lambda done, total: progress.update(done, total))
    size = path.stat().st_size / 2**20
    typer.echo(f"report: {path} ({size:.1f} MiB)")


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``dcam`` app."""
    app.command("report")(report)
