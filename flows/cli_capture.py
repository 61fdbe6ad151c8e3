"""``dcam capture`` and ``dcam models``: the model-facing stage (GPU at real scale)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.options import check_at_least, check_choice, check_device, parse_int_list, require


def capture(
    data: Path = typer.Option(..., "--data", help="Dataset directory (COCO Caption/TAM layout, GranDf, or 'dcam data synth' output)."),
    out: Path = typer.Option(..., "--out", help="Capture store to write (a Zarr v3 directory); an interrupted run with the same settings resumes."),
    model: str = typer.Option("toy", "--model", help="FAMILY[:PATH]: 'toy' (embedded) or e.g. lavida-llada:/ckpt; see 'dcam models'."),
    layers: list[str] = typer.Option(None, "--layers", help="Blocks to hook, repeated or comma-separated (negative counts from the end); default: the middle block. The last block is refused (zero gradient at image positions)."),
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
    methods: str = typer.Option(None, "--methods", help="Base methods the capture is for, comma-separated (a chain's base, e.g. gradcam,diffusion-cam-base; 'dcam presets' shows each preset's; an unknown name lists them all); it stores the gradient reductions they declare (their union). Default: every registered method's. --store-grads keeps the full gradient, from which any method's can be derived later."),
    record: str = typer.Option("unmask-step", "--record", help="unmask-step: each target's gradients at the step it was unmasked only (what the unmask-step selection policy reads; several times cheaper); all: every step for every target (any policy)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing capture store at --out first."),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="Read images the annotations place outside the dataset folder (absolute, or with ..); refused per sample otherwise."),
) -> None:
    """Run the model's masked-diffusion sampler, hook blocks, and store activations and gradients.

    Per sample and step: the token state, the positions unmasked and their confidences, whether each hooked
    forward contains the whole image span (feasibility); for attribution steps and the hooked layers: image-span
    activations (fp16) and, per target (each generated word and the whole response), Grad-CAM channel weights,
    the gradient reductions the base methods of --methods declare (Grad-CAM and Grad-CAM++ channel weights,
    positive-gradient channel weights, per-position gradient x activation and gradient norm) and the model's own
    logits (TAM).
    --record unmask-step (default) keeps a target's gradients at its unmask step only; --record all at every step.
    Exit status: 0 if every sample was captured, 3 if some failed (reasons in 'dcam inspect').
    """
    # Everything the command line decides is checked before a file is written or a model loaded.
    check_at_least(limit, 1, "--limit")
    check_at_least(steps, 1, "--steps")
    check_at_least(block_length, 1, "--block-length")
    check_choice(mode, ("full", "prefix-cache"), "--mode")
    check_choice(score, ("logit", "contrastive"), "--score")
    check_choice(schedule, ("even", "shift", "dream"), "--schedule")
    check_choice(remasking, ("low_confidence", "random", "entropy"), "--remasking")
    require(top_p is None or 0 < top_p <= 1, "--top-p", f"must be in (0, 1], got {top_p}")
    check_choice(record, ("unmask-step", "all"), "--record")
    check_device(device)
    require(data.exists(), "--data", f"{data} does not exist")
    require(not out.exists() or out.is_dir(), "--out", f"{out} exists and is not a directory")
    from stages.capture.registry import parse_model_spec

    parse_model_spec(model)  # fail fast, before torch is imported
    layer_list = parse_int_list(layers, "--layers")
    method_list = None if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    from stages.capture.config import method_reductions

    method_reductions(method_list)  # an unknown method fails before the data and model are loaded
    from stages.ingest.loaders import load_dataset

    samples, rejected = load_dataset(data, limit=limit)  # the progress total: every sample reports once

    from flows.progress import progress_bar
    from stages.capture.config import family_config
    from stages.capture.registry import load_adapter
    from stages.capture.run import capture_dataset

    adapter = load_adapter(model, device=device)
    config = family_config(adapter, layers=layer_list, steps=steps, block_length=block_length, mode=mode,
                           temperature=temperature, schedule=schedule, remasking=remasking, top_p=top_p, seed=seed,
                           score=score, store_grads=store_grads, record=record, methods=method_list)
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    with progress_bar("capture", len(samples) + len(rejected)) as advance:
        def on_sample(sid: str, status: str) -> None:
            counts[status] += 1
            advance(1, f"ok {counts['ok']} failed {counts['failed']} skipped {counts['skipped']}")

        manifest = capture_dataset(data, out, adapter=adapter, model_spec=model, config=config, limit=limit,
                                   overwrite=overwrite, on_sample=on_sample,
                                   allow_outside_paths=allow_outside_paths or None)
    typer.echo(
        f"captured {manifest.n_ok} samples, {manifest.n_failed} failed ({counts['skipped']} already complete) "
        f"-> {out}  [{config.mode}, layers {list(config.layers)}, {config.steps} steps ({config.schedule}), "
        f"record {config.record}; reductions {', '.join(r.name for r in config.stored_reductions())}]"
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
