"""``dcam explain``: selection, base maps and post-processing modules from a capture store (CPU only)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.options import parse_int_list
from schemas.errors import DcamError


def explain(
    store: Path = typer.Argument(..., help="Capture store written by 'dcam capture'."),
    preset: list[str] = typer.Option(["diffusion-cam"], "--preset", help="Preset(s) to run (repeat the option); 'all' runs every preset. See 'dcam presets'."),
    out: Path = typer.Option(None, "--out", help="Artifact root (default: explain/ beside the store). Stage outputs go to ROOT/<stage>/<key>."),
    policy: str = typer.Option("unmask-step", "--policy", help="Step selection: unmask-step, first-feasible, last-feasible, all-feasible-mean, explicit."),
    steps: str = typer.Option(None, "--steps", help="Steps for --policy explicit, comma-separated."),
    layers: str = typer.Option(None, "--layers", help="Captured layers to explain (default: all captured)."),
    data: Path = typer.Option(None, "--data", help="Dataset with ground-truth masks: also score the maps (default: the capture's dataset when --score)."),
    score: bool = typer.Option(False, "--score", help="Score the final maps against the dataset's masks."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: per preset and stage, computed or cached, and the output path."),
) -> None:
    """Write the selection, base-map and per-module artifacts of each preset.

    Stages are content-addressed: rerunning with the same inputs recomputes nothing ('cached'); changing one
    module's parameters recomputes that module and the stages after it.
    """
    from schemas.capture import CaptureStore
    from stages.explain.runner import chain_from_preset
    from stages.presets import PRESETS

    names = list(PRESETS) if preset == ["all"] else preset
    specs = [chain_from_preset(n) for n in names]
    cap = CaptureStore.open(store)
    root = out or store.parent / "explain"
    dataset = data or (Path(cap.config["data"]) if score else None)
    if dataset is not None and not dataset.exists():
        raise DcamError(f"dataset {dataset} does not exist (pass --data)")
    from flows.progress import progress_bar
    from stages.explain.runner import explain_run

    with progress_bar("explain", len(specs)) as advance:
        run = explain_run(store, root, specs, policy=policy, layers=parse_int_list(layers, "--layers"),
                          steps=parse_int_list(steps, "--steps"), dataset=dataset, on_preset=lambda n: advance(1, n))
    if as_json:
        typer.echo(json.dumps({"root": str(root), **run}, indent=2))
        return
    for name, entry in run["presets"].items():
        typer.echo(f"{name}:")
        for r in entry["stages"]:
            typer.echo(f"  {r['stage']:<10} {r['status']:<8} {r['path']}")
    typer.echo(f"run description: {root / 'run.json'}")


def presets() -> None:
    """List the explain presets: base method, modules in order, profile."""
    from stages.presets import PRESETS

    for p in PRESETS.values():
        chain = " -> ".join([p.base, *p.modules]) if p.modules else p.base
        typer.echo(f"{p.name:<26} [{p.profile}] {chain}")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
    app.command("presets")(presets)
