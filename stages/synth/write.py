"""Write a deterministic synthetic dataset in the COCO Caption layout of TAM (``schemas/LAYOUT.md``, ``dataset``).

Sample ``i`` (image id ``i + 1``) is rendered from ``np.random.default_rng(SeedSequence([seed, i]))``, so a
dataset depends only on ``(seed, size)`` and the first ``n`` samples of a larger set equal a set of ``n``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from schemas.outdir import prepare_output_dir
from schemas.storage import write_image_atomic, write_text_atomic
from schemas.manifest import ARTIFACT_SCHEMA_VERSIONS, SampleStatus, StageManifest, digest_files, write_manifest
from stages.synth.render import CATEGORIES, render_scene

STAGE_VERSION = "1.0"
INSTANCES_FILE = "annotations/instances_minival2014.json"
CAPTIONS_FILE = "annotations/captions_val2014.json"
IMAGE_DIR = "image"
SEG_LABEL_DIR = "seg_label"
JPEG_QUALITY = 95
#: Scene options of every sample, recorded in the manifest's config.
RENDER_OPTIONS = {"min_objects": 1, "max_objects": 3, "clutter_prob": 0.3}

#: Everything :func:`write_dataset` writes at the top of its directory; ``overwrite`` removes only these.
_LAYOUT_ENTRIES = frozenset({"manifest.json", "annotations", IMAGE_DIR, SEG_LABEL_DIR})


def _prepare(out_dir: Path, *, overwrite: bool) -> None:
    """Make ``out_dir`` an empty directory, removing an earlier dataset only when ``overwrite`` is set."""
    prepare_output_dir(out_dir, own_entries=_LAYOUT_ENTRIES, what="dataset", overwrite=overwrite)


def write_dataset(
    out_dir,
    *,
    count: int,
    seed: int,
    size: int = 96,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> StageManifest:
    """Render ``count`` scenes and write them as a COCO Caption dataset with a manifest.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output directory; created if missing, and must be empty unless ``overwrite``.
    count : int
        Number of images (>= 1); image ids are ``1..count``.
    seed : int
        Dataset seed (>= 0); sample ``i`` uses ``SeedSequence([seed, i])``.
    size : int
        Image height and width in pixels (>= 48).
    overwrite : bool
        Replace an earlier dataset in ``out_dir``. A directory holding anything other than a dataset's
        own entries is refused even then.
    progress : callable, optional
        Called with ``1`` after each sample is written.

    Returns
    -------
    StageManifest
        The manifest written to ``out_dir/manifest.json``; ``content_digest`` covers every other file.

    Raises
    ------
    DcamError
        If ``out_dir`` is not empty (and ``overwrite`` is off) or holds foreign files.
    """
    import pycocotools.mask as mask_utils

    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count: must be an integer >= 1, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 48:
        raise ValueError(f"size: must be an integer >= 48, got {size!r}")
    out_dir = Path(out_dir)
    _prepare(out_dir, overwrite=overwrite)
    for sub in ("annotations", IMAGE_DIR, SEG_LABEL_DIR):
        (out_dir / sub).mkdir()

    started = time.perf_counter()
    images, instances, captions, samples = [], [], [], []
    for i in range(count):
        t0 = time.perf_counter()
        image_id = i + 1
        name = f"{image_id:012d}"
        scene = render_scene(np.random.default_rng(np.random.SeedSequence([seed, i])), size=size, **RENDER_OPTIONS)
        seg_label = np.zeros((size, size), dtype=np.uint8)
        for obj in scene.objects:
            seg_label[obj.mask] = CATEGORIES[obj.shape]
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            instances.append({
                "id": len(instances) + 1,
                "image_id": image_id,
                "category_id": CATEGORIES[obj.shape],
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in obj.bbox],
                "iscrowd": 0,
                "colour": obj.colour,
            })
        # 4:4:4 chroma keeps the object colours from bleeding across mask edges in a 96 px image.
        write_image_atomic(out_dir / IMAGE_DIR / f"{name}.jpg", scene.image, format="JPEG", quality=JPEG_QUALITY,
                           subsampling=0)
        write_image_atomic(out_dir / SEG_LABEL_DIR / f"{name}.png", seg_label, format="PNG")
        images.append({"id": image_id, "file_name": f"{name}.jpg", "height": size, "width": size})
        captions.append({"id": image_id, "image_id": image_id, "caption": scene.caption})
        samples.append(SampleStatus(sample_id=name, status="ok", seconds=round(time.perf_counter() - t0, 6)))
        if progress is not None:
            progress(1)

    categories = [{"id": cid, "name": shape, "supercategory": "shape"} for shape, cid in sorted(CATEGORIES.items(), key=lambda kv: kv[1])]
    write_text_atomic(out_dir / INSTANCES_FILE, json.dumps({"images": images, "annotations": instances,
                                                           "categories": categories}, separators=(",", ":")))
    write_text_atomic(out_dir / CAPTIONS_FILE, json.dumps({"images": images, "annotations": captions}, separators=(",", ":")))
    elapsed = time.perf_counter() - started

    manifest = StageManifest(
        kind="dataset",
        schema_version=ARTIFACT_SCHEMA_VERSIONS["dataset"],
        stage="synth",
        stage_version=STAGE_VERSION,
        config={
            "count": int(count),
            "seed": int(seed),
            "size": int(size),
            **RENDER_OPTIONS,
            "jpeg_quality": JPEG_QUALITY,
            "sample_seed": "SeedSequence([seed, image_id - 1])",
        },
        content_digest=digest_files(out_dir),
        samples=samples,
        timings={"write": round(elapsed, 6)},
    )
    write_manifest(out_dir, manifest)
    return manifest
