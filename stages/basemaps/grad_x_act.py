"""Gradient x activation, summed over channels, per grid token (HiResCAM-style)."""

from __future__ import annotations

import numpy as np

from stages.basemaps._arrays import token_map
from stages.basemaps.reductions import Reduction

__all__ = ["GXA", "grad_x_act"]


def _channel_sum_of_product(grads, acts):
    return (grads * acts).sum(-1)


#: ``gxa[t, n] = sum_d G[t, n, d] * A[n, d]``.
GXA = Reduction("gxa", "token", _channel_sum_of_product, "sum over channels of gradient x activation, per token")


def grad_x_act(gxa, grid, *, relu: bool = False) -> np.ndarray:
    """Gradient x activation, summed over channels, per grid token (HiResCAM-style).

    Parameters
    ----------
    gxa : ndarray of shape (T, N)
        ``sum_d grad[t, n, d] * acts[n, d]`` as stored by the capture stage (:data:`GXA`).
    grid : tuple of int (h, w)
    relu : bool
        Clip negative values to 0 (LayerCAM-like display); off by default.

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
    """
    cam = token_map(gxa, "gxa", grid)
    return np.maximum(cam, 0) if relu else cam
