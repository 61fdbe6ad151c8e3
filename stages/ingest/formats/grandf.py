"""GLaMM's GranDf GCG JSON: a list of records (or a dict holding one list) with ``file_name`` (or ``image``,
which the official Diffusion-CAM code reads), ``height``, ``width``, ``caption`` and
``groundings{phrase: {token_positives: [start, end], rle_masks: [...]}}``. Label = grounding index + 1."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.errors import DcamError
from stages.ingest.masks import merge_rles, normalise_rle
from stages.ingest.records import (
    Rejected,
    caption_text,
    check_limit,
    check_size,
    collect,
    image_size,
    inside,
    read_json,
    reject,
)
from stages.ingest.registry import DatasetFormat, LoadRequest, Probe
from stages.ingest.sample import LoadResult, ObjectRecord, Sample


def _grandf_list(data: Any, path: Path) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    raise DcamError(f"{path} is not a GranDf file: expected a list of records or an object holding one list")


def load_grandf(path: str | os.PathLike, *, images: str | os.PathLike | None = None, limit: int | None = None,
                allow_outside_paths: bool = False) -> LoadResult:
    """Load GLaMM's GranDf GCG annotations.

    Parameters
    ----------
    path : str or os.PathLike
        The GranDf JSON (e.g. ``GranDf_HA_GCG_train.json``).
    images : str or os.PathLike, optional
        Image directory (e.g. ``GranDf_HA_images/train``); default: the JSON's directory.
    limit : int, optional

    Returns
    -------
    LoadResult
        One object per grounding, label = its index + 1 in the record's ``groundings`` order, phrase and
        ``token_positives`` kept (checked to lie inside the caption). A grounding with several
        ``rle_masks`` gets their union (the official code reads only the first). Image name from
        ``file_name``, falling back to ``image``; sample id = its stem.
    """
    check_limit(limit)
    path = Path(path)
    records = _grandf_list(read_json(path, "GranDf file"), path)
    image_dir = Path(images) if images is not None else path.parent
    if not image_dir.is_dir():
        raise DcamError(f"image directory not found: {image_dir}")

    def builder(record: dict, name: str) -> Callable[[], Sample]:
        def build() -> Sample:
            height, width = int(record["height"]), int(record["width"])
            image = inside(image_dir, name, "image", allow_outside_paths)
            check_size((height, width), image_size(image, "image"), f"image {name}")
            caption = caption_text(record["caption"], "caption")
            groundings = record["groundings"]
            if not isinstance(groundings, dict):
                raise Rejected("groundings is not an object {phrase: grounding}")
            objects = []
            for index, (phrase, grounding) in enumerate(groundings.items()):
                start, end = (int(v) for v in grounding["token_positives"])
                if not 0 <= start < end <= len(caption):
                    raise Rejected(f"grounding {phrase!r}: token_positives [{start}, {end}] outside the caption ({len(caption)} chars)")
                masks = grounding["rle_masks"]
                if not isinstance(masks, list) or not masks:
                    raise Rejected(f"grounding {phrase!r} has no rle_masks")
                try:
                    rle = merge_rles([normalise_rle(m, height, width) for m in masks])
                except Rejected as e:
                    raise Rejected(f"grounding {phrase!r}: {e}") from None
                objects.append(ObjectRecord(label=index + 1, name=str(phrase), phrase=str(phrase),
                                            token_positives=(start, end), mask_rle=rle))
            return Sample(
                sample_id=Path(name).stem, image_path=str(image.resolve()), height=height, width=width,
                captions=[caption], objects=objects, source="grandf",
                categories={o.name: o.label for o in objects},
            )

        return build

    entries = []
    for index, record in enumerate(records):
        name = record.get("file_name", record.get("image")) if isinstance(record, dict) else None
        if isinstance(name, str) and name:
            entries.append((Path(name).stem, builder(record, name)))
        else:
            entries.append((f"record-{index}", reject("record has neither 'file_name' nor 'image'")))
    return collect(entries, limit, file=path.name, items="records")


def _load(request: LoadRequest) -> LoadResult:
    return load_grandf(request.need_path("grandf"), images=request.images, limit=request.limit,
                       allow_outside_paths=request.allow_outside_paths)


def _detect(probe: Probe) -> bool:
    if not probe.is_file:
        return False
    data = probe.json
    lists = [v for v in data.values() if isinstance(v, list)] if isinstance(data, dict) else []
    records = data if isinstance(data, list) else (lists[0] if len(lists) == 1 else [])
    return bool(records) and isinstance(records[0], dict) and "groundings" in records[0]


FORMAT = DatasetFormat(
    name="grandf", detect=_detect, load=_load, looks_like="a GranDf JSON file (records with groundings)",
)
