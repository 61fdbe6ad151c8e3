"""TAM's COCO Caption layout (``method.md`` §2.5): ``annotations/instances_minival2014.json``,
``annotations/captions_val2014.json``, ``image/{id:012d}.jpg``, ``seg_label/{id:012d}.png`` (semantic PNG,
pixel = COCO category id)."""

from __future__ import annotations

import os
from pathlib import Path

from stages.ingest.formats.coco import coco_id, coco_records
from stages.ingest.records import check_limit, collect, read_json
from stages.ingest.registry import DatasetFormat, LoadRequest, Probe
from stages.ingest.sample import LoadResult

TAM_INSTANCES = "annotations/instances_minival2014.json"
TAM_CAPTIONS = "annotations/captions_val2014.json"


def load_coco_tam(root: str | os.PathLike, *, limit: int | None = None, source: str = "coco-tam") -> LoadResult:
    """Load TAM's COCO Caption layout (``method.md`` §2.5).

    Parameters
    ----------
    root : str or os.PathLike
        Directory holding ``annotations/``, ``image/`` and ``seg_label/``.
    limit : int, optional
        Read at most this many images (in the instances file's order; rejected ones count).
    source : str, default "coco-tam"
        Recorded in :attr:`Sample.source`.

    Returns
    -------
    LoadResult
        Labels are COCO category ids; ``mask_path`` is the ``seg_label`` PNG, whose size must equal the image's.
    """
    check_limit(limit)
    root = Path(root)
    instances_path, captions_path = root / TAM_INSTANCES, root / TAM_CAPTIONS
    records = coco_records(
        read_json(instances_path, "instances file"), read_json(captions_path, "captions file"),
        instances_path=instances_path, captions_path=captions_path,
        image_path=lambda im: root / "image" / f"{coco_id(im['id']):012d}.jpg",
        seg_path=lambda im: root / "seg_label" / f"{coco_id(im['id']):012d}.png",
        source=source,
    )
    return collect(records, limit, file=instances_path.name, items="images")


def _load(request: LoadRequest) -> LoadResult:
    return load_coco_tam(request.need_path("coco-tam"), limit=request.limit)


def _detect(probe: Probe) -> bool:
    return probe.has(TAM_INSTANCES)


FORMAT = DatasetFormat(
    name="coco-tam", detect=_detect, load=_load, looks_like=f"a folder holding {TAM_INSTANCES}",
)
