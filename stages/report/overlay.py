"""Pure image functions of the report: colour a map, lay it over its image, outline the ground truth.

Every function takes and returns arrays (images are ``(H, W, 3)`` uint8 RGB) and never mutates its
inputs. A map is brought to the image's size with the scoring stage's bilinear convention
(:func:`stages.score.metrics.resize_bilinear`, OpenCV ``INTER_LINEAR``), so a report shows the very
maps the metrics were computed on. Normalising a raw, signed map to [0, 1] is the caller's explicit
step (the report uses :func:`stages.score.stage.unit_map`, the scoring stage's rule).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from schemas.storage import write_bytes_atomic
from stages.score.metrics import check_map

#: Long side (pixels) under which :func:`publication_scale` enlarges an image by an integer factor.
PUBLICATION_MIN_SIDE = 288


def _as_image(image, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: expected an RGB array of shape (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {arr.dtype}")
    return arr


def _as_unit_map(heatmap, name: str = "heatmap") -> np.ndarray:
    arr = check_map(heatmap, name)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name}: values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; normalise the map first "
                         "(e.g. stages.score.stage.unit_map)")
    return np.clip(arr, 0.0, 1.0)


def heatmap_rgba(heatmap, *, cmap: str = "jet") -> np.ndarray:
    """Colour a map with a matplotlib colour map.

    Parameters
    ----------
    heatmap : ndarray of shape (h, w)
        Values in [0, 1].
    cmap : str, default "jet"
        A matplotlib colour map name (jet is what Grad-CAM figures, the paper's included, use).

    Returns
    -------
    ndarray of shape (h, w, 4), uint8
        RGBA, alpha 255.
    """
    import matplotlib

    arr = _as_unit_map(heatmap)
    try:
        colours = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"cmap: unknown matplotlib colour map {cmap!r}") from None
    return colours(arr, bytes=True)


def overlay(image, heatmap, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a coloured map over its image: ``(1 - alpha) * image + alpha * colour(map)``.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    heatmap : ndarray of shape (h, w)
        Values in [0, 1] on any grid covering the whole image; upsampled bilinearly to (H, W) with
        :func:`stages.score.metrics.resize_bilinear` (the scoring stage's convention).
    alpha : float, default 0.5
        Weight of the colour map, in [0, 1].
    cmap : str, default "jet"

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
    """
    from stages.score.metrics import resize_bilinear

    img = _as_image(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha}")
    up = np.clip(resize_bilinear(_as_unit_map(heatmap), img.shape[:2]), 0.0, 1.0)
    heat = heatmap_rgba(up, cmap=cmap)[..., :3].astype(np.float64)
    out = (1.0 - alpha) * img.astype(np.float64) + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def label_colors(labels) -> dict[int, tuple[int, int, int]]:
    """A distinct RGB colour per object label (matplotlib's tab10, then tab20, in label order)."""
    import matplotlib

    palette = [tuple(int(round(255 * c)) for c in rgb[:3])
               for name in ("tab10", "tab20") for rgb in matplotlib.colormaps[name].colors]
    return {int(lab): palette[i % len(palette)] for i, lab in enumerate(sorted(set(int(v) for v in labels)))}


def _inner_edges(inside: np.ndarray, thickness: int) -> np.ndarray:
    """The inner border of a boolean region, ``thickness`` pixels wide, closed along the image border too."""
    from skimage.morphology import dilation
    from skimage.segmentation import find_boundaries

    padded = np.pad(inside, 1)  # padded, so an object cut by the image border is closed there too
    footprint = np.ones((2 * thickness - 1,) * 2, dtype=bool)
    return (dilation(find_boundaries(padded, mode="inner"), footprint) & padded)[1:-1, 1:-1]


def _outline_and_rim(inside: np.ndarray, thickness: int) -> tuple[np.ndarray, np.ndarray]:
    """The inner border of a region and the one-pixel rim just inside it (drawn black: the line stays
    visible where the object, or the map under it, has the line's colour)."""
    edge = _inner_edges(inside, thickness)
    return edge, _inner_edges(inside, thickness + 1) & ~edge


def _paint(out: np.ndarray, edge: np.ndarray, rim: np.ndarray, color) -> None:
    out[rim] = (0, 0, 0)
    out[edge] = color


def _check_thickness(thickness) -> None:
    if int(thickness) != thickness or thickness < 1:
        raise ValueError(f"thickness: expected a positive integer, got {thickness}")


def outline(image, semantic_mask, *, colors: Mapping[int, tuple[int, int, int]] | None = None,
            thickness: int = 2) -> np.ndarray:
    """Draw the outline of every ground-truth object, one colour per label, with a one-pixel black rim inside.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    semantic_mask : ndarray of shape (H, W), int
        Pixel = object label, 0 = background (:func:`stages.ingest.loaders.load_mask`).
    colors : mapping of int to RGB triple, optional
        Colour per label; default :func:`label_colors` of the labels present.
    thickness : int, default 2
        Outline width in pixels, drawn inside each object (>= 1).

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
    """
    img = _as_image(image)
    mask = np.asarray(semantic_mask)
    if mask.shape != img.shape[:2]:
        raise ValueError(f"semantic_mask: shape {mask.shape} differs from the image's {img.shape[:2]}")
    _check_thickness(thickness)
    labels = [int(v) for v in np.unique(mask) if v != 0]
    colors = dict(colors) if colors is not None else label_colors(labels)
    missing = [lab for lab in labels if lab not in colors]
    if missing:
        raise ValueError(f"colors: no colour for label(s) {', '.join(map(str, missing))}")
    out = img.copy()
    for lab in labels:
        _paint(out, *_outline_and_rim(mask == lab, thickness), colors[lab])
    return out


def instance_outlines(instance_masks, *, thickness: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Each instance's outline, for :func:`contours`: computed once, drawn on any number of overlays.

    Parameters
    ----------
    instance_masks : ndarray of shape (K, H, W), bool
        One mask per instance (:func:`stages.ingest.loaders.load_instance_masks`).
    thickness : int, default 2
        Line width in pixels, inside each instance.

    Returns
    -------
    edges, rims : ndarray of shape (K, H, W), bool
        The inner border of each instance (each on its own, so touching instances stay apart) and the
        one-pixel rim just inside it.
    """
    masks = np.asarray(instance_masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"instance_masks: expected shape (K, H, W), got {masks.shape}")
    _check_thickness(thickness)
    pairs = [_outline_and_rim(m, thickness) for m in masks]
    empty = np.zeros(masks.shape, dtype=bool)
    return (np.stack([e for e, _ in pairs]) if pairs else empty, np.stack([r for _, r in pairs]) if pairs else empty)


def contours(image, outlines: tuple[np.ndarray, np.ndarray], *, solid, color: tuple[int, int, int],
             dash: int = 4) -> np.ndarray:
    """Draw instance outlines in one colour: solid for the instances in ``solid``, dashed for the rest.

    The target object's instances (solid) are told from the other objects' (dashed) without relying on
    colour; a black rim inside each line keeps it visible where the map has the line's colour.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    outlines : (edges, rims), each ndarray of shape (K, H, W), bool
        :func:`instance_outlines` of the instances.
    solid : sequence of bool of length K
        Which instances are drawn solid.
    color : RGB triple
    dash : int, default 4
        Dash and gap length (pixels, along the diagonal ``row + col``) of the dashed outlines.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
    """
    img = _as_image(image)
    edges, rims = outlines
    if edges.shape != rims.shape or edges.ndim != 3 or edges.shape[1:] != img.shape[:2]:
        raise ValueError(f"outlines: expected two arrays of shape (K, {img.shape[0]}, {img.shape[1]}), "
                         f"got {edges.shape} and {rims.shape}")
    if len(solid) != edges.shape[0]:
        raise ValueError(f"solid: {len(solid)} flags for {edges.shape[0]} instances")
    rows, cols = np.indices(img.shape[:2])
    drawn = ((rows + cols) // dash) % 2 == 0
    out = img.copy()
    for edge, rim, whole in zip(edges, rims, solid):
        _paint(out, edge, rim, color) if whole else _paint(out, edge & drawn, rim & drawn, color)
    return out


def mark_peak(image, row: int, col: int, *, color: tuple[int, int, int], arm: int = 5) -> np.ndarray:
    """Draw a cross at (row, col) in ``color`` with a one-pixel black border, so it shows on any map.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    row, col : int
        The peak, inside the image.
    color : RGB triple
    arm : int, default 5
        Arm length in pixels (the cross is ``2 * arm + 1`` wide).

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
    """
    img = _as_image(image)
    h, w = img.shape[:2]
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"row, col: ({row}, {col}) lies outside the image of shape {img.shape[:2]}")
    out = img.copy()
    for width, colour in ((1, (0, 0, 0)), (0, color)):
        r0, r1 = max(0, row - arm - width), min(h, row + arm + width + 1)
        c0, c1 = max(0, col - arm - width), min(w, col + arm + width + 1)
        out[r0:r1, max(0, col - width): col + width + 1] = colour
        out[max(0, row - width): row + width + 1, c0:c1] = colour
    return out


def peak(heatmap_resized) -> tuple[int, int]:
    """(row, col) of the map's maximum, the first in row-major order on ties (the pointing game's point)."""
    arr = check_map(heatmap_resized, "heatmap_resized")
    r, c = np.unravel_index(int(np.argmax(arr)), arr.shape)
    return int(r), int(c)


def publication_scale(shape: tuple[int, int], *, min_side: int = PUBLICATION_MIN_SIDE) -> int:
    """Integer enlargement that brings an image's long side to at least ``min_side`` (1 if it already is)."""
    long_side = max(int(shape[0]), int(shape[1]))
    return max(1, -(-min_side // long_side))


def upscale_nearest(image, factor: int) -> np.ndarray:
    """Enlarge an image (or a label mask) by an integer factor, nearest neighbour (labels stay labels)."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor: expected a positive integer, got {factor}")
    arr = np.asarray(image)
    return arr if factor == 1 else np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def fit_image(image, long_side: int) -> np.ndarray:
    """Resize an RGB image so its long side is ``long_side``: nearest when enlarging, area-averaging when shrinking."""
    from PIL import Image

    img = _as_image(image)
    h, w = img.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return img.copy()
    resample = Image.NEAREST if scale > 1 else Image.BOX
    return np.asarray(Image.fromarray(img).resize(size, resample))


def fit_mask(mask, shape: tuple[int, int]) -> np.ndarray:
    """Resize a label mask to ``shape`` (H, W) by nearest neighbour."""
    from PIL import Image

    arr = np.asarray(mask).astype(np.int32)
    if arr.shape == tuple(shape):
        return arr
    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.NEAREST)).astype(np.int32)


def encode_png(array, *, colors: int | None = None, compress_level: int = 3) -> bytes:
    """PNG bytes of a uint8 RGB (H, W, 3) or grey (H, W) array; ``colors`` quantises to a palette (smaller files).

    zlib level 3 writes 2.5x faster than PIL's default 6 for 17 % larger files; a report writes thousands.
    """
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"array: expected a uint8 (H, W) or (H, W, 3) array, got {arr.dtype} {arr.shape}")
    im = Image.fromarray(arr)
    if colors is not None:
        im = im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(array, path) -> Path:
    """Write a uint8 RGB (H, W, 3) or grey (H, W) array as a PNG (parent directories created)."""
    return write_bytes_atomic(path, encode_png(array))
