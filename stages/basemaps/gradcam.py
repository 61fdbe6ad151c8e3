"""Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of the gradient."""

from __future__ import annotations

import numpy as np

from stages.basemaps._arrays import channel_weighted_map, real_array
from stages.basemaps.reductions import Reduction

__all__ = ["ALPHA", "grad_cam", "grad_cam_from_weights"]


def _spatial_mean(grads, acts):
    return grads.mean(1)


#: ``alpha[t, d] = mean_n G[t, n, d]``: Grad-CAM's channel weights (eq. 1).
ALPHA = Reduction("alpha", "channel", _spatial_mean, "Grad-CAM channel weights: spatial mean of the gradient")


def grad_cam_from_weights(acts, alpha, grid, *, relu: bool = False) -> np.ndarray:
    """Grad-CAM from stored channel weights: ``map_t = sum_d alpha[t, d] * acts[:, d]``.

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    alpha : ndarray of shape (T, D)
        Channel weights per target, the spatial mean of the gradient (Selvaraju et al. 2017, eq. 1).
    grid : tuple of int (h, w)
        Token grid; ``h * w`` must equal N.
    relu : bool
        Apply the ReLU of the original Grad-CAM (eq. 2). Off by default: the map is signed.

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
        Equals :func:`grad_cam` on the full gradient whose spatial mean is ``alpha``.
    """
    cam = channel_weighted_map(acts, alpha, "alpha", grid)
    return np.maximum(cam, 0) if relu else cam


def grad_cam(acts, grads, grid, *, relu: bool = False) -> np.ndarray:
    """Grad-CAM of one layer: channel weights are the spatial mean of the gradient.

    ``alpha_d = mean_n grads[n, d]`` and ``map = sum_d alpha_d * acts[:, d]``
    (Selvaraju et al. 2017, eq. 1-2; pytorch-grad-cam ``GradCAM`` without its baked-in
    ReLU and min-max scaling).

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    grads : ndarray of shape (N, D) or (T, N, D)
        Gradient of the target score(s) with respect to ``acts``.
    grid : tuple of int (h, w)
        Token grid; ``h * w`` must equal N.
    relu : bool
        Apply the ReLU of the original Grad-CAM. Off by default: the map is signed.

    Returns
    -------
    cam : ndarray of shape (h, w) or (T, h, w), float32
        One map per target; no target axis when ``grads`` has none.
    """
    grads = real_array(grads, "grads", (2, 3))
    acts = real_array(acts, "acts", (2,))
    if grads.shape[-2:] != acts.shape:
        raise ValueError(f"grads must have shape (N, D) = {acts.shape} on its last two axes, got {grads.shape}")
    alpha = grads.mean(axis=-2, dtype=np.float64).astype(np.float32)
    cam = grad_cam_from_weights(acts, alpha.reshape(-1, acts.shape[1]), grid, relu=relu)
    return cam[0] if grads.ndim == 2 else cam
