"""``dcam refine``: run post-processing modules on a stack of maps stored as .npy."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.options import UsageError, check_at_least, require, split_list
from schemas.errors import DcamError

_DEFAULT_MODULES = "akd,dacg,cba,normalize,sicd"


def _help() -> str:
    from stages.refine.chain import MODULES

    lines = "\n".join(f"  {name:<12} {step.summary}" for name, step in MODULES.items())
    return (
        "Apply post-processing modules, in the given order, to maps of shape (n, h, w) or (h, w) "
        "saved with numpy.save; writes the result with the same shape and dtype.\n\n"
        "\b\nModules:\n" + lines + "\n\n"
        "The official chain is akd,dacg,cba,normalize,sicd (it clips and min-max normalises between "
        "CBA and SICD). Profiles: 'reference' reproduces the official code, 'paper' follows the paper "
        "where the code diverges (adaptive AKD kernel, a real DACG blur, SICD on repeated words)."
    )


def _json_list(path: Path | None, option: str, item_type: type, n_maps: int) -> list | None:
    """A JSON list shared by all maps, or a list of lists (one per map); returns one entry per map."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DcamError(f"{option} {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise DcamError(f"cannot read {option} {path} as JSON: {e}") from None
    kind = item_type.__name__
    if not isinstance(data, list):
        raise DcamError(f"{option} must hold a JSON list of {kind} or a list of such lists, got {type(data).__name__}")

    def valid(items) -> bool:
        return isinstance(items, list) and all(isinstance(v, item_type) and not isinstance(v, bool) for v in items)

    if valid(data):
        return [data] * n_maps
    if all(valid(row) for row in data):
        if len(data) != n_maps:
            raise DcamError(f"{option} holds {len(data)} lists but the input has {n_maps} maps")
        return data
    raise DcamError(f"{option} must hold a JSON list of {kind} or a list of such lists (one per map)")


def refine(
    input_path: Path = typer.Option(..., "--input", help="Maps saved with numpy.save, shape (n, h, w) or (h, w)."),
    output_path: Path = typer.Option(..., "--output", help="Where to write the refined maps (.npy); never the input file."),
    modules: list[str] = typer.Option([_DEFAULT_MODULES], "--modules", help="Module names, repeated or comma-separated, applied left to right."),
    profile: str = typer.Option("reference", "--profile", help="'reference' (official code) or 'paper'."),
    token_ids: Path = typer.Option(None, "--token-ids", help="JSON list of generated token ids (shared) or list of lists (one per map); SICD, reference profile."),
    words: Path = typer.Option(None, "--words", help="JSON list of generated words (shared) or list of lists (one per map); SICD, paper profile."),
    num_steps: int = typer.Option(None, "--num-steps", help="Number of denoising steps (AKD, paper profile)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the AKD jitter (reference profile), >= 0."),
) -> None:
    import numpy as np

    from stages.refine import PROFILES, MapContext
    from stages.refine.chain import MODULES, apply_chain

    names = split_list(modules)
    unknown = [m for m in names if m not in MODULES]
    if unknown:
        raise UsageError(f"unknown module(s) {', '.join(unknown)} in --modules; known: {', '.join(MODULES)}")
    if profile not in PROFILES:
        raise UsageError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    check_at_least(seed, 0, "--seed")
    check_at_least(num_steps, 1, "--num-steps")
    require(input_path.is_file(), "--input", f"{input_path} does not exist or is not a file")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise UsageError(f"--output {output_path} is the input file; refusing to overwrite it")
    require(output_path.parent.is_dir(), "--output", f"directory {output_path.parent} does not exist")
    require(not output_path.is_dir(), "--output", f"{output_path} is a directory; give a .npy file name")
    from schemas.limits import load_npy

    maps = load_npy(input_path, "--input")
    if not isinstance(maps, np.ndarray) or maps.ndim not in (2, 3) or 0 in maps.shape:
        shape = getattr(maps, "shape", None)
        raise DcamError(f"--input must hold maps of shape (n, h, w) or (h, w), got shape {shape}")
    n_maps = 1 if maps.ndim == 2 else maps.shape[0]
    ids = _json_list(token_ids, "--token-ids", int, n_maps)
    texts = _json_list(words, "--words", str, n_maps)
    contexts = [
        MapContext(
            generated_ids=None if ids is None else ids[i],
            words=None if texts is None else texts[i],
            num_steps=num_steps,
            seed=seed,
        )
        for i in range(n_maps)
    ]
    try:
        refined = apply_chain(maps, names, profile=profile, contexts=contexts)
    except ValueError as e:
        raise DcamError(f"--input {input_path}: {e}") from None
    try:
        with open(output_path, "wb") as f:
            np.save(f, refined)
    except OSError as e:
        raise DcamError(f"--output: cannot write {output_path}: {e.strerror or e}") from None
    shape = "x".join(str(s) for s in maps.shape[-2:])
    typer.echo(f"refined {n_maps} map(s) of {shape} with {','.join(names) or 'no modules'} ({profile} profile) -> {output_path}")


def register(app: typer.Typer) -> None:
    """Add the ``refine`` command to the ``dcam`` app."""
    app.command("refine", help=_help(), no_args_is_help=True)(refine)
