"""``dcam explain``: selection, base maps and post-processing modules from a capture store (CPU only)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.options import UsageError, check_choice, check_device, parse_int_list, require, split_list
from schemas.errors import DcamError


def explain(
    store: Path = typer.Argument(..., help="Capture store written by 'dcam capture'."),
    preset: list[str] = typer.Option(["diffusion-cam"], "--preset", help="Preset(s) to run, repeated or comma-separated; 'all' runs every preset. See 'dcam presets'."),
    out: Path = typer.Option(None, "--out", help="Artifact root (default: explain/ beside the store). Stage outputs go to ROOT/<stage>/<key>."),
    policy: str = typer.Option("unmask-step", "--policy", help="Step selection: unmask-step, first-feasible, last-feasible, all-feasible-mean, explicit."),
    step_indices: list[str] = typer.Option(None, "--step-indices", help="Which denoising steps to explain with --policy explicit, repeated or comma-separated."),
    layers: list[str] = typer.Option(None, "--layers", help="Captured layers to explain, repeated or comma-separated (default: all captured)."),
    data: Path = typer.Option(None, "--data", help="Dataset with ground-truth masks: also score the maps (default: the capture's dataset when --score)."),
    score: bool = typer.Option(False, "--score", help="Score the final maps against the dataset's masks."),
    tam_resize: str = typer.Option("uint8", "--tam-resize", help="How TAM's protocol resizes a map before its Otsu threshold: uint8 (TAM's eval.py, OpenCV fixed point) or float."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Then run the faithfulness stage with its defaults (needs the model: see 'dcam faithfulness', which takes its options)."),
    device: str = typer.Option("cpu", "--device", help="With --faithfulness: where the model runs (cpu, cuda or cuda:N)."),
    only: str = typer.Option(None, "--only", help="Recompute this stage alone in every chain (select, base, refine, threshold, score or a module name such as cba); the stages before it must exist. See 'dcam graph'."),
    start: str = typer.Option(None, "--from", help="Recompute this stage and every stage after it in every chain, even when cached; the stages before it must exist."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: per preset and stage, computed or cached, and the output path (with --faithfulness, its per-method records under 'faithfulness')."),
) -> None:
    """Write the selection, base-map and per-module artifacts of each preset.

    Stages are content-addressed: rerunning with the same inputs recomputes nothing ('cached'); changing one
    module's parameters recomputes that module and the stages after it. The stages are the nodes of one graph
    ('dcam graph'), the same that 'dcam run' and 'dcam demo' walk.
    """
    from flows.options import check_slice_options
    from schemas.capture import CaptureStore
    from stages.chain import as_chain
    from stages.explain.select import POLICIES
    from stages.presets import PRESETS

    # Everything the command line decides is checked before any output directory is made.
    check_choice(policy, POLICIES, "--policy")
    check_choice(tam_resize, ("uint8", "float"), "--tam-resize")
    check_slice_options(only, start)
    if faithfulness:
        check_device(device)
    steps = parse_int_list(step_indices, "--step-indices")
    layer_list = parse_int_list(layers, "--layers")
    if policy == "explicit":
        require(bool(steps), "--step-indices", "needed with --policy explicit")
    else:
        require(not steps, "--step-indices", f"only used with --policy explicit, not {policy}")
    names = split_list(preset)
    require(bool(names), "--preset", "expected at least one preset name")
    names = list(PRESETS) if names == ["all"] else names
    try:
        specs = [as_chain(n) for n in names]
    except DcamError as e:
        raise UsageError(f"--preset: {e}") from None
    require(store.exists(), "STORE", f"{store} does not exist")
    cap = CaptureStore.open(store)
    root = out or store.parent / "explain"
    require(not root.exists() or root.is_dir(), "--out", f"{root} exists and is not a directory")
    dataset = data or (Path(cap.config["data"]) if score else None)
    if dataset is not None and not dataset.exists():
        raise UsageError(f"--data: dataset {dataset} does not exist (pass --data)")
    require(not faithfulness or dataset is not None, "--faithfulness", "needs the masks' dataset: add --score (or --data)")
    from flows.progress import progress_bar
    from stages.graph import run_explain

    with progress_bar("explain", len(specs)) as advance:
        run = run_explain(root, store, specs, policy=policy, layers=layer_list, steps=steps, dataset=dataset,
                          tam_resize=tam_resize, only=only, start=start, on_chain=lambda n: advance(1, n))
    summary = None
    if faithfulness:
        from flows.pipeline import faithfulness_stage
        from stages.faithfulness.stage import FaithfulnessConfig

        summary = faithfulness_stage(root, run, config=FaithfulnessConfig(), device=device,
                                     tam_resize=tam_resize)["summary"]
    if as_json:
        typer.echo(json.dumps({"root": str(root), **run, **({"faithfulness": {"path": run["faithfulness"], **summary}}
                                                            if summary else {})}, indent=2))
        _exit_on_failed_samples(run)
        return
    for name, entry in run["presets"].items():
        typer.echo(f"{name}:")
        for r in entry["stages"]:
            typer.echo(f"  {r['stage']:<10} {r['status']:<8} {r['path']}")
    if summary:
        from flows.cli_run import print_faithfulness

        print_faithfulness(summary)
    typer.echo(f"run description: {root / 'run.json'}")
    _exit_on_failed_samples(run)


def _exit_on_failed_samples(run: dict) -> None:
    """Samples a chain could not explain: named on stderr (the first reasons), exit status 3 (as 'dcam capture')."""
    from schemas.manifest import read_manifest

    failed = {name: read_manifest(entry["maps"]).failed() for name, entry in run["presets"].items() if entry.get("maps")}
    failed = {name: f for name, f in failed.items() if f}
    if not failed:
        return
    for name, samples in failed.items():
        typer.echo(f"{name}: {len(samples)} sample(s) failed; first: {samples[0].sample_id}: {samples[0].reason}",
                   err=True)
    raise typer.Exit(3)


def presets() -> None:
    """List the explain presets: base method, modules in order, profile."""
    from stages.presets import PRESETS

    for p in PRESETS.values():
        chain = " -> ".join(p.steps) + (f" -> threshold {p.threshold:g}" if p.threshold is not None else "")
        typer.echo(f"{p.name:<26} [{p.profile}] {chain}")


def graph(as_json: bool = typer.Option(False, "--json", help="Print the nodes as JSON.")) -> None:
    """List the stage graph's nodes: name, inputs, output, version, where it runs (GPU needs the model).

    Every command walks these nodes; each output lives at ROOT/<stage>/<key>, the key digesting the node's
    version, its config and its inputs' content. '--only STAGE' / '--from STAGE' of 'dcam explain' and
    'dcam run' take the explain nodes' names (select, base, refine, threshold, score) or a module's name.
    """
    from stages.graph import NODES

    rows = [{"node": n.name, "inputs": list(n.inputs), "output": n.output, "version": n.version, "runs_on": n.where,
             "summary": n.summary} for n in NODES.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'node':<13} {'inputs':<28} {'output':<13} {'version':<8} {'runs on':<8} what")
    for r in rows:
        typer.echo(f"{r['node']:<13} {', '.join(r['inputs']) or '-':<28} {r['output']:<13} {r['version']:<8} "
                   f"{r['runs_on']:<8} {r['summary']}")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
    app.command("presets")(presets)
    app.command("graph")(graph)
