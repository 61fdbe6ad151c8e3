"""TAM's rank Gaussian filter, vectorised over pixels and over a stack of maps.

For each pixel, the k x k window of the reflect-padded map is sorted; with
``mu = mean`` and ``sigma = std / mu`` (coefficient of variation), weights over the
rank offsets ``a = arange(k^2) - k^2 // 2`` are ``w ~ exp(-a^2 / (2 sigma^2))``,
normalised, and the output is ``sum_i w_i * sorted_i``; ``mu <= 0`` gives 0
(``method.md`` §1.5(a) and §2.3; TAM ``tam.py::rank_guassian_filter``, which the
official Diffusion-CAM code copies). A low-variation window puts its weight on the
median, a high-variation one spreads it over the ranks: a robust, median-centred smoother.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from stages.refine import as_stack, from_stack

# Maps are filtered in chunks of about this many pixels, so that the windows stay in cache.
_CHUNK_PIXELS = 1 << 13


def rank_gaussian_filter(cam, *, size: int = 3) -> np.ndarray:
    """Rank Gaussian filter of TAM with a ``size`` x ``size`` window.

    Parameters
    ----------
    cam : ndarray of shape (h, w) or (n, h, w)
        Map or stack of maps; each map is filtered on its own.
    size : int
        Odd window side k (TAM uses 3). Borders use NumPy's ``"reflect"`` padding
        (``d c b | a b c d``), as TAM's ``np.pad(img, k // 2, mode="reflect")``.

    Returns
    -------
    filtered : ndarray, same shape as ``cam``
        Float, the input's dtype if floating.

    Notes
    -----
    A window with zero spread (``sigma = 0``) makes TAM's weights 0/0 (NaN); the
    official Diffusion-CAM adds a tiny jitter to avoid it. Here such a window returns
    its value, the limit of the filter as ``sigma -> 0``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size!r}")
    stack, single, dtype = as_stack(cam)
    return from_stack(rank_gaussian_stack(stack, int(size)), single, dtype)


def rank_gaussian_stack(stack: np.ndarray, size: int) -> np.ndarray:
    """The filter on a validated float64 (n, h, w) stack; returns a new (n, h, w) array."""
    n, h, w = stack.shape
    pad = size // 2
    out = np.empty_like(stack)
    step = max(1, _CHUNK_PIXELS // (h * w))
    for s in range(0, n, step):
        padded = np.pad(stack[s : s + step], ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
        out[s : s + step] = _filter_chunk(padded, size, h, w)
    return out


def _filter_chunk(padded: np.ndarray, size: int, h: int, w: int) -> np.ndarray:
    count = size * size
    ranks = _sorted_windows9(padded, h, w) if count == 9 else _sorted_windows(padded, size)
    mean = sum(ranks) / count
    var = sum((r - mean) ** 2 for r in ranks) / count
    # Weights exp(-a^2 / (2 sigma^2)) with sigma = std / mean, for rank offsets a = 0, +-1, ...;
    # with e = exp(-mean^2 / (2 var)), w_a = e^(a^2), built as w_a = w_(a-1) * e^(2a-1).
    varies = var > 0
    scale = np.minimum(np.divide(mean * mean, 2 * var, out=np.zeros_like(mean), where=varies), 1e300)
    e = np.exp(-scale)
    centre = count // 2
    numerator = ranks[centre].copy()
    denominator = np.ones_like(mean)
    weight, factor, e_sq = np.ones_like(mean), e, e * e
    for a in range(1, centre + 1):
        weight = weight * factor
        factor = factor * e_sq
        numerator += weight * (ranks[centre - a] + ranks[centre + a])
        denominator += 2 * weight
    value = np.where(varies, numerator / denominator, mean)
    return np.where(mean > 0, value, 0.0).reshape(-1, h, w)


def _sorted_windows(padded: np.ndarray, size: int) -> np.ndarray:
    """Sorted k x k windows of every pixel, as an array of shape (k^2, pixels): row i holds rank i."""
    windows = sliding_window_view(padded, (size, size), axis=(1, 2)).reshape(-1, size * size)
    # Sorting the bit patterns as integers is about twice as fast as a float sort. Their
    # order is the float order for values >= 0 (-0.0 sorts first, which is harmless); with
    # negative values, the xor flips the magnitude bits of negative numbers so that it is too.
    keys = windows.view(np.int64)
    signed = bool(padded.min() < 0)
    if signed:
        keys ^= (keys >> 63) & _LOW_63
    keys.sort(axis=1)
    if signed:
        keys ^= (keys >> 63) & _LOW_63
    return np.ascontiguousarray(windows.T)


_LOW_63 = np.int64(0x7FFFFFFFFFFFFFFF)


def _sorted_windows9(padded: np.ndarray, h: int, w: int) -> list[np.ndarray]:
    """Sorted 3 x 3 windows as 9 arrays over pixels (rank 0 first), by a sorting network."""
    ranks = [np.ascontiguousarray(padded[:, i : i + h, j : j + w]).reshape(-1) for i in range(3) for j in range(3)]
    spare = np.empty_like(ranks[0])
    for i, j in _NETWORK9:
        np.minimum(ranks[i], ranks[j], out=spare)
        np.maximum(ranks[i], ranks[j], out=ranks[j])
        ranks[i], spare = spare, ranks[i]
    return ranks


# A 25-comparator sorting network for 9 values (verified on all 2^9 binary inputs in tests).
_NETWORK9 = (
    (0, 3), (1, 7), (2, 5), (4, 8), (0, 7), (2, 4), (3, 8), (5, 6), (0, 2), (1, 3), (4, 5), (7, 8), (1, 4),
    (3, 6), (5, 7), (0, 1), (2, 4), (3, 5), (6, 8), (2, 3), (4, 5), (6, 7), (1, 2), (3, 4), (5, 6),
)

