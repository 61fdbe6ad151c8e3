"""LLaVA-CAM (``method.md`` §3): ``mean_c(alpha+_c * F_c)``, with the original's ReLU, max and threshold as options."""

from __future__ import annotations

import numpy as np

from stages.basemaps._arrays import acts_and_weights, grid_shape
from stages.refine.normalize import divide_by_max, zero_below

__all__ = ["llava_cam"]


def llava_cam(acts, alpha_pos, grid, *, relu: bool = False, normalize: str | None = None, threshold: float | None = None) -> np.ndarray:
    """LLaVA-CAM (``method.md`` §3): ``mean_c(alpha+_c * F_c)``.

    The original (``demo_smooth_grad_threshold.py``) then applies ReLU, divides by
    the maximum and zeroes values below 0.5; here each step is an option, so
    ``relu=True, normalize="max", threshold=0.5`` reproduces it.

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    alpha_pos : ndarray of shape (T, D)
        Spatial mean of ``ReLU(gradient)`` per target (:data:`stages.basemaps.diffusion_cam.ALPHA_POS`).
    grid : tuple of int (h, w)
    relu : bool
        Clip negative values to 0.
    normalize : {None, "max"}
        ``"max"`` divides each map by its maximum (maps whose maximum is not positive
        are left as they are, where the original would divide by zero;
        :func:`stages.refine.normalize.divide_by_max`).
    threshold : float or None
        Set values below ``threshold`` to 0 (after the other steps; :func:`stages.refine.normalize.zero_below`).

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
    """
    if normalize not in (None, "max"):
        raise ValueError(f"normalize must be None or 'max', got {normalize!r}")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number or None, got {threshold!r}")
    acts, alpha_pos = acts_and_weights(acts, alpha_pos, "alpha_pos")
    h, w = grid_shape(grid, acts.shape[0])
    cam = (alpha_pos @ acts.T / np.float32(acts.shape[1])).reshape(-1, h, w)
    if relu:
        cam = np.maximum(cam, 0)
    if normalize == "max":
        cam = divide_by_max(cam)
    if threshold is not None:
        cam = zero_below(cam, threshold)
    return cam.astype(np.float32, copy=False)
