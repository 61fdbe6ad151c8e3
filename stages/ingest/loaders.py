"""Dataset loaders: real annotation formats -> normalised :class:`Sample` records, and the ingest stage.

Formats (``method.md`` §2.5, §1.6):

``coco-tam``
    TAM's COCO Caption layout: ``annotations/instances_minival2014.json``, ``annotations/captions_val2014.json``,
    ``image/{id:012d}.jpg``, ``seg_label/{id:012d}.png`` (semantic PNG, pixel = COCO category id).
``synthetic``
    The output of ``dcam data synth``: the coco-tam layout plus a ``manifest.json`` of kind ``dataset``.
``coco``
    Raw COCO 2014/2017: an instances JSON, a captions JSON and an image directory. Masks come from
    polygons and from (uncompressed or compressed) RLE, the ``iscrowd`` annotations.
``grandf``
    GLaMM's GranDf GCG JSON: a list of records (or a dict holding one list) with ``file_name`` (or
    ``image``, which the official Diffusion-CAM code reads), ``height``, ``width``, ``caption`` and
    ``groundings{phrase: {token_positives: [start, end], rle_masks: [...]}}``. Label = grounding index + 1.
``tam-anno``
    TAM's ``anno.json`` (GranDf, OpenPSG): a list of ``[image, caption, seg_png, {name: label}]`` with
    paths relative to the file's directory.
``ingested``
    The output of :func:`ingest` (``samples.jsonl`` + ``masks/``), read back by :func:`read_ingested`, so
    later stages take a raw dataset or an ingested one alike.

Every loader returns a :class:`LoadResult` ``(samples, rejected)``. File-level problems (a missing or
malformed annotation file) raise :class:`~schemas.errors.DcamError`; a bad record (missing image or mask
file, a mask whose size differs from its image, an empty caption, an RLE that does not decode, a missing
field) rejects that sample with a reason and the others still load. Nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from schemas.errors import DcamError
from schemas.limits import check_pixels, limits
from schemas.outdir import prepare_output_dir
from schemas.manifest import (
    ARTIFACT_SCHEMA_VERSIONS,
    MANIFEST_FILE,
    SampleStatus,
    StageManifest,
    digest_files,
    input_ref,
    read_manifest,
    write_manifest,
)

FORMATS = ("coco-tam", "coco", "grandf", "tam-anno", "synthetic", "ingested")
STAGE_VERSION = "1.0"
SAMPLES_FILE = "samples.jsonl"
MASKS_DIR = "masks"
TAM_INSTANCES = "annotations/instances_minival2014.json"
TAM_CAPTIONS = "annotations/captions_val2014.json"
TAM_ANNO = "anno.json"
#: Largest label a 16-bit mask PNG holds.
MAX_LABEL = 65535


@dataclass(frozen=True)
class ObjectRecord:
    """One ground-truth object of a sample.

    Attributes
    ----------
    label : int
        Pixel value of the object in the sample's semantic mask (COCO category id; GranDf grounding index + 1).
    name : str
        Category name, or the grounding phrase.
    phrase : str or None
        The grounding phrase (GranDf, TAM anno.json), else None.
    token_positives : tuple of int or None
        ``(char_start, char_end)`` of the phrase in the caption (GranDf), else None.
    mask_rle : dict
        COCO RLE ``{"size": [H, W], "counts": str}`` (compressed, str counts).
    """

    label: int
    name: str
    phrase: str | None
    token_positives: tuple[int, int] | None
    mask_rle: dict


@dataclass(frozen=True)
class Sample:
    """A normalised dataset sample.

    Attributes
    ----------
    sample_id : str
        Unique within the dataset, usable as a file name (COCO: ``{image_id:012d}``; GranDf and TAM anno:
        the image file's stem).
    image_path : str
        Absolute path of the image.
    height, width : int
        Image size, checked against the image file.
    captions : list of str
        Reference captions (non-empty).
    objects : list of ObjectRecord
    source : str
        The format it was read from (:data:`FORMATS`).
    categories : dict of str to int
        Names a generated word is matched against (``stages.ingest.words.classify_word``): every category of
        the dataset for COCO layouts, the sample's phrases for GranDf and TAM anno.json.
    mask_path : str or None
        Semantic mask PNG when the format ships one (coco-tam, synthetic, tam-anno, ingested samples);
        otherwise :func:`load_mask` composes the mask from the objects.
    """

    sample_id: str
    image_path: str
    height: int
    width: int
    captions: list[str]
    objects: list[ObjectRecord]
    source: str
    categories: dict[str, int] = field(default_factory=dict)
    mask_path: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (one line of ``samples.jsonl``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Sample":
        objects = [
            ObjectRecord(
                label=int(o["label"]), name=str(o["name"]), phrase=o.get("phrase"),
                token_positives=None if o.get("token_positives") is None else tuple(int(v) for v in o["token_positives"]),
                mask_rle={"size": [int(v) for v in o["mask_rle"]["size"]], "counts": str(o["mask_rle"]["counts"])},
            )
            for o in data["objects"]
        ]
        return cls(
            sample_id=str(data["sample_id"]), image_path=str(data["image_path"]), height=int(data["height"]),
            width=int(data["width"]), captions=[str(c) for c in data["captions"]], objects=objects,
            source=str(data["source"]), categories={str(k): int(v) for k, v in data.get("categories", {}).items()},
            mask_path=data.get("mask_path"),
        )


class LoadResult(NamedTuple):
    """Loaded samples and rejected ``(sample_id, reason)`` pairs."""

    samples: list[Sample]
    rejected: list[tuple[str, str]]

    def counts(self) -> str:
        """``"loaded N samples, rejected M"``."""
        return f"loaded {len(self.samples)} samples, rejected {len(self.rejected)}"


class _Rejected(Exception):
    """A record that cannot become a sample; the message is the reason."""


# ------------------------------------------------------------------------------------------------ files


def _read_json(path: Path, what: str = "annotation file") -> Any:
    if not path.is_file():
        raise DcamError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DcamError(f"{path} is malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DcamError(f"{path} is not UTF-8 text: {e}") from None
    except RecursionError:
        raise DcamError(f"{path} is nested deeper than the JSON parser follows; refusing it") from None


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """(H, W) of an image file, reading only its header; one of more pixels than the limit is rejected
    (:func:`schemas.limits.check_pixels`)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise _Rejected(f"{what} file missing: {path}")
    try:
        with warnings.catch_warnings():  # PIL warns above 89M pixels; the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
        check_pixels(h, w, f"{what} {path.name}")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise _Rejected(f"{what} file unreadable: {path}: {e}") from None
    except DcamError as e:
        raise _Rejected(str(e)) from None
    return h, w


def _read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            raise ValueError(f"{path} is not a single-channel label PNG (mode {im.mode})")
        return np.asarray(im).astype(np.int32)


# -------------------------------------------------------------------------------------------------- RLE


def rle_counts(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), validating it.

    Parameters
    ----------
    counts : str
        Characters ``'0'..'o'`` (ASCII 48..111), 5 bits per character with a continuation bit; runs from the
        fourth on are stored as differences to the run two before.

    Returns
    -------
    list of int
        Alternating background/foreground run lengths, starting with background.

    Raises
    ------
    ValueError
        On characters outside the alphabet, a truncated last value or a negative run.
    """
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise ValueError("RLE counts end in the middle of a value")
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts hold an invalid character {counts[pos]!r} at {pos}")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"RLE run {len(runs)} is negative ({value})")
        runs.append(value)
    return runs


def _normalise_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a validated compressed RLE."""
    import pycocotools.mask as mask_utils

    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        if not all(isinstance(p, list) and len(p) % 2 == 0 for p in segmentation):
            raise _Rejected("polygon segmentation must be lists of (x, y) coordinate pairs")
        # Parts with fewer than 3 points have no area; pycocotools would read a 4-number part as a box.
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            raise _Rejected("polygon segmentation has no polygon with >= 3 points")
        bound = limits().polygon_coordinate
        try:
            coords = [[float(v) for v in p] for p in polygons]
            # pycocotools walks every edge pixel by pixel: a huge coordinate costs gigabytes, NaN an empty mask
            bad = next((v for p in coords for v in p if not abs(v) <= bound), None)
            if bad is not None:
                raise _Rejected(f"polygon coordinate {bad!r} is not finite or beyond the limit of {bound:g} "
                                "(DCAM_MAX_POLYGON_COORD)")
            rle = mask_utils.merge(mask_utils.frPyObjects(coords, height, width))
        except (TypeError, ValueError) as e:
            raise _Rejected(f"polygon segmentation does not convert: {e}") from None
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise _Rejected(f"mask size {size[0]}x{size[1]} differs from the image size {height}x{width}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE (iscrowd)
            if sum(int(v) for v in counts) != height * width or any(int(v) < 0 for v in counts):
                raise _Rejected(f"uncompressed RLE does not cover the {height}x{width} image")
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts}
        else:
            raise _Rejected(f"RLE counts must be a string or a list, got {type(counts).__name__}")
    else:
        raise _Rejected("segmentation is neither polygons nor an RLE")
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else str(rle["counts"])
    try:
        runs = rle_counts(counts)
    except ValueError as e:
        raise _Rejected(f"RLE fails to decode: {e}") from None
    if sum(runs) != height * width:
        raise _Rejected(f"RLE fails to decode: its runs cover {sum(runs)} pixels, the {height}x{width} image has {height * width}")
    return {"size": [height, width], "counts": counts}


def _merge_rles(rles: list[dict]) -> dict:
    import pycocotools.mask as mask_utils

    if len(rles) == 1:
        return rles[0]
    merged = mask_utils.merge([{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles])
    return {"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode("ascii")}


def _decode(rle: dict) -> np.ndarray:
    import pycocotools.mask as mask_utils

    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}).astype(bool)


def load_instance_masks(sample: Sample) -> np.ndarray:
    """The objects' masks, decoded from their RLEs.

    Parameters
    ----------
    sample : Sample

    Returns
    -------
    ndarray of shape (K, H, W), bool
        One mask per object, in ``sample.objects`` order; shape (0, H, W) without objects.
    """
    if not sample.objects:
        return np.zeros((0, sample.height, sample.width), dtype=bool)
    return np.stack([_decode(o.mask_rle) for o in sample.objects])


def load_mask(sample: Sample) -> np.ndarray:
    """The sample's semantic mask: pixel = object label, 0 = background.

    When the format ships a semantic PNG (``sample.mask_path``) it is read as is, since that is what the
    paper and TAM score against. Otherwise the mask is composed from the objects as the official code does
    for GranDf: ``np.maximum`` over ``label * mask``, so where objects overlap the larger label wins
    (independent of their order).

    Parameters
    ----------
    sample : Sample

    Returns
    -------
    ndarray of shape (H, W), int32

    Raises
    ------
    ValueError
        If the PNG's size differs from ``(sample.height, sample.width)``.
    """
    if sample.mask_path is not None:
        mask = _read_label_png(Path(sample.mask_path))
        if mask.shape != (sample.height, sample.width):
            raise ValueError(
                f"mask {sample.mask_path} is {mask.shape[0]}x{mask.shape[1]}, the image {sample.height}x{sample.width}"
            )
        return mask
    out = np.zeros((sample.height, sample.width), dtype=np.int32)
    for obj in sample.objects:
        np.maximum(out, np.where(_decode(obj.mask_rle), np.int32(obj.label), np.int32(0)), out=out)
    return out


# ---------------------------------------------------------------------------------------------- helpers


def _caption(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise _Rejected(f"{where} is not a string")
    if not text.strip():
        raise _Rejected(f"{where} is empty")
    return text


def _inside(base: Path, name: str, what: str, allow: bool) -> Path:
    """``base / name``, refused (that sample) when the name leaves ``base`` (absolute, or climbing out with
    ``..``) unless ``allow``. Lexical: a symbolic link the dataset's owner placed inside is followed."""
    path = Path(base) / name
    root = os.path.normpath(os.path.abspath(base))
    if not allow and os.path.commonpath([root, os.path.normpath(os.path.abspath(path))]) != root:
        raise _Rejected(f"{what} path {name!r} lies outside the dataset folder {base}; pass --allow-outside-paths "
                        "(or set DCAM_ALLOW_OUTSIDE_PATHS=1) to read it")
    return path


def _check_size(declared: tuple[int, int], actual: tuple[int, int], what: str) -> None:
    if tuple(declared) != tuple(actual):
        raise _Rejected(f"{what} is {actual[0]}x{actual[1]} but the annotation says {declared[0]}x{declared[1]}")


def _collect(records: Iterable[tuple[str, Callable[[], Sample]]], limit: int | None, *, file: str, items: str,
             ) -> LoadResult:
    """Build samples record by record, turning a record's failure into a rejection reason.

    Raises
    ------
    DcamError
        If two records have the same (canonical) sample id, naming both (``items[i]``): which of them
        the annotations meant cannot be told. ``file`` and ``items`` name the records (``images``) of a file.
    """
    samples: list[Sample] = []
    rejected: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for count, (sample_id, build) in enumerate(records):
        if limit is not None and count >= limit:
            break
        if sample_id in seen:
            raise DcamError(f"duplicate sample id {sample_id}: {file}: {items}[{seen[sample_id]}] and {items}[{count}] "
                            "both map to it; give every record its own id")
        seen[sample_id] = count
        try:
            if not sample_id or "/" in sample_id or "\\" in sample_id or sample_id.startswith("."):
                raise _Rejected(f"sample id {sample_id!r} is not usable as a file name")
            samples.append(build())
        except _Rejected as e:
            rejected.append((sample_id, str(e)))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            rejected.append((sample_id, f"malformed record: {detail}"))
    return LoadResult(samples, rejected)


def _reject(reason: str) -> Callable[[], Sample]:
    """A builder for a record that is known to be bad."""

    def build() -> Sample:
        raise _Rejected(reason)

    return build


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: must be an integer >= 1 or None, got {limit!r}")


# ----------------------------------------------------------------------------------------------- COCO


def _coco_records(
    instances: dict, captions: dict, *, instances_path: Path, captions_path: Path,
    image_path: Callable[[dict], Path], seg_path: Callable[[dict], Path] | None, source: str,
) -> list[tuple[str, Callable[[], Sample]]]:
    for key in ("images", "annotations", "categories"):
        if not isinstance(instances, dict) or not isinstance(instances.get(key), list):
            raise DcamError(f"{instances_path} is not a COCO instances file: no '{key}' list")
    if not isinstance(captions, dict) or not isinstance(captions.get("annotations"), list):
        raise DcamError(f"{captions_path} is not a COCO captions file: no 'annotations' list")
    names: dict[int, str] = {}
    for c in instances["categories"]:
        try:
            cid, name = _coco_id(c["id"]), str(c["name"])
        except (KeyError, TypeError, ValueError) as e:
            raise DcamError(f"{instances_path} has a malformed category: {e!r}") from None
        if cid in names:
            raise DcamError(f"{instances_path}: category id {cid} is given twice ({names[cid]!r} and {name!r})")
        names[cid] = name
    categories = {name: cid for cid, name in sorted(names.items())}
    anns = _by_image(instances["annotations"], instances_path)
    caps = {k: [cap.get("caption") for cap in v] for k, v in _by_image(captions["annotations"], captions_path).items()}

    def builder(image: dict, image_id: int) -> Callable[[], Sample]:
        def build() -> Sample:
            height, width = int(image["height"]), int(image["width"])
            path = image_path(image)
            _check_size((height, width), _image_size(path, "image"), f"image {path.name}")
            mask_path = None
            if seg_path is not None:
                mask_path = seg_path(image)
                _check_size((height, width), _image_size(mask_path, "mask"), f"mask {mask_path.name}")
            texts = caps.get(image_id, [])
            if not texts:
                raise _Rejected("no caption")
            captions_ = [_caption(t, f"caption {i + 1}") for i, t in enumerate(texts)]
            objects = []
            for ann in anns.get(image_id, []):
                label = _coco_id(ann["category_id"])
                if label not in names:
                    raise _Rejected(f"annotation {ann.get('id')} has unknown category {label}")
                try:
                    rle = _normalise_rle(ann["segmentation"], height, width)
                except _Rejected as e:
                    raise _Rejected(f"annotation {ann.get('id')}: {e}") from None
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
            image_id = _coco_id(raw)
            records.append((f"{image_id:012d}", builder(image, image_id)))
        except (TypeError, ValueError):
            records.append((f"image-{index}", _reject(f"image id {raw!r} is not an integer")))
    return records


def _coco_id(value: Any) -> int:
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


def _by_image(annotations: list, path: Path) -> dict[int, list[dict]]:
    """Annotations grouped by their canonical ``image_id``; one that has none refuses the file."""
    out: dict[int, list[dict]] = {}
    for index, ann in enumerate(annotations):
        raw = ann.get("image_id") if isinstance(ann, dict) else None
        try:
            out.setdefault(_coco_id(raw), []).append(ann)
        except (TypeError, ValueError):
            raise DcamError(f"{path}: annotations[{index}] has image_id {raw!r}, not an image id") from None
    return out


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
    _check_limit(limit)
    root = Path(root)
    instances_path, captions_path = root / TAM_INSTANCES, root / TAM_CAPTIONS
    records = _coco_records(
        _read_json(instances_path, "instances file"), _read_json(captions_path, "captions file"),
        instances_path=instances_path, captions_path=captions_path,
        image_path=lambda im: root / "image" / f"{_coco_id(im['id']):012d}.jpg",
        seg_path=lambda im: root / "seg_label" / f"{_coco_id(im['id']):012d}.png",
        source=source,
    )
    return _collect(records, limit, file=instances_path.name, items="images")


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
    _check_limit(limit)
    instances, captions, images = Path(instances), Path(captions), Path(images)
    if not images.is_dir():
        raise DcamError(f"image directory not found: {images}")
    records = _coco_records(
        _read_json(instances, "instances file"), _read_json(captions, "captions file"),
        instances_path=instances, captions_path=captions,
        image_path=lambda im: _inside(images, str(im["file_name"]), "image", allow_outside_paths),
        seg_path=None, source="coco",
    )
    return _collect(records, limit, file=instances.name, items="images")


# --------------------------------------------------------------------------------------------- GranDf


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
    _check_limit(limit)
    path = Path(path)
    records = _grandf_list(_read_json(path, "GranDf file"), path)
    image_dir = Path(images) if images is not None else path.parent
    if not image_dir.is_dir():
        raise DcamError(f"image directory not found: {image_dir}")

    def builder(record: dict, name: str) -> Callable[[], Sample]:
        def build() -> Sample:
            height, width = int(record["height"]), int(record["width"])
            image = _inside(image_dir, name, "image", allow_outside_paths)
            _check_size((height, width), _image_size(image, "image"), f"image {name}")
            caption = _caption(record["caption"], "caption")
            groundings = record["groundings"]
            if not isinstance(groundings, dict):
                raise _Rejected("groundings is not an object {phrase: grounding}")
            objects = []
            for index, (phrase, grounding) in enumerate(groundings.items()):
                start, end = (int(v) for v in grounding["token_positives"])
                if not 0 <= start < end <= len(caption):
                    raise _Rejected(f"grounding {phrase!r}: token_positives [{start}, {end}] outside the caption ({len(caption)} chars)")
                masks = grounding["rle_masks"]
                if not isinstance(masks, list) or not masks:
                    raise _Rejected(f"grounding {phrase!r} has no rle_masks")
                try:
                    rle = _merge_rles([_normalise_rle(m, height, width) for m in masks])
                except _Rejected as e:
                    raise _Rejected(f"grounding {phrase!r}: {e}") from None
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
            entries.append((f"record-{index}", _reject("record has neither 'file_name' nor 'image'")))
    return _collect(entries, limit, file=path.name, items="records")


# ------------------------------------------------------------------------------------------- TAM anno


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
    _check_limit(limit)
    path = Path(path)
    file = path / TAM_ANNO if path.is_dir() else path
    root = file.parent
    data = _read_json(file, "TAM anno.json")
    if not isinstance(data, list):
        raise DcamError(f"{file} is not a TAM anno.json: expected a list of [image, caption, seg, categories]")

    def builder(entry: list) -> Callable[[], Sample]:
        def build() -> Sample:
            if not isinstance(entry, list) or len(entry) != 4:
                raise _Rejected("entry is not [image, caption, seg, categories]")
            image_rel, caption, seg_rel, category_dict = entry
            image = _inside(root, str(image_rel), "image", allow_outside_paths)
            seg = _inside(root, str(seg_rel), "mask", allow_outside_paths)
            height, width = _image_size(image, "image")
            _check_size((height, width), _image_size(seg, "mask"), f"mask {seg.name}")
            caption = _caption(caption, "caption")
            if not isinstance(category_dict, dict):
                raise _Rejected("categories is not an object {name: label}")
            import pycocotools.mask as mask_utils

            sem = _read_label_png(seg)
            objects = []
            for name, label in category_dict.items():
                label = int(label)
                obj = sem == label
                if label <= 0 or not obj.any():
                    raise _Rejected(f"label {label} of {name!r} does not occur in {seg.name}")
                rle = mask_utils.encode(np.asfortranarray(obj.astype(np.uint8)))
                objects.append(ObjectRecord(label=label, name=str(name), phrase=str(name), token_positives=None,
                                            mask_rle={"size": [height, width], "counts": rle["counts"].decode("ascii")}))
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
    return _collect(entries, limit, file=file.name, items="entries")


# ------------------------------------------------------------------------------------ detect and load


def detect_format(path: str | os.PathLike) -> str:
    """Tell the dataset format from the files present.

    A directory is ``synthetic`` (a ``dataset`` manifest plus the coco-tam files), ``coco-tam``
    (``annotations/instances_minival2014.json``), ``tam-anno`` (``anno.json``) or ``ingested``
    (``samples.jsonl`` and a manifest). A JSON file is ``coco``
    (an object with ``images``, ``annotations`` and ``categories``), ``grandf`` (records with
    ``groundings``) or ``tam-anno`` (a list of 4-element lists).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    DcamError
        If the path is missing or matches no format.
    """
    path = Path(path)
    if path.is_dir():
        if (path / TAM_INSTANCES).is_file():
            if (path / MANIFEST_FILE).is_file():
                return "synthetic"
            return "coco-tam"
        if (path / TAM_ANNO).is_file():
            return "tam-anno"
        if (path / SAMPLES_FILE).is_file() and (path / MANIFEST_FILE).is_file():
            return "ingested"
        raise DcamError(
            f"{path}: cannot tell the dataset format: no {TAM_INSTANCES} (coco-tam, synthetic), {TAM_ANNO} "
            f"(tam-anno) or {SAMPLES_FILE} (ingested) there; for raw COCO pass --instances/--captions/--images, "
            f"for GranDf the JSON file"
        )
    if path.is_file():
        data = _read_json(path)
        if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
            return "coco"
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            records = lists[0] if len(lists) == 1 else []
        else:
            records = data if isinstance(data, list) else []
        first = records[0] if records else None
        if isinstance(first, dict) and "groundings" in first:
            return "grandf"
        if isinstance(data, list) and isinstance(first, list) and len(first) == 4:
            return "tam-anno"
        raise DcamError(
            f"{path}: cannot tell the dataset format: not COCO instances (images/annotations/categories), "
            f"GranDf (records with groundings) or TAM anno.json (a list of [image, caption, seg, categories])"
        )
    raise DcamError(f"dataset not found: {path}")


def _resolve_format(path, fmt: str | None, instances) -> str:
    if fmt is None:
        return "coco" if instances is not None else detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"fmt: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def load_dataset(
    path: str | os.PathLike | None,
    *,
    fmt: str | None = None,
    limit: int | None = None,
    instances: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    allow_outside_paths: bool | None = None,
) -> LoadResult:
    """Load any supported dataset (:data:`FORMATS`), detecting the format unless ``fmt`` is given.

    Parameters
    ----------
    path : str or os.PathLike or None
        Dataset directory or annotation file; for raw COCO the instances JSON (or None with ``instances``).
    fmt : str, optional
        Format; default :func:`detect_format`, or ``coco`` when ``instances`` is given.
    limit : int, optional
        Read at most this many records.
    instances, captions, images : str or os.PathLike, optional
        Raw COCO files (``images`` is also GranDf's image directory).
    allow_outside_paths : bool, optional
        Read images and masks that the annotations place outside the dataset folder (an absolute path, or
        one climbing out with ``..``); otherwise such a sample is rejected. Default: whether the environment
        sets ``DCAM_ALLOW_OUTSIDE_PATHS=1``.

    Returns
    -------
    LoadResult
    """
    if allow_outside_paths is None:
        allow_outside_paths = os.environ.get("DCAM_ALLOW_OUTSIDE_PATHS") == "1"
    outside = {"allow_outside_paths": allow_outside_paths}
    fmt = _resolve_format(path, fmt, instances)
    if fmt == "coco":
        instances = instances if instances is not None else path
        if instances is None or captions is None or images is None:
            raise DcamError("raw COCO needs the instances JSON (PATH or --instances), --captions and --images")
        return load_coco(instances, captions, images, limit=limit, **outside)
    if path is None:
        raise DcamError(f"format {fmt} needs a dataset PATH")
    if fmt == "grandf":
        return load_grandf(path, images=images, limit=limit, **outside)
    if fmt == "tam-anno":
        return load_tam_anno(path, limit=limit, **outside)
    if fmt == "synthetic":
        return load_synthetic(path, limit=limit)
    if fmt == "ingested":
        _check_limit(limit)
        return LoadResult(read_ingested(path)[:limit], [])
    return load_coco_tam(path, limit=limit)


# ---------------------------------------------------------------------------------------- ingest stage


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
    fmt = _resolve_format(path, fmt, instances)
    result = load_dataset(path, fmt=fmt, limit=limit, instances=instances, captions=captions, images=images,
                          allow_outside_paths=allow_outside_paths)
    loaded = time.perf_counter()
    _prepare_out(out, overwrite=overwrite)
    (out / MASKS_DIR).mkdir()
    from PIL import Image

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
            Image.fromarray(mask.astype(np.uint16)).save(out / rel, format="PNG")
            record = sample.to_dict()
            record["mask_path"] = rel
            lines.append(json.dumps(record, separators=(",", ":")))
            statuses.append(SampleStatus(sample_id=sample.sample_id, status="ok", seconds=round(time.perf_counter() - t0, 6)))
        if progress is not None:
            progress(done, len(result.samples))
    statuses += [SampleStatus(sample_id=sid, status="failed", reason=reason) for sid, reason in result.rejected]
    (out / SAMPLES_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    source = {"instances": instances, "captions": captions, "images": images, "path": path}
    inputs = {"dataset": input_ref(path, kind="dataset")} if fmt in ("synthetic", "ingested") else {}
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
            data = json.loads(line)
            sample = Sample.from_dict(data)
        except json.JSONDecodeError as e:
            raise DcamError(f"{file} line {number} is malformed JSON at column {e.colno}: {e.msg}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise DcamError(f"{file} line {number} is not a sample record: {e}") from None
        samples.append(replace(sample, mask_path=str((out / sample.mask_path).resolve())))
    return samples
