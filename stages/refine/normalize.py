"""The official chain's clip-and-rescale step between CBA and SICD (``method.md`` §1.5).

``apply_cam_postprocess`` ends its AKD/DACG/CBA block with
``np.clip(H, 0, max(raw))`` and, when ``max > min``, ``(H - min) / (max - min + 1e-8)``,
in every ablation mode but ``baseline`` (whichever modules ran), and only then runs
SICD. It is a step of its own here so that a chain says where it happens:
``akd, dacg, cba, normalize, sicd`` is the official order.
"""

from __future__ import annotations

import numpy as np

from stages.refine import as_stack, contexts_for, from_stack


def clip_and_rescale(cam, *, context=None) -> np.ndarray:
    """Clip to ``[0, raw_max]``, then min-max normalise each map to [0, 1).

    Parameters
    ----------
    cam : ndarray of shape (h, w) or (n, h, w)
    context : MapContext, sequence of MapContext or None
        ``context.raw_max`` is the maximum of the map before post-processing (the
        official ``max(raw)``); :func:`stages.refine.chain.apply_chain` fills it from
        the chain's input. When it is None only the lower clip at 0 applies.

    Returns
    -------
    rescaled : ndarray, same shape as ``cam``
        ``(H - min) / (max - min + 1e-8)`` per map after clipping; a map whose clipped
        values are all equal is returned clipped but not rescaled, as the official code.
    """
    stack, single, dtype = as_stack(cam)
    n = stack.shape[0]
    upper = np.array([np.inf if c.raw_max is None else float(c.raw_max) for c in contexts_for(context, n)])
    clipped = np.clip(stack, 0.0, np.maximum(upper, 0.0)[:, None, None])
    lo = clipped.min(axis=(1, 2), keepdims=True)
    hi = clipped.max(axis=(1, 2), keepdims=True)
    rescaled = np.where(hi > lo, (clipped - lo) / (hi - lo + 1e-8), clipped)
    return from_stack(rescaled, single, dtype)
