"""The output of ``dcam data synth``: the coco-tam layout plus a ``manifest.json`` of kind ``dataset``."""

from __future__ import annotations

import os

from schemas.errors import DcamError
from schemas.manifest import MANIFEST_FILE, read_manifest
from stages.ingest.formats.coco_tam import TAM_INSTANCES, load_coco_tam
from stages.ingest.registry import DatasetFormat, LoadRequest, Probe
from stages.ingest.sample import LoadResult


def load_synthetic(root: str | os.PathLike, *, limit: int | None = None) -> LoadResult:
    """Load the output of ``dcam data synth``: the coco-tam layout with a ``dataset`` manifest.

    Parameters
    ----------
    root : str or os.PathLike
    limit : int, optional

    Returns
    -------
    LoadResult
        As :func:`load_coco_tam`, with source ``"synthetic"``; categories circle, square, triangle, cross.
    """
    manifest = read_manifest(root, kind="dataset")
    if manifest.stage == "ingest":
        raise DcamError(f"{root} is an ingested dataset already; read it with read_ingested")
    return load_coco_tam(root, limit=limit, source="synthetic")


def _load(request: LoadRequest) -> LoadResult:
    return load_synthetic(request.need_path("synthetic"), limit=request.limit)


def _detect(probe: Probe) -> bool:
    return probe.has(TAM_INSTANCES) and probe.has(MANIFEST_FILE)


FORMAT = DatasetFormat(
    name="synthetic", detect=_detect, load=_load, reads_artifact=True,
    looks_like=f"a folder holding {TAM_INSTANCES} and a dataset {MANIFEST_FILE}",
)
