"""The output of :func:`stages.ingest.write.ingest` (``samples.jsonl`` + ``masks/``), read back, so later
stages take a raw dataset or an ingested one alike."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from schemas.errors import DcamError
from schemas.manifest import MANIFEST_FILE, read_manifest
from stages.ingest.registry import DatasetFormat, LoadRequest, Probe
from stages.ingest.sample import LoadResult, Sample, first_error

SAMPLES_FILE = "samples.jsonl"
MASKS_DIR = "masks"


def read_ingested(out_dir: str | os.PathLike) -> list[Sample]:
    """Read the samples an :func:`ingest` wrote (the ``ok`` ones), with absolute ``mask_path``.

    Parameters
    ----------
    out_dir : str or os.PathLike

    Returns
    -------
    list of Sample

    Raises
    ------
    DcamError
        If ``out_dir`` is not an ingest artifact or ``samples.jsonl`` is malformed.
    """
    out = Path(out_dir)
    manifest = read_manifest(out, kind="dataset")
    if manifest.stage != "ingest":
        raise DcamError(f"{out} was written by stage '{manifest.stage}', not by ingest; run 'dcam ingest' on it first")
    file = out / SAMPLES_FILE
    if not file.is_file():
        raise DcamError(f"{file} is missing; rerun 'dcam ingest'")
    samples = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            sample = Sample.model_validate_json(line)
        except ValidationError as e:
            if e.errors()[0]["type"] == "json_invalid":
                raise DcamError(f"{file} line {number} is malformed JSON: {first_error(e)}") from None
            raise DcamError(f"{file} line {number} is not a sample record: {first_error(e)}") from None
        if sample.mask_path is None:
            raise DcamError(f"{file} line {number} is not a sample record: mask_path: missing")
        samples.append(sample.model_copy(update={"mask_path": str((out / sample.mask_path).resolve())}))
    return samples


def _load(request: LoadRequest) -> LoadResult:
    return LoadResult(read_ingested(request.need_path("ingested"))[:request.limit], [])


def _detect(probe: Probe) -> bool:
    return probe.has(SAMPLES_FILE) and probe.has(MANIFEST_FILE)


FORMAT = DatasetFormat(
    name="ingested", detect=_detect, load=_load, reads_artifact=True,
    looks_like=f"a folder holding {SAMPLES_FILE} and a dataset {MANIFEST_FILE} (dcam ingest)",
)
