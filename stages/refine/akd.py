"""AKD: Adaptive Kernel Denoising (``method.md`` §1.5(a)).

A rank Gaussian filter (:mod:`stages.refine.rank_filter`) whose window side
``k = k_base * f_step * f_std * f_size`` is meant to adapt to the number of denoising
steps, the map's spread and its resolution (the paper figure's ``k_adaptive``).
"""

from __future__ import annotations

import numpy as np

from stages.refine import as_stack, check_profile, contexts_for, from_stack
from stages.refine.rank_filter import rank_gaussian_stack

K_BASE = 3
K_MIN, K_MAX = 3, 11
#: ``predict.py`` hard-codes ``step_ratio = 0.5`` when it calls AKD.
REFERENCE_STEP_RATIO = 0.5
#: Relative scale of the jitter the official code adds before filtering.
JITTER = 1e-6
#: Grid side the paper profile's ``f_size`` is relative to (LLaVA-1.5's 24 x 24 tokens).
PAPER_REFERENCE_SIDE = 24.0


def _odd_clamped(k: np.ndarray) -> np.ndarray:
    k = np.trunc(k).astype(np.int64)
    k = k + (k % 2 == 0)
    return np.clip(k, K_MIN, K_MAX)


def _int_or_array(k: np.ndarray):
    return int(k) if k.ndim == 0 else k


def reference_kernel_size(activation_std, height: int):
    """The official ``diffusion_aware_kernel_size(0.5, std, heatmap.shape[0])``.

    ``f_step = min(int(1 / 0.5) / 16, 2) = 0.125``, ``f_std = min(5 std, 2)``,
    ``f_size = min(height / 512, 1.5)`` with ``height`` the *token-grid* height,
    ``k = int(3 f_step f_std f_size)``, made odd, clamped to [3, 11]. The product is at
    most ``3 * 0.125 * 2 * 1.5 = 1.125``, so k is always 3 (``method.md`` §1.5(a)).

    Parameters
    ----------
    activation_std : float or ndarray of shape (n,)
        Standard deviation of each raw map.
    height : int
        Map height in tokens.

    Returns
    -------
    k : int or ndarray of shape (n,), int64
    """
    steps = int(1 / REFERENCE_STEP_RATIO)
    f_step = min(steps / 16, 2.0)
    f_std = np.minimum(5 * np.asarray(activation_std, dtype=np.float64), 2.0)
    f_size = min(height / 512, 1.5)
    return _int_or_array(_odd_clamped(K_BASE * f_step * f_std * f_size))


def paper_kernel_size(activation_std, grid: tuple[int, int], num_steps=None):
    """Kernel side that adapts to the denoising steps, the map's spread and its grid.

    ``k = int(3 * f_step * f_std * f_size)``, made odd, clamped to [3, 11], with

    - ``f_step = min(num_steps / 16, 2)``: the real number of denoising steps (the
      official code passes ``int(1 / step_ratio) = 2`` instead); 1 when unknown;
    - ``f_std = min(5 std, 2)``, as the official code;
    - ``f_size = min(sqrt(h w) / 24, 1.5)``: the grid side relative to a 24 x 24 token
      grid (27 x 27 gives 1.125, 21 x 28 gives 1.01), where the official code divides
      the token-grid height by 512, a pixel size, which pins k to 3.

    With LaViDa's 32 steps and a 27 x 27 map of std 0.2 this gives k = 7; 8 steps give 3;
    std 0.3 with 64 steps gives 11; a 14 x 14 map with 32 steps and std 0.2 gives 3.

    Parameters
    ----------
    activation_std : float or ndarray of shape (n,)
    grid : tuple of int (h, w)
    num_steps : int, ndarray of shape (n,) or None
        Denoising steps per map; None or NaN entries mean unknown.

    Returns
    -------
    k : int or ndarray of shape (n,), int64
    """
    h, w = grid
    std = np.asarray(activation_std, dtype=np.float64)
    steps = np.asarray(np.nan if num_steps is None else num_steps, dtype=np.float64)
    f_step = np.where(np.isnan(steps), 1.0, np.minimum(steps / 16, 2.0))
    f_std = np.minimum(5 * std, 2.0)
    f_size = min(np.sqrt(h * w) / PAPER_REFERENCE_SIDE, 1.5)
    return _int_or_array(_odd_clamped(K_BASE * f_step * f_std * f_size))


def adaptive_kernel_denoise(cam, *, profile: str = "reference", context=None) -> np.ndarray:
    """AKD: rank Gaussian filter with an adaptive window.

    Parameters
    ----------
    cam : ndarray of shape (h, w) or (n, h, w)
        Raw (normalised) map(s), at token-grid resolution.
    profile : {"reference", "paper"}
        ``"reference"``: the official code. Each map gets a jitter
        ``N(0, (1e-6 max)^2)`` (only when its max is positive), then the filter with
        :func:`reference_kernel_size` (always 3). The official jitter is unseeded; here it
        comes from ``numpy.random.default_rng(context.seed)`` and every map with the same
        seed gets the same noise pattern scaled by its own maximum, so a map's result
        does not depend on the rest of the stack.
        ``"paper"``: the window side of :func:`paper_kernel_size`, from
        ``context.num_steps``, the map's std and its grid; no jitter (it only guards
        the official filter against 0/0 on constant windows, which
        :func:`~stages.refine.rank_filter.rank_gaussian_filter` handles as a limit).
    context : MapContext, sequence of MapContext or None
        Per-map ``seed`` (reference) and ``num_steps`` (paper).

    Returns
    -------
    filtered : ndarray, same shape as ``cam``
    """
    check_profile(profile)
    stack, single, dtype = as_stack(cam)
    n, h, w = stack.shape
    contexts = contexts_for(context, n)
    std = stack.std(axis=(1, 2))
    if profile == "reference":
        sizes = np.broadcast_to(reference_kernel_size(std, h), (n,))
        peak = stack.max(axis=(1, 2))
        scale = np.where(peak > 0, JITTER * peak, 0.0)
        seeds = np.array([_seed(c) for c in contexts])
        for seed in np.unique(seeds):
            noise = np.random.default_rng(int(seed)).standard_normal((h, w))
            chosen = seeds == seed
            stack[chosen] += scale[chosen, None, None] * noise
    else:
        steps = np.array([_num_steps(c) for c in contexts], dtype=np.float64)
        sizes = paper_kernel_size(std, (h, w), steps)
    out = np.empty_like(stack)
    for k in np.unique(sizes):
        chosen = sizes == k
        out[chosen] = rank_gaussian_stack(stack[chosen], int(k))
    return from_stack(out, single, dtype)


def _seed(context) -> int:
    seed = context.seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"context.seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _num_steps(context) -> float:
    steps = context.num_steps
    if steps is None:
        return np.nan
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"context.num_steps must be a positive integer or None, got {steps!r}")
    return float(steps)
