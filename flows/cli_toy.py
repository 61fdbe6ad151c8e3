"""``dcam toy``: train and evaluate the embedded toy dMLLM."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.options import UsageError, check_at_least, check_choice, require

toy_app = typer.Typer(
    help="The embedded toy dMLLM (tiny LLaDA-V/LaViDa-style model trained on synthetic shapes).",
    no_args_is_help=True,
)


@toy_app.command("train")
def train_command(
    out: Path = typer.Option(None, "--out", help="Output directory (default: the bundled weights, stages/toy/weights, replaced only with --overwrite)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, scenes and masks."),
    train_steps: int = typer.Option(None, "--train-steps", help="Optimizer steps (default: the recipe of the bundled weights)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace weights already in --out (the bundled ones included)."),
) -> None:
    """Train the toy dMLLM from scratch; the defaults reproduce the bundled weights."""
    import dataclasses

    from flows.progress import progress_bar
    from stages.toy.model import BUNDLED_WEIGHTS
    from stages.toy.train import TrainRecipe, train

    check_at_least(train_steps, 1, "--train-steps")
    out = BUNDLED_WEIGHTS if out is None else out
    require(not out.exists() or out.is_dir(), "--out", f"{out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        bundled = " (the bundled weights)" if out.resolve() == BUNDLED_WEIGHTS.resolve() else ""
        raise UsageError(f"--out: {out}{bundled} is not empty; pass --overwrite to replace it")
    recipe = TrainRecipe(seed=seed)
    recipe = recipe if train_steps is None else dataclasses.replace(recipe, steps=train_steps)
    with progress_bar("training", recipe.steps) as progress:
        def on_step(step: int, losses: dict, metrics: dict | None) -> None:
            status = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            if metrics is not None:
                status += f"  one-pass exact {metrics['exact']:.3f} colour {metrics['colour']:.3f} shape {metrics['shape']:.3f}"
            progress(1, status)

        model = train(recipe, on_step=on_step)
    model.save_pretrained(out)
    info = model.config.training
    typer.echo(
        f"saved {out} ({info['seconds']} s; held-out one-pass exact match {info['one_pass_exact_match']:.3f}, "
        f"colour {info['one_pass_colour']:.3f}, shape {info['one_pass_shape']:.3f})"
    )


@toy_app.command("eval")
def eval_command(
    data: Path = typer.Option(..., "--data", help="Dataset directory in COCO layout (from 'dcam data synth')."),
    weights: Path = typer.Option(None, "--weights", help="Model directory (default: the bundled weights)."),
    mode: str = typer.Option("full", "--mode", help="full (recompute every step) or prefix-cache (LaViDa)."),
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N images."),
    steps: int = typer.Option(None, "--steps", help="Denoising steps (default: gen_length)."),
    block_length: int = typer.Option(None, "--block-length", help="Semi-autoregressive block length (default: gen_length)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Caption every image with the toy model and print its accuracy."""
    import torch

    from flows.progress import progress_bar
    from stages.dmllm.sampler import validate_schedule
    from stages.toy.evaluate import evaluate, load_samples
    from stages.toy.model import LOGITS_MODES, ToyDMLLM

    check_choice(mode, LOGITS_MODES, "--mode")
    check_at_least(limit, 1, "--limit")
    check_at_least(steps, 1, "--steps")
    check_at_least(block_length, 1, "--block-length")
    require(data.is_dir(), "--data", f"{data} is not a directory")
    samples = load_samples(data, limit=limit)
    require(bool(samples), "--data", f"{data} holds no images")
    # Batch-1 steps of a tiny model are all synchronisation for a second OpenMP thread; on a busy machine
    # 2 threads ran 10-20x slower than 1 (measured: ~1 s vs ~60 ms per forward at load 10).
    torch.set_num_threads(1)
    model = ToyDMLLM.from_pretrained(weights)
    try:
        validate_schedule(
            gen_length=model.gen_length,
            steps=model.gen_length if steps is None else steps,
            block_length=model.gen_length if block_length is None else block_length,
        )
    except ValueError as e:
        raise UsageError(f"--{e}".replace("block_length", "block-length")) from e
    with progress_bar("captioning", len(samples)) as progress:
        result = evaluate(model, samples, mode=mode, steps=steps, block_length=block_length, on_sample=progress)
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"toy dMLLM on {data} ({mode})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``toy`` command group to the ``dcam`` app."""
    app.add_typer(toy_app, name="toy")
