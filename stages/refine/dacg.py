"""DACG: Distribution-Aware Confidence Gating (``method.md`` §1.5(b)).

The map's mean and std pick a percentile alpha; ``zeta = P_alpha(nonzero values)`` splits
it into high-confidence pixels (``v > zeta``, kept) and low-confidence ones, which the
paper smooths with a small Gaussian (figure: "kernel = 3, sigma = 0.3").
"""

from __future__ import annotations

import numpy as np

from stages.refine import as_stack, check_profile, from_stack, sorted_percentile

#: ``predict.py`` ``_dacg_params`` defaults.
DEFAULTS = {
    "delta_sigma": 0.22,
    "delta_mu": 0.35,
    "delta_mu_prime": 0.25,
    "alpha_high_var": 90.0,
    "alpha_high_mean": 75.0,
    "alpha_low_mean": 80.0,
    "alpha_default": 85.0,
}
ZETA_FLOOR = 1e-6


def confidence_threshold(cam, **params) -> tuple[np.ndarray, np.ndarray]:
    """The percentile alpha and threshold zeta that DACG chooses for each map.

    With ``mu``, ``sigma`` the mean and std of the whole map, in this order:
    ``sigma > delta_sigma`` gives ``alpha_high_var`` (90); else ``mu > delta_mu`` gives
    ``alpha_high_mean`` (75); else ``mu < delta_mu_prime`` gives ``alpha_low_mean`` (80);
    else ``alpha_default`` (85). ``zeta = max(percentile(cam[cam > 0], alpha), 1e-6)``.
    A map with no positive value gets ``alpha = 0`` and ``zeta = 1e-6``, as the code's
    ``"all_zero"`` branch.

    Parameters
    ----------
    cam : ndarray of shape (h, w) or (n, h, w)
    **params
        Overrides of :data:`DEFAULTS` (the official ``dacg_params`` keys).

    Returns
    -------
    alpha : ndarray of shape () or (n,)
        Percentile used per map.
    zeta : ndarray of shape () or (n,)
        Threshold per map.
    """
    p = _checked(params)
    stack, single, _ = as_stack(cam)
    alpha, zeta = _threshold(stack, p)
    return (alpha[0], zeta[0]) if single else (alpha, zeta)


def _checked(params: dict) -> dict:
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown DACG parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    for key in ("alpha_high_var", "alpha_high_mean", "alpha_low_mean", "alpha_default"):
        if not 0 <= p[key] <= 100:
            raise ValueError(f"{key} must be a percentile in [0, 100], got {p[key]!r}")
    return p


def _threshold(stack: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    n = stack.shape[0]
    flat = stack.reshape(n, -1)
    mu, sigma = flat.mean(axis=1), flat.std(axis=1)
    alpha = np.select(
        [sigma > p["delta_sigma"], mu > p["delta_mu"], mu < p["delta_mu_prime"]],
        [p["alpha_high_var"], p["alpha_high_mean"], p["alpha_low_mean"]],
        default=p["alpha_default"],
    ).astype(np.float64)
    positive = (flat > 0).sum(axis=1)
    ordered = np.sort(flat, axis=1)
    # The positive values are the last `positive` entries of each sorted row.
    zeta = np.empty(n)
    for q in np.unique(alpha):
        chosen = alpha == q
        zeta[chosen] = sorted_percentile(ordered[chosen], flat.shape[1] - positive[chosen], positive[chosen], q)
    zeta = np.where(positive > 0, np.maximum(zeta, ZETA_FLOOR), ZETA_FLOOR)
    alpha = np.where(positive > 0, alpha, 0.0)
    return alpha, zeta


def confidence_gate(cam, *, profile: str = "reference", sigma: float = 1.0, context=None, **params) -> np.ndarray:
    """DACG: keep high-confidence pixels, smooth the low-confidence ones.

    Parameters
    ----------
    cam : ndarray of shape (h, w) or (n, h, w)
        Map(s) after AKD.
    profile : {"reference", "paper"}
        ``"reference"``: the official code, an exact no-op. It gathers the pixels with
        ``v <= zeta`` into an (m, 1) column and calls ``cv2.GaussianBlur(col, (3, 1), 0.3)``,
        which blurs along the width-1 axis: all three taps read the pixel itself and the
        weights sum to 1, so OpenCV returns every value bit for bit (``method.md``
        §1.5(b); shown in ``tests/test_refine.py``). The output is a copy of the input;
        alpha and zeta do not affect it (see :func:`confidence_threshold`).
        ``"paper"``: a real 2-D Gaussian on the low-confidence region. Each pixel with
        ``v <= zeta`` becomes the Gaussian-weighted mean (3 x 3 window, std ``sigma``
        tokens, reflected borders) of the *low-confidence* pixels around it (a
        normalised convolution), so foreground values do not bleed into the background
        and the smoothed values stay ``<= zeta``; pixels with ``v > zeta`` are unchanged.
        The figure's sigma of 0.3 token would leave a centre weight of 0.985; the
        default of 1 token smooths.
    sigma : float
        Std of the paper profile's Gaussian, in tokens.
    context : ignored
        Accepted for a uniform module interface; DACG needs no per-map context.
    **params
        Threshold parameters, see :func:`confidence_threshold`.

    Returns
    -------
    gated : ndarray, same shape as ``cam``
    """
    check_profile(profile)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    p = _checked(params)
    stack, single, dtype = as_stack(cam)
    if profile == "reference":
        return from_stack(stack, single, dtype)
    _, zeta = _threshold(stack, p)
    low = (stack <= zeta[:, None, None]).astype(np.float64)
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sigma * sigma))
    taps /= taps.sum()
    # Every low pixel includes itself, so the denominator is positive where it is used.
    smoothed = _blur3(stack * low, taps) / np.maximum(_blur3(low, taps), np.finfo(np.float64).tiny)
    return from_stack(np.where(low > 0, smoothed, stack), single, dtype)


def _blur3(stack: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 3 x 3 correlation of each map with half-sample symmetric borders (``a | a b c | c``,
    scipy's ``reflect``)."""
    from scipy.ndimage import correlate1d

    rows = correlate1d(stack, taps, axis=2, mode="reflect")
    return correlate1d(rows, taps, axis=1, mode="reflect")
