"""One normalise and one threshold implementation, and the official chain's clip-and-rescale step.

Every map normalisation of the project goes through the three public functions here, per map over the last
two axes (a single (h, w) map or a stack (..., h, w)), in the input's floating dtype:

:func:`min_max`
    ``(cam - min) / (max - min + eps)`` (maps whose values are all equal are left as they are), or the
    official base map's ``(cam - min) / (max + eps)`` (``predict.py``: the maximum, not the range).
:func:`divide_by_max`
    ``cam / max`` for maps whose maximum is positive (the others are left as they are).
:func:`zero_below`
    Values below a threshold set to 0 (the official baseline's 0.4, LLaVA-CAM's 0.5).

:func:`clip_and_rescale` is the refine module ``normalize`` (``method.md`` §1.5): ``apply_cam_postprocess``
ends its AKD/DACG/CBA block with ``np.clip(H, 0, max(raw))`` and, when ``max > min``,
``(H - min) / (max - min + 1e-8)``, in every ablation mode but ``baseline`` (whichever modules ran), and only
then runs SICD. It is a step of its own so that a chain says where it happens: ``akd, dacg, cba, normalize,
sicd`` is the official order.
"""

from __future__ import annotations

import numpy as np

from stages.refine import as_stack, contexts_for, from_stack

__all__ = ["min_max", "divide_by_max", "zero_below", "clip_and_rescale"]

_DENOMINATORS = ("range", "max")


def _floating(cam) -> np.ndarray:
    cam = np.asarray(cam)
    if cam.ndim < 2:
        raise ValueError(f"cam must have at least 2 dimensions (..., h, w), got shape {cam.shape}")
    return cam if np.issubdtype(cam.dtype, np.floating) else cam.astype(np.float64)


def min_max(cam, *, denominator: str = "range", eps: float = 1e-8) -> np.ndarray:
    """Min-max normalise each map (the last two axes).

    Parameters
    ----------
    cam : ndarray of shape (..., h, w)
    denominator : {"range", "max"}
        ``"range"``: ``(cam - min) / (max - min + eps)`` for maps with ``max > min``; a map whose values are
        all equal is returned as it is (the official ``apply_cam_postprocess``). ``"max"``:
        ``(cam - min) / (max + eps)`` for every map (the official base map of ``predict.py``).
    eps : float
        Added to the denominator, in the map's dtype.

    Returns
    -------
    ndarray, same shape as ``cam``; its dtype if floating, else float64.

    Examples
    --------
    >>> min_max(np.array([[1.0, 3.0], [2.0, 5.0]]), eps=0).tolist()
    [[0.0, 0.5], [0.25, 1.0]]
    >>> min_max(np.array([[1.0, 3.0], [2.0, 5.0]]), denominator="max", eps=0).tolist()
    [[0.0, 0.4], [0.2, 0.8]]
    """
    if denominator not in _DENOMINATORS:
        raise ValueError(f"denominator must be one of {_DENOMINATORS}, got {denominator!r}")
    cam = _floating(cam)
    eps = cam.dtype.type(eps)
    lo = cam.min(axis=(-2, -1), keepdims=True)
    hi = cam.max(axis=(-2, -1), keepdims=True)
    if denominator == "max":
        return (cam - lo) / (hi + eps)
    with np.errstate(divide="ignore", invalid="ignore"):  # flat maps: the branch np.where discards
        return np.where(hi > lo, (cam - lo) / (hi - lo + eps), cam)


def divide_by_max(cam) -> np.ndarray:
    """Divide each map (the last two axes) by its maximum; maps whose maximum is not positive are left as they are.

    Parameters
    ----------
    cam : ndarray of shape (..., h, w)

    Returns
    -------
    ndarray, same shape as ``cam``; its dtype if floating, else float64.

    Examples
    --------
    >>> divide_by_max(np.array([[[1.0, 4.0]], [[-1.0, 0.0]]])).tolist()
    [[[0.25, 1.0]], [[-1.0, 0.0]]]
    """
    cam = _floating(cam)
    peak = cam.max(axis=(-2, -1), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, cam.dtype.type(1)), cam)


def zero_below(cam, threshold: float) -> np.ndarray:
    """Set the values below ``threshold`` to 0.

    Parameters
    ----------
    cam : ndarray
    threshold : float
        Must be finite.

    Returns
    -------
    ndarray, same shape as ``cam``; its dtype if floating, else float64.

    Examples
    --------
    >>> zero_below(np.array([0.2, 0.5, 0.9]), 0.5).tolist()
    [0.0, 0.5, 0.9]
    """
    if threshold is None or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    cam = np.asarray(cam)
    cam = cam if np.issubdtype(cam.dtype, np.floating) else cam.astype(np.float64)
    return np.where(cam < threshold, cam.dtype.type(0), cam)


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
        ``(H - min) / (max - min + 1e-8)`` per map after clipping (:func:`min_max`); a map whose clipped
        values are all equal is returned clipped but not rescaled, as the official code.
    """
    stack, single, dtype = as_stack(cam)
    n = stack.shape[0]
    upper = np.array([np.inf if c.raw_max is None else float(c.raw_max) for c in contexts_for(context, n)])
    clipped = np.clip(stack, 0.0, np.maximum(upper, 0.0)[:, None, None])
    return from_stack(min_max(clipped), single, dtype)
