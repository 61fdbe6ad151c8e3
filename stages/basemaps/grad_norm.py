"""Gradient norm per grid token: a base map that is not activation-weighted (not a CAM)."""

from __future__ import annotations

import numpy as np

from stages.basemaps._arrays import token_map
from stages.basemaps.reductions import Reduction

__all__ = ["GNORM", "grad_norm"]


def _channel_norm(grads, acts):
    return grads.norm(dim=-1)


#: ``gnorm[t, n] = ||G[t, n, :]||_2``.
GNORM = Reduction("gnorm", "token", _channel_norm, "L2 norm of the gradient over channels, per token")


def grad_norm(gnorm, grid) -> np.ndarray:
    """Gradient norm per grid token: how strongly the target's score responds to each token, whatever its size.

    Not a CAM: no activation weighting. Offered as a base map that is not dominated by token norm. In a pre-norm
    transformer every block reads a token through RMSNorm, so the gradient is nearly orthogonal to the token's
    activation and ``sum_c alpha_c A_c`` loses the signal, while the gradient's mass still lies where the target
    looked (``docs/embedded_default.md``: on the embedded toy it points at the named object for 0.78 to 0.88 of
    words at blocks 0 and 1, against 0.16 to 0.43 for Grad-CAM and 0 for the official base).

    Parameters
    ----------
    gnorm : ndarray of shape (T, N)
        ``||grad[t, n, :]||_2`` as stored by the capture stage (:data:`GNORM`).
    grid : tuple of int (h, w)

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32, >= 0
    """
    return token_map(gnorm, "gnorm", grid)
