"""Raw COCO 2014/2017: an instances JSON, a captions JSON and an image directory.

Masks come from polygons and from (uncompressed or compressed) RLE, the ``iscrowd`` annotations.
:func:`coco_records` also reads TAM's COCO Caption layout (:mod:`.coco_tam`, :mod:`.synthetic`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.errors import DcamError
from stages.ingest.masks import normalise_rle
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


def coco_records(
    instances: dict, captions: dict, *, instances_path: Path, captions_path: Path,
    image_path: Callable[[dict], Path], seg_path: Callable[[dict], Path] | None, source: str,
) -> list[tuple[str, Callable[[], Sample]]]:
    """The ``(sample_id, build)`` records of a COCO instances file and its captions file (for :func:`collect`).

    Parameters
    ----------
    instances, captions : dict
        The parsed files (``instances_path`` and ``captions_path`` name them in messages).
    image_path, seg_path : callable (image record) -> Path
        Where an image and its semantic mask PNG lie (``seg_path`` None: no PNG, masks from the objects).
    source : str
        Recorded in :attr:`Sample.source`.

    Returns
    -------
    list of (str, callable)
        Sample id ``{image_id:012d}`` and a builder; labels are COCO category ids.

    Raises
    ------
    DcamError
        If a file is not a COCO instances (or captions) file.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(instances, dict) or not isinstance(instances.get(key), list):
            raise DcamError(f"{instances_path} is not a COCO instances file: no '{key}' list")
    if not isinstance(captions, dict) or not isinstance(captions.get("annotations"), list):
        raise DcamError(f"{captions_path} is not a COCO captions file: no 'annotations' list")
    names: dict[int, str] = {}
    for c in instances["categories"]:
        try:
            cid, name = coco_id(c["id"]), str(c["name"])
        except (KeyError, TypeError, ValueError) as e:
            raise DcamError(f"{instances_path} has a malformed category: {e!r}") from None
        if cid in names:
            raise DcamError(f"{instances_path}: category id {cid} is given twice ({names[cid]!r} and {name!r})")
        names[cid] = name
    categories = {name: cid for cid, name in sorted(names.items())}
    anns = by_image(instances["annotations"], instances_path)
    caps = {k: [cap.get("caption") for cap in v] for k, v in by_image(captions["annotations"], captions_path).items()}

    def builder(image: dict, image_id: int) -> Callable[[], Sample]:
        def build() -> Sample:
            height, width = int(image["height"]), int(image["width"])
            path = image_path(image)
            check_size((height, width), image_size(path, "image"), f"image {path.name}")
            mask_path = None
            if seg_path is not None:
                mask_path = seg_path(image)
                check_size((height, width), image_size(mask_path, "mask"), f"mask {mask_path.name}")
            texts = caps.get(image_id, [])
            if not texts:
                raise Rejected("no caption")
            captions_ = [caption_text(t, f"caption {i + 1}") for i, t in enumerate(texts)]
            objects = []
            for ann in anns.get(image_id, []):
                label = coco_id(ann["category_id"])
                if label not in names:
                    raise Rejected(f"annotation {ann.get('id')} has unknown category {label}")
                try:
                    rle = normalise_rle(ann["segmentation"], height, width)
                except Rejected as e:
                    raise Rejected(f"annotation {ann.get('id')}: {e}") from None
                objects.append(ObjectRecord(label=label, name=names[label], phrase=None, token_positives=None, mask_rle=rle))
            return Sample(
                sample_id=f"{image_id:012d}", image_path=str(path.resolve()), height=height, width=width,
                captions=captions_, objects=objects, source=source, categories=categories,
                mask_path=None if mask_path is None else str(mask_path.resolve()),
            )

        return build

    records = []
    for index, image in enumerate(instances["images"]):
        raw = image.get("id") if isinstance(image, dict) else None
        try:
            image_id = coco_id(raw)
            records.append((f"{image_id:012d}", builder(image, image_id)))
        except (TypeError, ValueError):
            records.append((f"image-{index}", reject(f"image id {raw!r} is not an integer")))
    return records


def coco_id(value: Any) -> int:
    """The canonical form of a COCO id: an integer given as a JSON integer, an integral number (``1.0``)
    or a decimal string (``"1"``), so that ids that mean one image are recognised as one."""
    if isinstance(value, bool):
        raise TypeError(f"id {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value.strip())
    raise ValueError(f"id {value!r} is not an integer")


def by_image(annotations: list, path: Path) -> dict[int, list[dict]]:
    """Annotations grouped by their canonical ``image_id``; one that has none refuses the file."""
    out: dict[int, list[dict]] = {}
    for index, ann in enumerate(annotations):
        raw = ann.get("image_id") if isinstance(ann, dict) else None
        try:
            out.setdefault(coco_id(raw), []).append(ann)
        except (TypeError, ValueError):
            raise DcamError(f"{path}: annotations[{index}] has image_id {raw!r}, not an image id") from None
    return out


def load_coco(
    instances: str | os.PathLike, captions: str | os.PathLike, images: str | os.PathLike, *, limit: int | None = None,
    allow_outside_paths: bool = False,
) -> LoadResult:
    """Load raw COCO 2014/2017 annotations.

    Parameters
    ----------
    instances : str or os.PathLike
        ``instances_*.json``; segmentations as polygons or RLE (``iscrowd``), converted with pycocotools
        (``frPyObjects`` + ``merge``, as ``COCO.annToRLE``).
    captions : str or os.PathLike
        ``captions_*.json``.
    images : str or os.PathLike
        Directory holding the ``file_name`` of every image.
    limit : int, optional

    Returns
    -------
    LoadResult
        Labels are COCO category ids; no ``mask_path`` (:func:`load_mask` composes the objects).
    """
    check_limit(limit)
    instances, captions, images = Path(instances), Path(captions), Path(images)
    if not images.is_dir():
        raise DcamError(f"image directory not found: {images}")
    records = coco_records(
        read_json(instances, "instances file"), read_json(captions, "captions file"),
        instances_path=instances, captions_path=captions,
        image_path=lambda im: inside(images, str(im["file_name"]), "image", allow_outside_paths),
        seg_path=None, source="coco",
    )
    return collect(records, limit, file=instances.name, items="images")


def _load(request: LoadRequest) -> LoadResult:
    instances = request.instances if request.instances is not None else request.path
    if instances is None or request.captions is None or request.images is None:
        raise DcamError("raw COCO needs the instances JSON (PATH or --instances), --captions and --images")
    return load_coco(instances, request.captions, request.images, limit=request.limit,
                     allow_outside_paths=request.allow_outside_paths)


def _detect(probe: Probe) -> bool:
    if probe.instances is not None:
        return True
    return probe.is_file and isinstance(probe.json, dict) and {"images", "annotations", "categories"} <= set(probe.json)


FORMAT = DatasetFormat(
    name="coco", detect=_detect, load=_load,
    looks_like="a COCO instances JSON file (images, annotations, categories)",
)
