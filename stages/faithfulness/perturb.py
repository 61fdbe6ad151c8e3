"""Pixel-space perturbations at token-grid resolution, and the curves built from them.

Pure functions over NumPy arrays. A grid cell ``(i, j)`` of an ``(h, w)`` token grid covers the pixel box
``rows[i]:rows[i+1], cols[j]:cols[j+1]`` of the image, with the edges spread evenly over the image
(:func:`cell_index_image`). Perturbing a cell replaces its pixels by a *baseline* image
(:func:`baseline_image`) and the model re-encodes the whole image, so the vision tower sees a natural input
(``reference/faithfulness.md``: occlude whole patches in pixel space and re-encode).

* **Occlusion** (Zeiler & Fergus 2014): one window of cells at a time (:func:`occlusion_windows`); the map is
  the drop of the target score, averaged over the windows that cover a cell.
* **Deletion / insertion** (Petsiuk et al., RISE, BMVC 2018): cells are removed from the image (deletion) or
  revealed on the baseline (insertion) in the order of a map (:func:`cell_order`), in ``points - 1`` equal
  chunks (:func:`curve_masks`); the area under the score curve normalised by the unperturbed score
  (:func:`normalised_auc`) is low for a faithful map under deletion and high under insertion.
"""

from __future__ import annotations

import numpy as np

BASELINES = ("mean", "blur")


def _grid(grid) -> tuple[int, int]:
    h, w = (int(v) for v in grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid: must be a pair of positive integers, got {grid!r}")
    return h, w


def cell_index_image(shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """The grid cell (row-major index) of every pixel.

    Parameters
    ----------
    shape : (H, W)
        Image size in pixels.
    grid : (h, w)
        Token grid.

    Returns
    -------
    ndarray of shape (H, W), int64
        ``i * w + j`` for the pixels of cell ``(i, j)``; cell edges at ``round(k * H / h)``.
    """
    gh, gw = _grid(grid)
    height, width = int(shape[0]), int(shape[1])
    if height < gh or width < gw:
        raise ValueError(f"image {height}x{width}: smaller than the {gh}x{gw} token grid")
    rows = np.searchsorted(np.round(np.linspace(0, height, gh + 1))[1:], np.arange(height), side="right")
    cols = np.searchsorted(np.round(np.linspace(0, width, gw + 1))[1:], np.arange(width), side="right")
    return rows[:, None] * gw + cols[None, :]


def baseline_image(image: np.ndarray, kind: str = "mean", *, grid: tuple[int, int] | None = None) -> np.ndarray:
    """What a removed cell shows.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    kind : {"mean", "blur"}
        ``mean``: the image's mean colour everywhere (the classic occlusion baseline). ``blur``: a Gaussian
        blur of the image with sigma equal to one cell's size, so a removed cell keeps its local colour but
        loses its shape (ROAD, Rong et al. 2022, argue a constant patch leaks the removed region's outline).
    grid : (h, w), optional
        Token grid; needed for ``blur`` (it sets sigma).

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    if kind == "mean":
        colour = np.round(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
        return np.broadcast_to(colour, image.shape).copy()
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        if grid is None:
            raise ValueError("baseline 'blur': give the token grid (it sets the blur's sigma)")
        gh, gw = _grid(grid)
        sigma = (image.shape[0] / gh, image.shape[1] / gw, 0)
        out = gaussian_filter(image.astype(np.float32), sigma=sigma, mode="reflect")
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    raise ValueError(f"baseline: must be one of {', '.join(BASELINES)}, got {kind!r}")


def compose(image: np.ndarray, baseline: np.ndarray, removed: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Images with the ``removed`` cells taken from ``baseline``.

    Parameters
    ----------
    image, baseline : ndarray of shape (H, W, 3), uint8
    removed : bool ndarray of shape (n_cells,) or (B, n_cells)
    cells : ndarray of shape (H, W)
        From :func:`cell_index_image`.

    Returns
    -------
    ndarray of shape (H, W, 3) or (B, H, W, 3), uint8
    """
    removed = np.asarray(removed, dtype=bool)
    pix = removed[..., cells]  # (..., H, W)
    return np.where(pix[..., None], baseline, image)


def occlusion_windows(grid: tuple[int, int], window: int = 1, stride: int | None = None) -> np.ndarray:
    """Sliding square windows of cells, as boolean cell masks.

    Parameters
    ----------
    grid : (h, w)
    window : int
        Side of the window in cells (1: one cell at a time).
    stride : int, optional
        Step between windows; default ``max(1, window // 2)``. The last window of a row or column is moved to
        the grid's edge so that every cell is covered.

    Returns
    -------
    bool ndarray of shape (n_windows, h * w)
    """
    gh, gw = _grid(grid)
    if window < 1:
        raise ValueError(f"window: must be >= 1, got {window}")
    window = min(window, gh, gw)
    stride = max(1, window // 2) if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride: must be >= 1, got {stride}")

    def starts(n: int) -> list[int]:
        s = list(range(0, n - window + 1, stride))
        if s[-1] != n - window:
            s.append(n - window)
        return s

    masks = []
    for i in starts(gh):
        for j in starts(gw):
            m = np.zeros((gh, gw), dtype=bool)
            m[i : i + window, j : j + window] = True
            masks.append(m.reshape(-1))
    return np.stack(masks)


def default_window(grid: tuple[int, int], max_windows: int = 256) -> int:
    """One cell where the grid has at most ``max_windows`` cells; else the smallest square window whose
    half-overlapping windows number at most ``max_windows``."""
    gh, gw = _grid(grid)
    window = 1
    while len(occlusion_windows((gh, gw), window)) > max_windows and window < min(gh, gw):
        window += 1
    return window


def occlusion_map(drops: np.ndarray, windows: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per-cell occlusion map: the mean score drop over the windows that cover each cell.

    Parameters
    ----------
    drops : ndarray of shape (n_windows, T)
        Unperturbed score minus the score with each window removed, per target.
    windows : bool ndarray of shape (n_windows, h * w)

    Returns
    -------
    ndarray of shape (T, h, w), float32
    """
    gh, gw = _grid(grid)
    w = np.asarray(windows, dtype=np.float64)
    cover = w.sum(axis=0)
    out = (w.T @ np.asarray(drops, dtype=np.float64)) / np.maximum(cover, 1)[:, None]  # (n_cells, T)
    return out.T.reshape(-1, gh, gw).astype(np.float32)


def cell_order(saliency: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Cells from the most to the least salient; ties in random (seeded) order.

    A constant or thresholded map ranks many cells equally; breaking those ties by index would give them a
    spatial bias (top-left first), so they are broken by a seeded random key.
    """
    s = np.asarray(saliency, dtype=np.float64).reshape(-1)
    s = np.where(np.isnan(s), -np.inf, s)
    key = np.random.default_rng(seed).random(s.size)
    return np.lexsort((key, -s))


def curve_masks(order: np.ndarray, points: int) -> np.ndarray:
    """Which cells are perturbed at each point of a deletion (or insertion) curve.

    Parameters
    ----------
    order : ndarray of shape (n_cells,)
        Cells in the order they are perturbed.
    points : int
        Points on the curve, >= 2: point ``k`` perturbs the first ``round(k * n / (points - 1))`` cells, so
        point 0 perturbs none and the last all.

    Returns
    -------
    bool ndarray of shape (points, n_cells)
    """
    n = int(np.asarray(order).size)
    points = int(points)
    if points < 2:
        raise ValueError(f"points: must be >= 2, got {points}")
    counts = np.round(np.linspace(0, n, points)).astype(int)
    rank = np.empty(n, dtype=np.int64)
    rank[np.asarray(order)] = np.arange(n)
    return rank[None, :] < counts[:, None]


def normalised_auc(curve: np.ndarray, reference: float) -> float:
    """Area under a score curve over x in [0, 1] (trapezoids), divided by the unperturbed score.

    ``nan`` when ``reference`` is not positive (the normalisation is then meaningless).
    """
    c = np.asarray(curve, dtype=np.float64)
    if not reference > 0 or c.size < 2:
        return float("nan")
    x = np.linspace(0.0, 1.0, c.size)
    return float(np.sum((c[1:] + c[:-1]) * np.diff(x)) / 2.0 / reference)
