"""TAM's raw activation map (``method.md`` §2.1): the target class logit per image position, clipped at 0."""

from __future__ import annotations

import numpy as np

from stages.basemaps._arrays import grid_shape, real_array

__all__ = ["tam_map"]


def tam_map(tam_logits, grid) -> np.ndarray:
    """TAM's raw activation map: the target class logit per image position, clipped at 0.

    ``method.md`` §2.1: ``scores = lm_head(h_last)[:, cls]`` clipped at ``>= 0``. The
    joint image/text min-max normalisation, rank Gaussian filter and ECI of TAM are
    separate steps (:mod:`stages.refine`). Reads the per-sample array ``tam_logits``, not a gradient reduction.

    Parameters
    ----------
    tam_logits : ndarray of shape (T, N)
        Raw logit of each target's class at each grid token.
    grid : tuple of int (h, w)

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
    """
    tam_logits = real_array(tam_logits, "tam_logits", (2,))
    h, w = grid_shape(grid, tam_logits.shape[1])
    return np.maximum(tam_logits.reshape(-1, h, w), 0)
