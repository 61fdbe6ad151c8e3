"""Grad-CAM++ (Chattopadhay et al. 2018): channel weights that sum the positive gradient with per-position weights.

With ``G`` the gradient of a target's score with respect to the activations ``A`` (N tokens, D channels) and
``S_d = sum_n A[n, d]``, eq. 19 of the paper with first-order terms (the exponential's higher derivatives as
powers of the gradient, as pytorch-grad-cam's ``GradCAMPlusPlus`` computes them) gives

``a[n, d] = G^2 / (2 G^2 + S_d G^3 + 1e-6)`` (0 where ``G == 0``) and ``w_d = sum_n a[n, d] ReLU(G[n, d])``,

and the map is ``sum_d w_d A[:, d]``, signed unless ``relu`` (pytorch-grad-cam applies the ReLU and a min-max
scaling itself; here they are options and chain steps, as for Grad-CAM).
"""

from __future__ import annotations

import numpy as np

from stages.basemaps._arrays import channel_weighted_map
from stages.basemaps.reductions import Reduction

__all__ = ["ALPHA_PP", "EPS", "grad_cam_pp"]

#: Added to the denominator of the per-position weights (pytorch-grad-cam's value).
EPS = 1e-6


def _gradcam_pp_weights(grads, acts):
    g2 = grads * grads
    g3 = g2 * grads
    total = acts.sum(0)  # (D,): sum of each channel's activations over the grid
    a = (g2 / (2 * g2 + total * g3 + EPS)).masked_fill(grads == 0, 0.0)
    return (grads.clamp(min=0) * a).sum(1)


#: ``alpha_pp[t, d] = sum_n a[t, n, d] ReLU(G[t, n, d])`` (module docstring).
ALPHA_PP = Reduction("alpha_pp", "channel", _gradcam_pp_weights,
                     "Grad-CAM++ channel weights: position-weighted sum of ReLU(gradient)")


def grad_cam_pp(acts, alpha_pp, grid, *, relu: bool = False) -> np.ndarray:
    """Grad-CAM++ from stored channel weights: ``map_t = sum_d alpha_pp[t, d] * acts[:, d]``.

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    alpha_pp : ndarray of shape (T, D)
        Grad-CAM++ channel weights per target (:data:`ALPHA_PP`).
    grid : tuple of int (h, w)
        Token grid; ``h * w`` must equal N.
    relu : bool
        Clip negative values to 0, as the paper's map. Off by default: the map is signed.

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
    """
    cam = channel_weighted_map(acts, alpha_pp, "alpha_pp", grid)
    return np.maximum(cam, 0) if relu else cam
