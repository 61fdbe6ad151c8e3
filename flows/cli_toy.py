"""``dcam toy``: train and evaluate the embedded toy dMLLM."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from schemas.errors import DcamError

toy_app = typer.Typer(
    help="The embedded toy dMLLM (tiny LLaDA-V/LaViDa-style model trained on synthetic shapes).",
    no_args_is_help=True,
)


@toy_app.command("train")
def train_command(
    out: Path = typer.Option(None, "--out", help="Output directory (default: the bundled weights, stages/toy/weights)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, scenes and masks."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps (default: the recipe of the bundled weights)."),
) -> None:
    """Train the toy dMLLM from scratch; the defaults reproduce the bundled weights."""
    import dataclasses

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from stages.toy.model import BUNDLED_WEIGHTS
    from stages.toy.train import TrainRecipe, train

    if steps is not None and steps < 1:
        raise DcamError(f"--steps: must be >= 1, got {steps}")
    recipe = TrainRecipe(seed=seed) if steps is None else dataclasses.replace(TrainRecipe(seed=seed), steps=steps)
    out = BUNDLED_WEIGHTS if out is None else out
    if out.exists() and not out.is_dir():
        raise DcamError(f"--out: {out} is a file, not a directory")
    with Progress(
        TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f} aux {task.fields[aux]:.4f}  one-pass {task.fields[acc]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task("train", total=recipe.steps, loss=float("nan"), aux=float("nan"), acc="-")

        def on_step(step: int, losses: dict, metrics: dict | None) -> None:
            fields = dict(losses)
            if metrics is not None:
                fields["acc"] = f"exact {metrics['exact']:.3f} colour {metrics['colour']:.3f} shape {metrics['shape']:.3f}"
            progress.update(task, advance=1, **fields)

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
    from rich.progress import Progress

    from stages.dmllm.sampler import validate_schedule
    from stages.toy.evaluate import evaluate, load_samples
    from stages.toy.model import LOGITS_MODES, ToyDMLLM

    if mode not in LOGITS_MODES:
        raise DcamError(f"--mode: expected one of {', '.join(LOGITS_MODES)}, got {mode!r}")
    if limit is not None and limit < 1:
        raise DcamError(f"--limit: must be >= 1, got {limit}")
    samples = load_samples(data, limit=limit)
    if not samples:
        raise DcamError(f"--data: {data} holds no images")
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
        raise DcamError(f"--{e}".replace("block_length", "block-length")) from e
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task("captioning", total=len(samples))
        result = evaluate(
            model, samples, mode=mode, steps=steps, block_length=block_length,
            on_sample=lambda: progress.advance(task),
        )
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
