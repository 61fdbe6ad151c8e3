"""``dcam data``: make datasets in the COCO Caption layout (``schemas/LAYOUT.md``, ``dataset``)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.options import check_at_least

data_app = typer.Typer(
    name="data",
    help="Make datasets in the COCO Caption layout that every later stage reads.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Output directory (created; must be empty unless --overwrite)."),
    count: int = typer.Option(..., "--count", help="Number of images (>= 1)."),
    seed: int = typer.Option(..., "--seed", help="Dataset seed (>= 0); the same seed writes byte-identical files."),
    size: int = typer.Option(96, "--size", help="Image height and width in pixels (>= 48)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier dataset in --out."),
) -> None:
    """Write a synthetic grounded dataset: 1-3 coloured shapes per image with exact masks and a caption.

    Writes, under --out: annotations/instances_minival2014.json (COCO instances: one RLE-segmented
    annotation per object, category = shape, plus its colour), annotations/captions_val2014.json (one
    caption per image naming the objects left to right, e.g. "a red circle , a blue square and a green
    triangle"), image/{id:012d}.jpg, seg_label/{id:012d}.png (pixel value = category id, 0 = background)
    and manifest.json. Image ids start at 1; the first N images of a larger set with the same seed equal
    a set of N.
    """
    check_at_least(count, 1, "--count")
    check_at_least(seed, 0, "--seed")
    check_at_least(size, 48, "--size")  # smaller shapes are not told apart

    from flows.progress import progress_bar
    from stages.synth.write import write_dataset

    with progress_bar("synth", count) as advance:
        manifest = write_dataset(out, count=count, seed=seed, size=size, overwrite=overwrite, progress=advance)
    typer.echo(f"wrote {manifest.n_ok} images ({size}x{size}, seed {seed}) to {out}  digest {manifest.content_digest[:12]}")


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the ``dcam`` app."""
    app.add_typer(data_app, name="data")
