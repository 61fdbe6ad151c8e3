"""Percentile bootstrap intervals for dataset-level figures.

Differences between CAM variants are often within noise on a few hundred images
(``reference/faithfulness.md``), so every dataset-level figure the project prints carries a 95%
interval: 1,000 resamples of the *samples* (images) with replacement, the statistic recomputed on each,
the 2.5th and 97.5th percentiles kept. Words of one image are not independent, so when ``groups`` is
given the resampling unit is the group (the image) and all of its values go in or out together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: Resamples per interval and the seed: fixed, so a report is reproducible byte for byte.
N_RESAMPLES = 1000
SEED = 0


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    groups: Sequence | np.ndarray | None = None,
    statistic: Callable[[np.ndarray], float] | None = None,
    n_resamples: int = N_RESAMPLES,
    confidence: float = 0.95,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)``.

    Parameters
    ----------
    values : array-like of shape (n,)
        One value per unit (or per word, with ``groups``); NaN values are left out, as in the means.
    groups : array-like of shape (n,), optional
        The resampling unit of each value (e.g. its sample id). Default: each value is its own unit.
    statistic : callable, optional
        ``f(values) -> float`` over the resampled values; default the mean. With the default the
        interval is computed in closed vectorised form (sums and counts per group).
    n_resamples : int
        Bootstrap resamples (default 1,000).
    confidence : float
        Coverage in (0, 1) (default 0.95).
    seed : int
        Seed of the resampling generator.

    Returns
    -------
    (float, float)
        The interval; ``(nan, nan)`` when fewer than two units hold a value.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples: must be >= 1, got {n_resamples}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    g = np.arange(v.size) if groups is None else np.asarray(groups).reshape(-1)
    if g.size != v.size:
        raise ValueError(f"groups: {g.size} entries for {v.size} values")
    keep = ~np.isnan(v)
    v, g = v[keep], g[keep]
    _, inverse = np.unique(g, return_inverse=True)
    n_units = int(inverse.max()) + 1 if inverse.size else 0
    if n_units < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    if statistic is None:
        sums = np.bincount(inverse, weights=v, minlength=n_units)
        counts = np.bincount(inverse, minlength=n_units).astype(np.float64)
        stats = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    else:
        members = [np.flatnonzero(inverse == u) for u in range(n_units)]
        stats = np.array([float(statistic(v[np.concatenate([members[u] for u in row])])) for row in draws])
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.nanpercentile(stats, [tail, 100.0 - tail])
    return (float(lo), float(hi))
