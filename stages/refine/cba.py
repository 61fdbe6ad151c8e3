"""CBA: Contextual Background Attenuation (``method.md`` §1.5(c))."""

from __future__ import annotations

import numpy as np

from stages.refine import as_stack, check_profile, from_stack, sorted_percentile

#: Floor of the attenuation factor: background is attenuated by at most 50 %.
LAMBDA_FLOOR = 0.5
#: Extra factor for values below 0.2 delta (applied before the floor).
VERY_LOW_FACTOR = 0.3


def background_threshold(cam) -> np.ndarray:
    """The background threshold delta of each map.

    ``delta = 0.15 P50(nz) + 0.15 P60(H) + 0.2 mean(nz) + 0.3 (0.05 max H)`` with
    ``nz = H[H > 0]`` (the code writes 0.2 as 0.5 * 0.4); ``delta = 1e-6`` when ``nz``
    is empty.

    Parameters
    ----------
    cam : ndarray of shape (h, w) or (n, h, w)

    Returns
    -------
    delta : ndarray of shape () or (n,)
    """
    stack, single, _ = as_stack(cam)
    delta = _delta(stack)
    return delta[0] if single else delta


def _delta(stack: np.ndarray) -> np.ndarray:
    n = stack.shape[0]
    flat = stack.reshape(n, -1)
    size = flat.shape[1]
    ordered = np.sort(flat, axis=1)
    positive = (flat > 0).sum(axis=1)
    p50_nz = sorted_percentile(ordered, size - positive, positive, 50)
    p60 = sorted_percentile(ordered, np.zeros(n, dtype=np.int64), np.full(n, size), 60)
    mean_nz = np.where(flat > 0, flat, 0).sum(axis=1) / np.maximum(positive, 1)
    delta = 0.15 * p50_nz + 0.15 * p60 + 0.5 * 0.4 * mean_nz + 0.3 * (0.05 * ordered[:, -1])
    return np.where(positive > 0, delta, 1e-6)


def background_attenuate(
    cam,
    *,
    profile: str = "reference",
    floor: float = LAMBDA_FLOOR,
    very_low_factor: float = VERY_LOW_FACTOR,
    context=None,
) -> np.ndarray:
    """CBA: attenuate values below the background threshold delta, at most by half.

    For ``v < delta``: ``lambda = clip(v / delta, 0, 1)``, times 0.3 where
    ``v < 0.2 delta``, then clipped to [0.5, 1], and ``v <- v lambda``. Values
    ``>= delta`` (foreground) are untouched. The official chain then clips to
    ``[0, max(raw)]`` and min-max normalises; that is the separate ``normalize`` step
    (:func:`stages.refine.normalize.clip_and_rescale`).

    Parameters
    ----------
    cam : ndarray of shape (h, w) or (n, h, w)
        Map(s) after DACG.
    profile : {"reference", "paper"}
        Both profiles follow the code. The paper figure prints ``min(v / delta, 0.5)``,
        but its worked examples (v = 0.3, delta = 0.4 gives 0.75; v = 0.1 gives 0.5)
        match the code's clip to [0.5, 1] (``method.md`` §1.5(c)).
    floor : float in (0, 1], default 0.5
        Smallest attenuation factor (the official 0.5: background loses at most half).
    very_low_factor : float in [0, 1], default 0.3
        Extra factor for values below ``0.2 delta``, applied before the floor.
    context : ignored
        Accepted for a uniform module interface.

    Returns
    -------
    attenuated : ndarray, same shape as ``cam``
    """
    check_profile(profile)
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor: must be in (0, 1], got {floor}")
    if not 0.0 <= very_low_factor <= 1.0:
        raise ValueError(f"very_low_factor: must be in [0, 1], got {very_low_factor}")
    stack, single, dtype = as_stack(cam)
    delta = _delta(stack)[:, None, None]
    factor = np.clip(stack / np.maximum(delta, 1e-8), 0.0, 1.0)
    factor = np.where(stack < 0.2 * delta, factor * very_low_factor, factor)
    factor = np.clip(factor, floor, 1.0)
    return from_stack(np.where(stack < delta, stack * factor, stack), single, dtype)
