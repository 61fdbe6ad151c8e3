"""``dcam score-map`` (score any map against any mask) and ``dcam ingest`` (normalise a dataset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from flows.options import UsageError, check_choice, require
from schemas.errors import DcamError

#: How many rejection reasons ``dcam ingest`` prints.
SHOWN_REASONS = 5


#: The first bytes of a .npy file, and of files often given in its place (what to call them in an error).
NPY_MAGIC = b"\x93NUMPY"
_OTHER_FORMATS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"PK\x03\x04": "a zip archive (.npz?)",
                  b"\x80": "a Python pickle"}


def _read_heatmap(path: Path):
    require(path.exists(), "--heatmap", f"file not found: {path}")
    require(not path.is_dir(), "--heatmap", f"{path} is a directory, not a .npy file")
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        what = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), "not a .npy file")
        raise DcamError(f"--heatmap: {path} is {what}; expected a 2-D array saved with numpy.save")
    from schemas.limits import load_npy

    heat = load_npy(path, "--heatmap")
    if heat.ndim != 2:
        raise DcamError(f"--heatmap: expected a 2-D map (h, w), got shape {heat.shape} in {path}")
    return heat


def _read_mask(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    require(path.exists(), "--mask", f"file not found: {path}")
    require(not path.is_dir(), "--mask", f"{path} is a directory, not a PNG file")
    try:
        with Image.open(path) as im:
            mode = im.mode
            mask = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise DcamError(f"--mask: {path} is not an image: {e}") from None
    if mask.ndim != 2 or mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise DcamError(f"--mask: expected a single-channel label PNG (pixel = object label), got mode {mode} in {path}")
    return mask.astype(np.int32)


def score_map_command(
    heatmap: Path = typer.Option(..., "--heatmap", help="Map as a 2-D .npy array in [0, 1] at any resolution (values outside are clipped)."),
    mask: Path = typer.Option(..., "--mask", help="Semantic mask PNG: pixel = object label, 0 = background."),
    label: Optional[int] = typer.Option(None, "--label", help="Score against this object only (default: best-matching object)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Score one map against one mask with the paper's protocol (Otsu Obj-IoU, Contrast, Concentration, F3) and the pointing game."""
    import numpy as np

    from stages.score.metrics import labels_present, score_map

    heat = _read_heatmap(heatmap)
    sem = _read_mask(mask)
    if not np.isfinite(heat).all():
        raise DcamError(f"--heatmap: {heatmap} contains NaN or infinite values")
    if label is not None and label not in set(labels_present(sem).tolist()):
        present = ", ".join(map(str, labels_present(sem).tolist())) or "none"
        raise UsageError(f"--label: label {label} is not present in {mask} (labels present: {present})")
    try:
        scores = score_map(heat, sem, label=label)
    except ValueError as e:
        raise DcamError(str(e)) from None
    if as_json:
        typer.echo(json.dumps({k: (None if np.isnan(v) else v) for k, v in scores.items()}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{heatmap.name} vs {mask.name}" + ("" if label is None else f" (label {label})"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in scores.items():
        shown = "nan" if np.isnan(value) else f"{int(value)}" if name in ("label", "otsu_threshold") else f"{value:.4f}"
        table.add_row(name, shown)
    Console().print(table)


def ingest_command(
    path: Path = typer.Argument(..., help="Dataset directory or annotation file (raw COCO: the instances JSON or any path with --instances)."),
    out: Path = typer.Option(..., "--out", help="Output directory of the normalised dataset."),
    fmt: Optional[str] = typer.Option(None, "--format", help="A registered dataset format: coco-tam, coco, grandf, tam-anno, synthetic, ingested, or any format a plugin file registers (stages/ingest/formats/; default: detected from the files)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Load at most this many samples."),
    instances: Optional[Path] = typer.Option(None, "--instances", help="Raw COCO: instances JSON."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Raw COCO: captions JSON."),
    images: Optional[Path] = typer.Option(None, "--images", help="Raw COCO or GranDf: image directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier ingest in --out."),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="Read images and masks the annotations place outside the dataset folder (absolute, or with ..); refused per sample otherwise."),
) -> None:
    """Read a dataset (COCO-TAM, raw COCO, GranDf, TAM anno.json, synthetic) into the normalised sample manifest."""
    from flows.progress import progress_bar
    from stages.ingest.loaders import ingest

    from stages.ingest import format_names

    check_choice(fmt, format_names(), "--format")
    if not path.exists():
        raise UsageError(f"dataset not found: {path}")
    with progress_bar("ingest", None) as bar:
        manifest = ingest(path, out, fmt=fmt, limit=limit, instances=instances, captions=captions, images=images,
                          allow_outside_paths=allow_outside_paths or None, overwrite=overwrite,
                          progress=lambda done, total: bar.update(done, total))
    typer.echo(f"loaded {manifest.n_ok} samples, rejected {manifest.n_failed} -> {out}")
    for status in manifest.failed()[:SHOWN_REASONS]:
        typer.echo(f"  rejected {status.sample_id}: {status.reason}")
    if manifest.n_failed > SHOWN_REASONS:
        typer.echo(f"  ... {manifest.n_failed - SHOWN_REASONS} more in {out / 'manifest.json'}")


def register(app: typer.Typer) -> None:
    """Add ``score-map`` and ``ingest`` to the ``dcam`` app."""
    app.command("score-map")(score_map_command)
    app.command("ingest")(ingest_command)
