"""The ingest stage: load a dataset in any registered format and write the normalised sample manifest."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from schemas.manifest import (
    ARTIFACT_SCHEMA_VERSIONS,
    MANIFEST_FILE,
    SampleStatus,
    StageManifest,
    digest_files,
    input_ref,
    write_manifest,
)
from schemas.outdir import prepare_output_dir
from schemas.storage import write_image_atomic, write_text_atomic
from stages.ingest.formats.ingested import MASKS_DIR, SAMPLES_FILE
from stages.ingest.masks import load_mask
from stages.ingest.registry import get_format, load_dataset, resolve_format

STAGE_VERSION = "1.0"
#: Largest label a 16-bit mask PNG holds.
MAX_LABEL = 65535


_INGEST_ENTRIES = frozenset({MANIFEST_FILE, SAMPLES_FILE, MASKS_DIR})


def _prepare_out(out_dir: Path, *, overwrite: bool) -> None:
    prepare_output_dir(out_dir, own_entries=_INGEST_ENTRIES, what="ingest", overwrite=overwrite)


def ingest(
    path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    fmt: str | None = None,
    limit: int | None = None,
    instances: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    allow_outside_paths: bool | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> StageManifest:
    """The ingest stage: load a dataset and write the normalised sample manifest.

    Writes ``out_dir/samples.jsonl`` (one :meth:`Sample.to_dict` per line, ``mask_path`` relative to
    ``out_dir``), ``out_dir/masks/{sample_id}.png`` (16-bit semantic masks from :func:`load_mask`, so labels
    up to 65535 survive) and ``manifest.json`` (kind ``dataset``, stage ``ingest``, every sample ok or failed
    with its reason, content digest of the other files).

    Parameters
    ----------
    path, fmt, limit, instances, captions, images, allow_outside_paths
        As :func:`load_dataset`.
    out_dir : str or os.PathLike
        Created if missing; must be empty unless ``overwrite``.
    overwrite : bool, default False
        Replace an earlier ingest in ``out_dir`` (nothing else is ever removed).
    progress : callable, optional
        Called as ``progress(done, total)`` after each sample's mask is written.

    Returns
    -------
    StageManifest
    """
    started = time.perf_counter()
    out = Path(out_dir)
    fmt = resolve_format(path, fmt, instances)
    result = load_dataset(path, fmt=fmt, limit=limit, instances=instances, captions=captions, images=images,
                          allow_outside_paths=allow_outside_paths)
    loaded = time.perf_counter()
    _prepare_out(out, overwrite=overwrite)
    (out / MASKS_DIR).mkdir()
    statuses: list[SampleStatus] = []
    lines: list[str] = []
    for done, sample in enumerate(result.samples, start=1):
        t0 = time.perf_counter()
        try:
            mask = load_mask(sample)
            if mask.max(initial=0) > MAX_LABEL:
                raise ValueError(f"label {int(mask.max())} does not fit a 16-bit mask")
        except (ValueError, OSError) as e:
            statuses.append(SampleStatus(sample_id=sample.sample_id, status="failed", reason=f"mask: {e}"))
        else:
            rel = f"{MASKS_DIR}/{sample.sample_id}.png"
            write_image_atomic(out / rel, mask.astype(np.uint16), format="PNG")
            record = sample.model_dump()
            record["mask_path"] = rel
            lines.append(json.dumps(record, separators=(",", ":")))
            statuses.append(SampleStatus(sample_id=sample.sample_id, status="ok", seconds=round(time.perf_counter() - t0, 6)))
        if progress is not None:
            progress(done, len(result.samples))
    statuses += [SampleStatus(sample_id=sid, status="failed", reason=reason) for sid, reason in result.rejected]
    write_text_atomic(out / SAMPLES_FILE, "".join(line + "\n" for line in lines))

    source = {"instances": instances, "captions": captions, "images": images, "path": path}
    inputs = {"dataset": input_ref(path, kind="dataset")} if get_format(fmt).reads_artifact else {}
    manifest = StageManifest(
        kind="dataset",
        schema_version=ARTIFACT_SCHEMA_VERSIONS["dataset"],
        stage="ingest",
        stage_version=STAGE_VERSION,
        config={"format": fmt, "limit": limit, **{k: None if v is None else str(Path(v).resolve()) for k, v in source.items()}},
        inputs=inputs,
        content_digest=digest_files(out),
        samples=statuses,
        timings={"load": round(loaded - started, 6), "write": round(time.perf_counter() - loaded, 6)},
    )
    write_manifest(out, manifest)
    return manifest
