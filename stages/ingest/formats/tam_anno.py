"""TAM's ``anno.json`` (GranDf, OpenPSG): a list of ``[image, caption, seg_png, {name: label}]`` with paths
relative to the file's directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from schemas.errors import DcamError
from stages.ingest.masks import encode_mask, read_label_png
from stages.ingest.records import Rejected, caption_text, check_limit, check_size, collect, image_size, inside, read_json
from stages.ingest.registry import DatasetFormat, LoadRequest, Probe
from stages.ingest.sample import LoadResult, ObjectRecord, Sample

TAM_ANNO = "anno.json"


def load_tam_anno(path: str | os.PathLike, *, limit: int | None = None, allow_outside_paths: bool = False) -> LoadResult:
    """Load TAM's ``anno.json`` (GranDf, OpenPSG in TAM's formatted data).

    Parameters
    ----------
    path : str or os.PathLike
        The ``anno.json`` file, or the directory holding it; image and mask paths are relative to it.
    limit : int, optional

    Returns
    -------
    LoadResult
        One object per ``{name: label}`` entry, its mask ``seg == label`` (which must occur in the PNG);
        the name is kept as the phrase; ``mask_path`` is the seg PNG. Sample id = the image's stem.
    """
    check_limit(limit)
    path = Path(path)
    file = path / TAM_ANNO if path.is_dir() else path
    root = file.parent
    data = read_json(file, "TAM anno.json")
    if not isinstance(data, list):
        raise DcamError(f"{file} is not a TAM anno.json: expected a list of [image, caption, seg, categories]")

    def builder(entry: list) -> Callable[[], Sample]:
        def build() -> Sample:
            if not isinstance(entry, list) or len(entry) != 4:
                raise Rejected("entry is not [image, caption, seg, categories]")
            image_rel, caption, seg_rel, category_dict = entry
            image = inside(root, str(image_rel), "image", allow_outside_paths)
            seg = inside(root, str(seg_rel), "mask", allow_outside_paths)
            height, width = image_size(image, "image")
            check_size((height, width), image_size(seg, "mask"), f"mask {seg.name}")
            caption = caption_text(caption, "caption")
            if not isinstance(category_dict, dict):
                raise Rejected("categories is not an object {name: label}")
            sem = read_label_png(seg)
            objects = []
            for name, label in category_dict.items():
                label = int(label)
                obj = sem == label
                if label <= 0 or not obj.any():
                    raise Rejected(f"label {label} of {name!r} does not occur in {seg.name}")
                objects.append(ObjectRecord(label=label, name=str(name), phrase=str(name), token_positives=None,
                                            mask_rle=encode_mask(obj)))
            return Sample(
                sample_id=Path(str(image_rel)).stem, image_path=str(image.resolve()), height=height, width=width,
                captions=[caption], objects=objects, source="tam-anno",
                categories={o.name: o.label for o in objects}, mask_path=str(seg.resolve()),
            )

        return build

    entries = [
        (Path(str(entry[0])).stem if isinstance(entry, list) and entry else f"entry-{index}", builder(entry))
        for index, entry in enumerate(data)
    ]
    return collect(entries, limit, file=file.name, items="entries")


def _load(request: LoadRequest) -> LoadResult:
    return load_tam_anno(request.need_path("tam-anno"), limit=request.limit,
                         allow_outside_paths=request.allow_outside_paths)


def _detect(probe: Probe) -> bool:
    if probe.is_dir:
        return probe.has(TAM_ANNO)
    data = probe.json if probe.is_file else None
    return isinstance(data, list) and bool(data) and isinstance(data[0], list) and len(data[0]) == 4


FORMAT = DatasetFormat(
    name="tam-anno", detect=_detect, load=_load,
    looks_like=f"a folder holding {TAM_ANNO}, or that file (a list of [image, caption, seg, categories])",
)
