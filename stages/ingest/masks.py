"""Object masks: COCO RLE validation, merging and decoding (pycocotools), and the semantic mask of a sample.

pycocotools does the encoding, merging and decoding. Compressed counts are validated here first
(:func:`rle_counts`) because pycocotools' ``rleFrString`` does not check them: on pycocotools 2.0.11 an RLE
whose runs cover fewer pixels than ``H x W`` decodes to uninitialised memory (and can corrupt the heap),
and characters outside the alphabet are read as numbers. The parity of :func:`rle_counts` with
pycocotools on valid RLEs is tested (``tests/test_ingest.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from schemas.limits import limits
from stages.ingest.records import Rejected
from stages.ingest.sample import Sample


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


def normalise_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a validated compressed RLE.

    Raises
    ------
    Rejected
        If it does not convert, or its runs do not cover the ``height x width`` image exactly.
    """
    import pycocotools.mask as mask_utils

    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        if not all(isinstance(p, list) and len(p) % 2 == 0 for p in segmentation):
            raise Rejected("polygon segmentation must be lists of (x, y) coordinate pairs")
        # Parts with fewer than 3 points have no area; pycocotools would read a 4-number part as a box.
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            raise Rejected("polygon segmentation has no polygon with >= 3 points")
        bound = limits().polygon_coordinate
        try:
            coords = [[float(v) for v in p] for p in polygons]
            # pycocotools walks every edge pixel by pixel: a huge coordinate costs gigabytes, NaN an empty mask
            bad = next((v for p in coords for v in p if not abs(v) <= bound), None)
            if bad is not None:
                raise Rejected(f"polygon coordinate {bad!r} is not finite or beyond the limit of {bound:g} "
                                "(DCAM_MAX_POLYGON_COORD)")
            rle = mask_utils.merge(mask_utils.frPyObjects(coords, height, width))
        except (TypeError, ValueError) as e:
            raise Rejected(f"polygon segmentation does not convert: {e}") from None
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise Rejected(f"mask size {size[0]}x{size[1]} differs from the image size {height}x{width}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE (iscrowd)
            if sum(int(v) for v in counts) != height * width or any(int(v) < 0 for v in counts):
                raise Rejected(f"uncompressed RLE does not cover the {height}x{width} image")
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts}
        else:
            raise Rejected(f"RLE counts must be a string or a list, got {type(counts).__name__}")
    else:
        raise Rejected("segmentation is neither polygons nor an RLE")
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else str(rle["counts"])
    try:
        runs = rle_counts(counts)
    except ValueError as e:
        raise Rejected(f"RLE fails to decode: {e}") from None
    if sum(runs) != height * width:
        raise Rejected(f"RLE fails to decode: its runs cover {sum(runs)} pixels, the {height}x{width} image has {height * width}")
    return {"size": [height, width], "counts": counts}


def merge_rles(rles: list[dict]) -> dict:
    """The union of compressed RLEs of one size (the RLE itself when there is one)."""
    import pycocotools.mask as mask_utils

    if len(rles) == 1:
        return rles[0]
    merged = mask_utils.merge([{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles])
    return {"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """A validated compressed RLE as a bool mask of shape (H, W)."""
    import pycocotools.mask as mask_utils

    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}).astype(bool)


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel label PNG as int32 (a ValueError for an RGB or other multi-channel image)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            raise ValueError(f"{path} is not a single-channel label PNG (mode {im.mode})")
        return np.asarray(im).astype(np.int32)


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
    return np.stack([decode_rle(o.mask_rle) for o in sample.objects])


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
        mask = read_label_png(Path(sample.mask_path))
        if mask.shape != (sample.height, sample.width):
            raise ValueError(
                f"mask {sample.mask_path} is {mask.shape[0]}x{mask.shape[1]}, the image {sample.height}x{sample.width}"
            )
        return mask
    out = np.zeros((sample.height, sample.width), dtype=np.int32)
    for obj in sample.objects:
        np.maximum(out, np.where(decode_rle(obj.mask_rle), np.int32(obj.label), np.int32(0)), out=out)
    return out


def encode_mask(mask: np.ndarray) -> dict:
    """A bool mask of shape (H, W) as a compressed RLE ``{"size": [H, W], "counts": str}``."""
    import pycocotools.mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
