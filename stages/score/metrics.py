"""Localisation metrics of a per-word map against ground-truth masks, in pure numpy.

Two protocols are implemented:

* **The paper's** (``method.md`` §1.6, the official ``predict.py``): the map is resized bilinearly to the
  mask size, quantised to uint8 and binarised with Otsu; Obj-IoU is the IoU of that binary map with the
  best-matching object (or the word-matched one), Contrast and Concentration compare the map on the union
  of all objects with the background, and F3 is the harmonic mean of (Obj-IoU, Contrast/20, Concentration).
* **TAM's** (``method.md`` §2.4, ``xmed-lab/TAM`` ``eval.py``): per matched noun Obj-IoU with its own
  category, per function word Func-IoU (the share of its map below the mean noun Otsu threshold), and
  F1-IoU, the harmonic mean of the dataset-level means.

Plus the pointing game (Zhang et al., ECCV 2016) and the energy-based pointing game (Score-CAM,
Wang et al., CVPRW 2020), see ``anchors.md`` §3.

All functions are pure: inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

#: Contrast is divided by this before entering F3 (``contrast_score = min(contrast / 20, 1)``).
CONTRAST_SCALE = 20.0
#: The ``+ 1e-8`` of the official code in Contrast's and Concentration's denominators.
EPS = 1e-8
#: ``FLT_EPSILON``: OpenCV's Otsu skips thresholds whose smaller class weight is below it.
_FLT_EPSILON = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------------------------- validation


def check_map(heatmap, name: str = "heatmap") -> np.ndarray:
    """Validate a 2-D real, finite map (the message names ``name``); returns it as float64."""
    arr = np.asarray(heatmap)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: expected a non-empty 2-D array (h, w), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected a real-valued array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _as_semantic(mask, name: str = "semantic_mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D label array (H, W), got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer label array (0 = background), got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0, found {int(arr.min())}")
    return arr


def _as_binary(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D boolean array (H, W), got shape {arr.shape}")
    if arr.dtype != bool:
        raise ValueError(f"{name}: expected a boolean array, got dtype {arr.dtype}")
    return arr


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a}: shape {a.shape} differs from {name_b}'s shape {b.shape}")


# ------------------------------------------------------------------------------------ resize and Otsu


def resize_bilinear(heatmap, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with OpenCV's ``cv2.resize(..., INTER_LINEAR)`` convention.

    Pixel centres are aligned (``src = (dst + 0.5) * in / out - 0.5``), coordinates outside the
    image are clamped to the edge pixel, and no anti-aliasing is applied when shrinking. On a float map
    this equals ``cv2.resize(h.astype(np.float32), (W, H))`` up to float32 rounding; it is
    ``skimage.transform.resize(h, (H, W), order=1, mode='edge', anti_aliasing=False)``, after the
    checks below.

    Parameters
    ----------
    heatmap : ndarray of shape (h, w)
        Real-valued map.
    shape : tuple of int (H, W)
        Output size.

    Returns
    -------
    ndarray of shape (H, W), float64
    """
    arr = check_map(heatmap)
    if len(shape) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape: expected two positive integers (H, W), got {shape!r}")
    from skimage.transform import resize

    return resize(arr, (int(shape[0]), int(shape[1])), order=1, mode="edge", anti_aliasing=False)


#: OpenCV's fixed-point bilinear weights on uint8 images: ``INTER_RESIZE_COEF_BITS`` = 11.
_COEF_SCALE = 2048


def _fixed_point_weights(n_in: int, n_out: int, *, clamp_fraction: bool) -> tuple[np.ndarray, ...]:
    """Source indices and 11-bit weights of OpenCV's INTER_LINEAR on uint8 along one axis.

    As ``cv::hal::resize``: the source coordinate is computed in double from ``1 / (out / in)`` and
    stored as float32, split into ``floor`` and fraction in float32, and both weights ``1 - f`` and
    ``f`` are rounded to ``short`` after scaling by 2048. Outside the image the indices are clamped to
    the edge; OpenCV also zeroes the fraction there along x, but not along y (``clamp_fraction``), where
    both clamped rows are the edge row and the weights still split.
    """
    scale = 1.0 / (float(n_out) / float(n_in))
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.intp)
    f = f - i0.astype(np.float32)
    if clamp_fraction:
        f[(i0 < 0) | (i0 >= n_in - 1)] = 0.0
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    w0 = np.rint((np.float32(1.0) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), w0, w1


def resize_bilinear_uint8(image, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 map, bit-exact with ``cv2.resize(img, (W, H))`` (INTER_LINEAR).

    TAM's ``eval.py`` resizes its uint8 maps this way before Otsu. OpenCV works in fixed point: each
    axis has 11-bit integer weights (:func:`_fixed_point_weights`); the horizontal pass keeps exact
    integer sums ``S = a0 * p + a1 * q`` (scale 2**11), and the vertical pass
    (``VResizeLinear<uchar, ...>``, its vector and scalar code alike) combines two such rows as
    ``(((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2) >> 2``, truncating twice, so it can be one
    level below the exactly rounded value. An exact halving of both sides is OpenCV's fast area average
    ``(a + b + c + d + 2) >> 2``. Checked against opencv-python-headless 4.10.0.84 and 5.0.0.93: the
    same output, every pixel, on 600 random maps of sizes 1-40 to 1-130 and on 24x24 -> 480x640.

    Parameters
    ----------
    image : ndarray of shape (h, w), uint8
    shape : tuple of int (H, W)
        Output size.

    Returns
    -------
    ndarray of shape (H, W), uint8
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 2 or img.size == 0:
        raise ValueError(f"image: expected a non-empty 2-D uint8 array, got {img.dtype} {img.shape}")
    if len(shape) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape: expected two positive integers (H, W), got {shape!r}")
    out_h, out_w = int(shape[0]), int(shape[1])
    src = img.astype(np.int64)
    if (img.shape[0], img.shape[1]) == (2 * out_h, 2 * out_w):
        quads = src[0::2, 0::2] + src[0::2, 1::2] + src[1::2, 0::2] + src[1::2, 1::2]
        return ((quads + 2) >> 2).astype(np.uint8)
    c0, c1, a0, a1 = _fixed_point_weights(img.shape[1], out_w, clamp_fraction=True)
    r0, r1, b0, b1 = _fixed_point_weights(img.shape[0], out_h, clamp_fraction=False)
    rows = src[:, c0] * a0 + src[:, c1] * a1  # (h, W), scale 2**11
    s0, s1 = rows[r0], rows[r1]
    out = ((((s0 >> 4) * b0[:, None]) >> 16) + (((s1 >> 4) * b1[:, None]) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def to_uint8(heatmap) -> np.ndarray:
    """Quantise a map in [0, 1] to uint8 as the official code does: ``np.uint8(255 * h)``.

    Values are clipped to [0, 1] first (a min-max normalised map only leaves that range by rounding),
    then multiplied by 255 and truncated toward zero, so only exactly 1.0 maps to 255.

    Parameters
    ----------
    heatmap : ndarray of shape (h, w)

    Returns
    -------
    ndarray of shape (h, w), uint8
    """
    return (255.0 * np.clip(check_map(heatmap), 0.0, 1.0)).astype(np.uint8)


def otsu_threshold_uint8(image) -> int:
    """Otsu's threshold of a uint8 image, computed exactly as OpenCV's ``THRESH_OTSU``.

    OpenCV (``getThreshVal_Otsu``) builds the 256-bin histogram and, for every integer t, splits it into
    ``{v <= t}`` and ``{v > t}``; it skips a t whose class weights satisfy ``min(q1, q2) < FLT_EPSILON``
    and keeps the first t with the largest between-class variance ``q1 * q2 * (mu1 - mu2)**2`` (strict
    ``>``). The class means are updated by a floating-point recurrence, which this function repeats
    operation by operation in IEEE doubles, so even thresholds whose variances tie in exact arithmetic
    (e.g. values 0, 1, 2 once each: t = 0 and t = 1 both give 0.5) come out as OpenCV's (t = 1 there).
    A constant image has no valid split and gives 0. The binary map is then ``image > t``.

    Checked against ``cv2.threshold(img, 0, 255, THRESH_BINARY + THRESH_OTSU)`` of opencv-python-headless
    4.10.0 and 5.0.0 with IPP disabled (``cv2.ipp.setUseIPP(False)``): the same threshold on 3,000 random
    uint8 images, many with exact ties. With IPP enabled (the wheels' default on x86) OpenCV calls
    ``ippiComputeOtsuThreshold``, which breaks exact ties otherwise (1 image of those 3,000); on continuous
    maps resized to a mask exact ties practically do not occur.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8

    Returns
    -------
    int
        The threshold t in [0, 254].
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image: expected dtype uint8, got {img.dtype} (quantise with to_uint8 first)")
    if img.size == 0:
        raise ValueError("image: is empty")
    hist = np.bincount(img.ravel(), minlength=256).tolist()
    scale = 1.0 / img.size
    mu = 0.0
    for i, count in enumerate(hist):
        mu += i * float(count)
    mu *= scale
    mu1 = q1 = max_sigma = 0.0
    best = 0
    # A 256-step loop over the histogram: the recurrence's rounding is what makes it exact.
    for i, count in enumerate(hist):
        p_i = count * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < _FLT_EPSILON or max(q1, q2) > 1.0 - _FLT_EPSILON:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma = sigma
            best = i
    return best


def binarize_otsu(heatmap, mask_shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The paper's binarisation: bilinear resize to the mask, ``uint8(255 * h)``, Otsu (``method.md`` §1.6).

    Parameters
    ----------
    heatmap : ndarray of shape (h, w)
        Map in [0, 1] at any resolution; values outside are clipped (see :func:`to_uint8`).
    mask_shape : tuple of int (H, W)
        Size of the ground-truth mask.

    Returns
    -------
    binary : ndarray of shape (H, W), bool
        ``uint8 map > threshold``.
    threshold : int
        Otsu threshold on the uint8 scale (:func:`otsu_threshold_uint8`).
    """
    quantised = to_uint8(resize_bilinear(heatmap, mask_shape))
    threshold = otsu_threshold_uint8(quantised)
    return quantised > threshold, threshold


# --------------------------------------------------------------------------------- paper's metrics


class ObjIoU(NamedTuple):
    """IoU of a binary map with one object, and the precision and recall at that object."""

    iou: float
    precision: float
    recall: float
    label: int | None


def labels_present(semantic_mask) -> np.ndarray:
    """Sorted non-zero labels of a semantic mask, ndarray of shape (K,), int64."""
    return np.flatnonzero(np.bincount(_as_semantic(semantic_mask).ravel())[1:]).astype(np.int64) + 1


def _obj_iou(binary: np.ndarray, mask: np.ndarray, label: int | None) -> ObjIoU:
    """:func:`obj_iou` on validated arrays: one bincount pass gives every label's area and overlap."""
    flat = mask.ravel()
    area = np.bincount(flat)
    present = np.flatnonzero(area[1:]) + 1
    if label is not None:
        if not 0 < int(label) < area.size or area[int(label)] == 0:
            raise ValueError(
                f"label: {label} is not present in semantic_mask (labels present: "
                f"{', '.join(map(str, present.tolist())) or 'none'})"
            )
        candidates = np.array([int(label)], dtype=np.int64)
    elif present.size == 0:
        return ObjIoU(float("nan"), float("nan"), float("nan"), None)
    else:
        candidates = present
    inter = np.bincount(flat[binary.ravel()], minlength=area.size)[candidates]
    area = area[candidates]
    n_binary = int(np.count_nonzero(binary))
    iou = inter / (area + n_binary - inter)
    best = int(np.argmax(iou))
    precision = inter[best] / n_binary if n_binary else 0.0
    return ObjIoU(float(iou[best]), float(precision), float(inter[best] / area[best]), int(candidates[best]))


def obj_iou(binary, semantic_mask, *, label: int | None = None) -> ObjIoU:
    """Obj-IoU of a binary map against a semantic mask.

    With ``label=None`` (the paper's protocol, no word matching) the IoU is taken with every object
    label present and the best one is kept; on equal IoU the smallest label wins. With a label (TAM's
    protocol, a word-matched object) only that object is used.

    Parameters
    ----------
    binary : ndarray of shape (H, W), bool
        Binarised map (:func:`binarize_otsu`).
    semantic_mask : ndarray of shape (H, W), int
        Pixel value = object label, 0 = background.
    label : int, optional
        Object to compare with; must be present in ``semantic_mask``.

    Returns
    -------
    ObjIoU
        ``iou = |B & M| / |B | M|``, ``precision = |B & M| / |B|`` (0 when B is empty),
        ``recall = |B & M| / |M|``, and the label used. Without objects in the mask (and ``label=None``)
        every value is NaN and the label is None.
    """
    b = _as_binary(binary, "binary")
    m = _as_semantic(semantic_mask)
    _same_shape(b, m, "binary", "semantic_mask")
    return _obj_iou(b, m, label)


def contrast(heatmap_resized, fg_mask) -> float:
    """Contrast = mean of the map on the foreground / (mean on the background + 1e-8) (``method.md`` §1.6).

    Parameters
    ----------
    heatmap_resized : ndarray of shape (H, W)
        The map at mask resolution.
    fg_mask : ndarray of shape (H, W), bool
        Foreground; the paper uses the union of all objects (``semantic_mask > 0``).

    Returns
    -------
    float
        NaN when the foreground or the background is empty.
    """
    h = check_map(heatmap_resized, "heatmap_resized")
    fg = _as_binary(fg_mask, "fg_mask")
    _same_shape(h, fg, "heatmap_resized", "fg_mask")
    return _contrast(h, fg)


def _contrast(h: np.ndarray, fg: np.ndarray) -> float:
    n_fg = int(np.count_nonzero(fg))
    if n_fg in (0, fg.size):
        return float("nan")
    return float(h[fg].mean() / (h[~fg].mean() + EPS))


def concentration(heatmap_resized, fg_mask) -> float:
    """Concentration = sum of the map on the foreground / (sum of the map + 1e-8) (``method.md`` §1.6).

    Parameters
    ----------
    heatmap_resized : ndarray of shape (H, W)
    fg_mask : ndarray of shape (H, W), bool

    Returns
    -------
    float
        In [0, 1] for a non-negative map; 0 for an all-zero map.
    """
    h = check_map(heatmap_resized, "heatmap_resized")
    fg = _as_binary(fg_mask, "fg_mask")
    _same_shape(h, fg, "heatmap_resized", "fg_mask")
    return _concentration(h, fg)


def _concentration(h: np.ndarray, fg: np.ndarray) -> float:
    return float(h[fg].sum() / (h.sum() + EPS))


def contrast_score(contrast_value):
    """Contrast mapped to [0, 1] for F3: ``min(contrast / 20, 1)``, as the official ``contrast_score``.

    Parameters
    ----------
    contrast_value : float or ndarray
        Contrast ratio(s), >= 0.

    Returns
    -------
    float or ndarray
        Same shape as the input.
    """
    return np.minimum(np.asarray(contrast_value, dtype=np.float64) / CONTRAST_SCALE, 1.0)[()]


def _harmonic_mean(*terms):
    """Harmonic mean of non-negative terms; 0 if any term is 0, NaN if any is NaN."""
    arrays = np.broadcast_arrays(*(np.asarray(t, dtype=np.float64) for t in terms))
    stacked = np.stack(arrays)
    if (stacked < 0).any():
        raise ValueError("metric values entering a harmonic mean must be >= 0")
    with np.errstate(divide="ignore"):
        inv = np.sum(1.0 / stacked, axis=0)  # a zero term gives inf, hence a harmonic mean of 0
    return (len(terms) / inv)[()]


def f3(obj_iou, contrast, concentration):
    """F3-Score: harmonic mean of (Obj-IoU, ``contrast_score(contrast)``, Concentration).

    The paper's tables compute it from the dataset-level means of the three metrics
    (``3 / (1/ObjIoU + 20/Contrast + 1/Concentration)``, ``method.md`` §1.6), which is what
    :func:`stages.score.aggregate.summarise` does. The Contrast term is capped at 1 (a contrast of 20 or more
    counts as perfect), as the official ``contrast_score``.

    Parameters
    ----------
    obj_iou, concentration : float or ndarray
        In [0, 1].
    contrast : float or ndarray
        Foreground/background ratio, >= 0.

    Returns
    -------
    float or ndarray
        Broadcast shape of the inputs; 0 where any term is 0, NaN where any is NaN.

    Examples
    --------
    >>> round(float(f3(0.3010, 2.58, 0.5141)), 4)
    0.2304
    """
    return _harmonic_mean(obj_iou, contrast_score(contrast), concentration)


# --------------------------------------------------------------------------------------- pointing game


def _region(mask, region: str) -> np.ndarray:
    """The non-empty ``mask`` itself or its bounding box."""
    if region == "mask":
        return mask
    box = np.zeros_like(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1] = True
    return box


def pointing_game(heatmap_resized, object_mask, *, tolerance: float = 0) -> float:
    """Pointing game (Zhang et al., ECCV 2016): is the map's maximum on the object?

    A hit when a pixel holding the map's maximum lies inside the object, or within ``tolerance`` pixels
    (Euclidean) of it; the original protocol uses 15 px. Ties: when several pixels share the maximum,
    **any** of them inside counts as a hit (as Quantus, ``argwhere(a == max)``), so a uniform map always
    hits a non-empty object.

    Parameters
    ----------
    heatmap_resized : ndarray of shape (H, W)
        The map at mask resolution.
    object_mask : ndarray of shape (H, W), bool
    tolerance : float, default 0
        Pixels, >= 0.

    Returns
    -------
    float
        1.0 for a hit, 0.0 for a miss, NaN for an empty object mask.
    """
    h = check_map(heatmap_resized, "heatmap_resized")
    obj = _as_binary(object_mask, "object_mask")
    _same_shape(h, obj, "heatmap_resized", "object_mask")
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance: must be a finite number >= 0, got {tolerance!r}")
    return _pointing_game(h, obj, tolerance)


def _pointing_game(h: np.ndarray, obj: np.ndarray, tolerance: float) -> float:
    if not obj.any():
        return float("nan")
    if tolerance > 0:
        from scipy.ndimage import distance_transform_edt

        obj = distance_transform_edt(~obj) <= tolerance
    return float(obj[h == h.max()].any())


def energy_pointing_game(heatmap_resized, object_mask, *, region: str = "bbox") -> float:
    """Energy-based pointing game: the share of the positive map's energy inside the object.

    ``sum(relu(h) inside) / sum(relu(h))``. Score-CAM (Wang et al., 2020) defines it with the object's
    bounding box (``region='bbox'``, the default, the box enclosing ``object_mask``); ``region='mask'``
    uses the mask itself, which is stricter.

    Parameters
    ----------
    heatmap_resized : ndarray of shape (H, W)
    object_mask : ndarray of shape (H, W), bool
    region : {'bbox', 'mask'}

    Returns
    -------
    float
        In [0, 1]; NaN for an empty object mask or a map without positive values.
    """
    h = check_map(heatmap_resized, "heatmap_resized")
    obj = _as_binary(object_mask, "object_mask")
    _same_shape(h, obj, "heatmap_resized", "object_mask")
    if region not in ("bbox", "mask"):
        raise ValueError(f"region: expected 'mask' or 'bbox', got {region!r}")
    return _energy_pointing(np.maximum(h, 0.0), obj, region)


def _energy_pointing(positive: np.ndarray, obj: np.ndarray, region: str) -> float:
    total = positive.sum()
    if not obj.any() or total <= 0:
        return float("nan")
    return float(positive[_region(obj, region)].sum() / total)


# -------------------------------------------------------------------------------------- one map, all


def score_map(heatmap, semantic_mask, *, label: int | None = None, tolerance: float = 0) -> dict[str, float]:
    """All paper-protocol metrics of one map, plus the pointing games.

    The map is resized to the mask (:func:`resize_bilinear`), clipped to [0, 1] and binarised
    (:func:`binarize_otsu`). Contrast and Concentration use that clipped, resized float map and the union
    of all objects as foreground, as the paper. Obj-IoU uses the best object (``label=None``) or ``label``.
    The pointing games use ``semantic_mask == label`` when a label is given, otherwise the union of all
    objects (a hit on any object).

    Parameters
    ----------
    heatmap : ndarray of shape (h, w)
        Map in [0, 1] (min-max normalised) at any resolution.
    semantic_mask : ndarray of shape (H, W), int
        Pixel value = object label, 0 = background.
    label : int, optional
        Word-matched object; must be present in the mask.
    tolerance : float, default 0
        Pointing-game tolerance in pixels.

    Returns
    -------
    dict
        ``obj_iou, precision, recall, label`` (-1 when none), ``contrast, contrast_score, concentration,
        f3`` (this map's own F3; tables use :func:`f3` of the means), ``otsu_threshold`` (uint8 scale),
        ``pointing_hit, energy_pointing_bbox, energy_pointing_mask``.
    """
    m = _as_semantic(semantic_mask)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance: must be a finite number >= 0, got {tolerance!r}")
    resized = np.clip(resize_bilinear(heatmap, m.shape), 0.0, 1.0)
    quantised = (255.0 * resized).astype(np.uint8)  # to_uint8 of an already clipped map
    threshold = otsu_threshold_uint8(quantised)
    best = _obj_iou(quantised > threshold, m, label)
    fg = m > 0
    target = fg if label is None else m == int(label)
    c = _contrast(resized, fg)
    k = _concentration(resized, fg)
    return {
        "obj_iou": best.iou,
        "precision": best.precision,
        "recall": best.recall,
        "label": float(-1 if best.label is None else best.label),
        "contrast": c,
        "contrast_score": float(contrast_score(c)),
        "concentration": k,
        "f3": float(f3(best.iou, c, k)),
        "otsu_threshold": float(threshold),
        "pointing_hit": _pointing_game(resized, target, tolerance),
        "energy_pointing_bbox": _energy_pointing(resized, target, "bbox"),
        "energy_pointing_mask": _energy_pointing(resized, target, "mask"),
    }


# -------------------------------------------------------------------------------------- TAM protocol


def func_iou(heatmap, fg_threshold: float) -> float:
    """TAM's Func-IoU of one function word: the share of its map below the noun foreground threshold.

    As TAM's ``eval.py``, on the map at its own (token-grid) resolution, quantised with :func:`to_uint8`:
    ``mean(uint8(255 * h) < fg_threshold)``. Higher is better (the map of "the" should be background).

    Parameters
    ----------
    heatmap : ndarray of shape (h, w)
        Map in [0, 1].
    fg_threshold : float
        Mean Otsu threshold (uint8 scale) of the sample's noun maps, see :func:`tam_word_scores`.

    Returns
    -------
    float
        In [0, 1].
    """
    if not np.isfinite(fg_threshold):
        raise ValueError(f"fg_threshold: must be finite, got {fg_threshold!r}")
    return float((to_uint8(heatmap) < fg_threshold).mean())


def f1_iou(obj_iou_mean, func_iou_mean):
    """TAM's F1-IoU: ``2 * Obj * Func / (Obj + Func)`` of the dataset-level means (0 when either is 0)."""
    return _harmonic_mean(obj_iou_mean, func_iou_mean)


#: How TAM's protocol brings a map to the mask: ``uint8`` as TAM's ``eval.py`` (quantise at the token grid,
#: then OpenCV's fixed-point bilinear resize), ``float`` as the paper's protocol (resize, then quantise).
TAM_RESIZE_MODES = ("uint8", "float")


def tam_binarize(heatmap, mask_shape: tuple[int, int], *, tam_resize: str = "uint8") -> tuple[np.ndarray, int]:
    """Otsu binarisation of one word map at the mask's size, as TAM (``tam_resize="uint8"``) or the paper.

    Parameters
    ----------
    heatmap : ndarray of shape (h, w)
        Map in [0, 1].
    mask_shape : tuple of int (H, W)
    tam_resize : {"uint8", "float"}, default "uint8"
        ``"uint8"``: ``uint8(255 * h)`` at the map's own grid, then :func:`resize_bilinear_uint8` (TAM's
        ``cv2.resize`` of its uint8 maps); ``"float"``: :func:`binarize_otsu` (resize the float map, then
        quantise). The two can put a pixel one level apart and so move the Otsu threshold.

    Returns
    -------
    binary : ndarray of shape (H, W), bool
    threshold : int
        Otsu threshold on the uint8 scale.
    """
    if tam_resize not in TAM_RESIZE_MODES:
        raise ValueError(f"tam_resize: expected one of {', '.join(TAM_RESIZE_MODES)}, got {tam_resize!r}")
    if tam_resize == "float":
        return binarize_otsu(heatmap, mask_shape)
    resized = resize_bilinear_uint8(to_uint8(heatmap), mask_shape)
    threshold = otsu_threshold_uint8(resized)
    return resized > threshold, threshold


def tam_word_scores(heatmaps: Sequence, word_classes: Sequence[tuple[str, int | None]], semantic_mask, *,
                    tam_resize: str = "uint8") -> list[dict]:
    """TAM's per-word scores of one sample, as TAM's ``eval.py`` ``evaluate`` (``method.md`` §2.4).

    For every matched noun (class ``"object"`` with a label) its map is binarised (:func:`tam_binarize`)
    and its Otsu threshold kept. A noun whose category is present in ``semantic_mask`` gets Obj-IoU with
    ``semantic_mask == label``; one whose category is absent gets no Obj-IoU entry (TAM:
    ``if gt.sum() != 0``), but its threshold still counts. Consecutive words with the same label are
    merged into one entry holding the best IoU (TAM's merge of multi-word object names). The sample's
    foreground threshold is the mean Otsu threshold of all matched nouns, present or absent; every
    function word (class ``"function"``) then gets :func:`func_iou`. Other words are not scored.

    Departures from TAM (README, "Differences"): TAM also averages the thresholds of unmatched nouns,
    which needs a POS tagger; here only matched nouns count. Maps are per word already (TAM takes the max
    over a word's sub-tokens). TAM merges by the labels of consecutive words alone, so two consecutive
    absent nouns of one category would merge the two IoU entries before them; here only the entries of
    the consecutive words themselves are merged.

    Parameters
    ----------
    heatmaps : sequence of ndarray of shape (h, w)
        One map in [0, 1] per generated word.
    word_classes : sequence of (str, int or None)
        ``stages.ingest.words.classify_word`` of each word: ``("object", label)``, ``("function", None)``
        or ``("other", None)``.
    semantic_mask : ndarray of shape (H, W), int
    tam_resize : {"uint8", "float"}, default "uint8"
        See :func:`tam_binarize`; ``"uint8"`` is TAM's.

    Returns
    -------
    list of dict
        ``{"index", "kind": "object" | "function", "label", "metric": "tam_obj_iou" | "func_iou", "value",
        "precision", "recall", "otsu_threshold"}`` in word order; precision, recall and threshold are NaN
        for function words. Function words get no entry when the sample has no matched noun.
    """
    if len(heatmaps) != len(word_classes):
        raise ValueError(f"word_classes: {len(word_classes)} entries for {len(heatmaps)} heatmaps")
    m = _as_semantic(semantic_mask)
    present = set(labels_present(m).tolist())
    thresholds, words = [], []
    for index, (heatmap, (kind, label)) in enumerate(zip(heatmaps, word_classes)):
        if kind != "object":
            continue
        if label is None:
            raise ValueError(f"word_classes: word {index} is an object without a label")
        binary, threshold = tam_binarize(heatmap, m.shape, tam_resize=tam_resize)
        thresholds.append(float(threshold))  # every matched noun, before merging, as TAM's noun_fg_thresh
        if int(label) not in present:
            continue
        res = _obj_iou(binary, m, int(label))
        words.append({"index": index, "kind": "object", "label": int(label), "metric": "tam_obj_iou",
                      "value": res.iou, "precision": res.precision, "recall": res.recall,
                      "otsu_threshold": float(threshold)})
    if not thresholds:
        return []
    fg_threshold = float(np.mean(thresholds))
    out: list[dict] = []
    for word in words:
        run = out[-1] if out else None
        if run is not None and run["label"] == word["label"] and run["_last"] == word["index"] - 1:
            if word["value"] > run["value"]:
                run.update({k: v for k, v in word.items() if k != "index"})
            run["_last"] = word["index"]
        else:
            out.append({**word, "_last": word["index"]})
    for entry in out:
        del entry["_last"]
    for index, (heatmap, (kind, _)) in enumerate(zip(heatmaps, word_classes)):
        if kind == "function":
            out.append({"index": index, "kind": "function", "label": None, "metric": "func_iou",
                        "value": func_iou(heatmap, fg_threshold), "precision": float("nan"),
                        "recall": float("nan"), "otsu_threshold": float("nan")})
    return sorted(out, key=lambda e: e["index"])
