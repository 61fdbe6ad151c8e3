"""The official Diffusion-CAM base map (``method.md`` §1.4): ``mean_c ReLU(alpha+_c * A_c)``."""

from __future__ import annotations

import numpy as np

from stages.basemaps._arrays import acts_and_weights, grid_shape
from stages.basemaps.reductions import Reduction
from stages.refine.normalize import min_max

__all__ = ["ALPHA_POS", "diffusion_cam_base"]


def _positive_spatial_mean(grads, acts):
    return grads.clamp(min=0).mean(1)


#: ``alpha_pos[t, d] = mean_n ReLU(G[t, n, d])``: the official Diffusion-CAM and LLaVA-CAM channel weights
#: (``method.md`` §1.4 and §3).
ALPHA_POS = Reduction("alpha_pos", "channel", _positive_spatial_mean,
                      "spatial mean of ReLU(gradient) (official base map, LLaVA-CAM)")


def diffusion_cam_base(acts, alpha_pos, grid, *, normalize: bool = False) -> np.ndarray:
    """The official Diffusion-CAM base map: ``mean_c ReLU(alpha+_c * A_c)``.

    ``method.md`` §1.4: the channel weights come from the positive-clamped gradient,
    and the ReLU is taken per channel *before* a channel mean (not the usual
    ``ReLU(sum_c alpha_c A_c)``). Because ``alpha+ >= 0``,
    ``ReLU(alpha+_c A_c) = alpha+_c ReLU(A_c)``, so the map is computed exactly as
    ``ReLU(acts) @ alpha+ / D`` without a (T, N, D) temporary.

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    alpha_pos : ndarray of shape (T, D)
        Spatial mean of ``ReLU(gradient)`` per target; must be non-negative.
    grid : tuple of int (h, w)
    normalize : bool
        Apply the official ``(cam - min) / (max + 1e-8)`` per map (note the
        denominator is the maximum, not the range, as in ``predict.py``;
        :func:`stages.refine.normalize.min_max` with ``denominator="max"``).

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
        Non-negative by construction.
    """
    acts, alpha_pos = acts_and_weights(acts, alpha_pos, "alpha_pos")
    if np.any(alpha_pos < 0):
        raise ValueError("alpha_pos must be non-negative (it is the spatial mean of ReLU(gradient))")
    h, w = grid_shape(grid, acts.shape[0])
    cam = (alpha_pos @ np.maximum(acts, 0).T / np.float32(acts.shape[1])).reshape(-1, h, w)
    return min_max(cam, denominator="max").astype(np.float32, copy=False) if normalize else cam
