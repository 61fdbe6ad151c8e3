"""``dcam faithfulness``: occlusion reference maps, deletion / insertion curves and sanity checks for an explain run."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.options import UsageError, check_at_least, check_choice, check_device, require, split_list
from schemas.errors import DcamError


def faithfulness(
    store: Path = typer.Argument(..., help="Capture store written by 'dcam capture'."),
    explain_root: Path = typer.Option(..., "--explain", help="Artifact root of 'dcam explain' on that store (holds run.json)."),
    methods: list[str] = typer.Option(None, "--methods", help="Methods of the run to evaluate, repeated or comma-separated (default: all)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N samples (in sample-id order)."),
    baseline: str = typer.Option("mean", "--baseline", help="What a removed grid cell shows: mean (the image's mean colour) or blur (a blurred copy, as ROAD argues)."),
    points: int = typer.Option(13, "--points", help="Points on each deletion / insertion curve (cells removed in points-1 equal chunks)."),
    targets: str = typer.Option("objects", "--targets", help="objects: the words that name an object in the image (needs the run's dataset); words: every generated word."),
    randomisation_samples: int = typer.Option(4, "--randomisation-samples", help="Samples of the cascading model-randomisation check (0 skips it)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Perturbed images per forward (raise it on a GPU)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, "--seed", help="Seed of random orders, noise maps and re-initialised weights."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: 'methods' (one record per method) and the stage results."),
) -> None:
    """Does each map show what the model used? Faithfulness next to plausibility.

    For every word that names an object (or every word, --targets words) and every method of the explain run:
    an occlusion reference map (the drop of the word's score when each grid cell is replaced by the baseline,
    at the same token state as the map; stored and scored as the method 'occlusion'), deletion and insertion
    curves in the map's order with their areas normalised by the unperturbed word probability (low deletion
    and high insertion AUC = faithful; a random order gives the floor; 'random' is a noise map), the rank
    agreement with the occlusion map and with the token-norm map at the hooked block, target sensitivity and
    cascading model randomisation (Adebayo et al. 2018). Dataset-level figures carry 95% bootstrap intervals
    over samples; failed sanity checks are flagged. Needs the model (like capture); outputs are cached by
    content under the explain root, and run.json is updated so 'dcam report ROOT' shows them.
    """
    from stages.faithfulness.perturb import BASELINES
    from stages.faithfulness.stage import TARGETS, FaithfulnessConfig

    check_choice(baseline, BASELINES, "--baseline")
    check_choice(targets, TARGETS, "--targets")
    check_at_least(limit, 1, "--limit")
    check_at_least(points, 3, "--points")
    check_at_least(batch_size, 1, "--batch-size")
    check_at_least(randomisation_samples, 0, "--randomisation-samples")
    check_device(device)
    require(store.exists(), "STORE", f"{store} does not exist")
    run_file = explain_root / "run.json"
    require(run_file.is_file(), "--explain", f"{explain_root} holds no run.json; run 'dcam explain {store}' first")
    try:
        run = json.loads(run_file.read_text())
    except ValueError as e:
        raise DcamError(f"{run_file}: unreadable run description: {e}") from None
    if Path(run.get("store", "")).resolve() != store.resolve():
        raise UsageError(f"--explain: {explain_root} explains {run.get('store')}, not {store}")
    names = split_list(methods)
    config = FaithfulnessConfig(baseline=baseline, points=points, targets=targets, batch_size=batch_size,
                                randomisation_samples=randomisation_samples, seed=seed, limit=limit)
    from flows.pipeline import faithfulness_stage
    from flows.progress import progress_bar
    from stages.faithfulness.run import selection_of

    first = next((m for m in run.get("presets", {}) if m != "occlusion"), None)
    if first is None:
        raise DcamError(f"{run_file}: the run has no method to evaluate")
    n = len(set(selection_of(run, first)[0]["sample_id"]))  # every chain of a run shares its selection
    n = min(n, limit) if limit else n
    with progress_bar("faithfulness", 2 * n) as advance:  # occlusion, then the curves: one tick per sample each
        result = faithfulness_stage(explain_root, run, config=config, methods=names, device=device,
                                    tam_resize=run.get("tam_resize", "uint8"),
                                    progress=lambda stage, sid: advance(1, stage))
    if as_json:
        typer.echo(json.dumps({"root": str(explain_root), "faithfulness": run["faithfulness"],
                               "stages": run["faithfulness_stages"], **result["summary"]}, indent=2))
        return
    for s in run["faithfulness_stages"]:
        typer.echo(f"  {s['stage']:<12} {s['status']:<8} {s['path']}")
    from flows.cli_run import print_faithfulness

    print_faithfulness(result["summary"])
    typer.echo(f"run description: {run_file}")


def register(app: typer.Typer) -> None:
    app.command("faithfulness")(faithfulness)
