"""``dcam capture`` and ``dcam models``: the model-facing stage (GPU at real scale)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.options import parse_int_list
from schemas.errors import DcamError


def capture(
    data: Path = typer.Option(..., "--data", help="Dataset directory (COCO Caption/TAM layout, GranDf, or 'dcam data synth' output)."),
    out: Path = typer.Option(..., "--out", help="Capture store to write (a Zarr v3 directory); an interrupted run with the same settings resumes."),
    model: str = typer.Option("toy", "--model", help="FAMILY[:PATH]: 'toy' (embedded) or e.g. lavida-llada:/ckpt; see 'dcam models'."),
    layers: str = typer.Option(None, "--layers", help="Blocks to hook, comma-separated (negative counts from the end); default: the middle block. The last block is refused (zero gradient at image positions)."),
    steps: int = typer.Option(None, "--steps", help="Denoising steps (default: the model's)."),
    block_length: int = typer.Option(None, "--block-length", help="Semi-autoregressive block length; must divide the generation length (default: one block)."),
    mode: str = typer.Option(None, "--mode", help="full: recompute prompt+image+answer every step (LLaDA-V/MMaDA); prefix-cache: image encoded once, gradients flow through the cache (LaViDa). Default: the family's own (toy: full)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (per sample, derived from seed and sample id)."),
    temperature: float = typer.Option(None, "--temperature", help="Gumbel-noise temperature of the sampler (0 = greedy); default: the family's (see 'dcam models')."),
    schedule: str = typer.Option(None, "--schedule", help="Tokens committed per step: even (LLaDA's even split), shift (LaViDa's predict.py, shift 3) or dream (Dream's); default: the family's."),
    remasking: str = typer.Option(None, "--remasking", help="Which masked positions a step commits: low_confidence, random, or entropy (Dream's); default: the family's."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus filtering of the entropy algorithm (1 = none); default: the family's."),
    score: str = typer.Option("logit", "--score", help="logit: each word's token logit at its position (paper intent); contrastive: the official code's vocabulary-sum of token 2 minus token 1."),
    limit: int = typer.Option(None, "--limit", help="Capture only the first N samples."),
    store_grads: bool = typer.Option(False, "--store-grads", help="Also store full per-position gradients (T x N x D per step; large)."),
    record: str = typer.Option("unmask-step", "--record", help="unmask-step: each target's gradients at the step it was unmasked only (what the unmask-step selection policy reads; several times cheaper); all: every step for every target (any policy)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing capture store at --out first."),
) -> None:
    """Run the model's masked-diffusion sampler, hook blocks, and store activations and gradients.

    Per sample and step: the token state, the positions unmasked and their confidences, whether each hooked
    forward contains the whole image span (feasibility); for attribution steps and the hooked layers: image-span
    activations (fp16) and, per target (each generated word and the whole response), Grad-CAM channel weights,
    positive-gradient channel weights, per-position gradient x activation and the model's own logits (TAM).
    --record unmask-step (default) keeps a target's gradients at its unmask step only; --record all at every step.
    Exit status: 0 if every sample was captured, 3 if some failed (reasons in 'dcam inspect').
    """
    if limit is not None and limit < 1:
        raise DcamError(f"--limit must be >= 1, got {limit}")
    if steps is not None and steps < 1:
        raise DcamError(f"--steps must be >= 1, got {steps}")
    if mode not in (None, "full", "prefix-cache"):
        raise DcamError(f"--mode must be 'full' or 'prefix-cache', got {mode!r}")
    if score not in ("logit", "contrastive"):
        raise DcamError(f"--score must be 'logit' or 'contrastive', got {score!r}")
    if schedule not in (None, "even", "shift", "dream"):
        raise DcamError(f"--schedule must be 'even', 'shift' or 'dream', got {schedule!r}")
    if remasking not in (None, "low_confidence", "random", "entropy"):
        raise DcamError(f"--remasking must be 'low_confidence', 'random' or 'entropy', got {remasking!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise DcamError(f"--top-p must be in (0, 1], got {top_p}")
    if record not in ("unmask-step", "all"):
        raise DcamError(f"--record must be 'unmask-step' or 'all', got {record!r}")
    if not data.exists():
        raise DcamError(f"--data: {data} does not exist")
    from stages.capture.registry import parse_model_spec

    parse_model_spec(model)  # fail fast, before torch is imported
    layer_list = parse_int_list(layers, "--layers")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DcamError(f"--device {device}: CUDA is not available on this machine")

    from flows.progress import progress_bar
    from stages.capture.core import family_config
    from stages.capture.registry import load_adapter
    from stages.capture.run import capture_dataset

    adapter = load_adapter(model, device=device)
    config = family_config(adapter, layers=layer_list, steps=steps, block_length=block_length, mode=mode,
                           temperature=temperature, schedule=schedule, remasking=remasking, top_p=top_p, seed=seed,
                           score=score, store_grads=store_grads, record=record)
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    with progress_bar("capture", None) as advance:
        def on_sample(sid: str, status: str) -> None:
            counts[status] += 1
            advance(1, f"ok {counts['ok']} failed {counts['failed']} skipped {counts['skipped']}")

        manifest = capture_dataset(data, out, adapter=adapter, model_spec=model, config=config, limit=limit,
                                   overwrite=overwrite, on_sample=on_sample)
    typer.echo(
        f"captured {manifest.n_ok} samples, {manifest.n_failed} failed ({counts['skipped']} already complete) "
        f"-> {out}  [{config.mode}, layers {list(config.layers)}, {config.steps} steps ({config.schedule}), "
        f"record {config.record}]"
    )
    for s in manifest.failed()[:5]:
        typer.echo(f"  failed {s.sample_id}: {s.reason}")
    if manifest.n_failed:
        raise typer.Exit(3)


def models() -> None:
    """List the model families 'dcam capture --model' accepts and what each needs installed."""
    from stages.capture.registry import FAMILIES

    for fam in FAMILIES.values():
        spec = fam.name if not fam.needs_path else f"{fam.name}:PATH"
        typer.echo(f"{spec}\n    {fam.summary}\n    sampler defaults: {fam.defaults}\n    needs: {fam.needs}")


def register(app: typer.Typer) -> None:
    app.command("capture")(capture)
    app.command("models")(models)
