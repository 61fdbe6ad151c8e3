"""Validation shared by the base methods: the token grid and the stored arrays they read."""

from __future__ import annotations

import numpy as np


def grid_shape(grid, n_tokens: int) -> tuple[int, int]:
    """``(h, w)`` from ``grid``, checked to be positive integers with ``h * w == n_tokens``.

    Raises
    ------
    ValueError
        Naming the grid and the token count when they do not fit.
    """
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be a pair (h, w) of positive integers, got {grid!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"grid must be a pair (h, w) of positive integers, got {grid!r}")
    if h * w != n_tokens:
        raise ValueError(f"grid {h}x{w} holds {h * w} tokens but the arrays have {n_tokens} grid tokens")
    return h, w


def real_array(array, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    """``array`` as float32, checked to have one of ``ndims`` dimensions and only finite real values.

    Raises
    ------
    ValueError
        Naming ``name`` and what is wrong with it.
    """
    array = np.asarray(array)
    if array.ndim not in ndims:
        allowed = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {allowed}, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array.astype(np.float32, copy=False)


def acts_and_weights(acts, weights, weights_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Activations (N, D) and per-target channel weights (T, D) as float32, checked to share D."""
    acts = real_array(acts, "acts", (2,))
    weights = real_array(weights, weights_name, (2,))
    if weights.shape[1] != acts.shape[1]:
        raise ValueError(
            f"{weights_name} has {weights.shape[1]} channels but acts has {acts.shape[1]} (shapes {weights.shape} and {acts.shape})"
        )
    return acts, weights


def token_map(values, name: str, grid) -> np.ndarray:
    """Per-target token values (T, N) as a (T, h, w) float32 stack (a copy)."""
    values = real_array(values, name, (2,))
    h, w = grid_shape(grid, values.shape[1])
    return values.reshape(-1, h, w).copy()


def channel_weighted_map(acts, weights, weights_name: str, grid) -> np.ndarray:
    """``sum_d weights[t, d] * acts[:, d]`` per target, as a (T, h, w) float32 stack."""
    acts, weights = acts_and_weights(acts, weights, weights_name)
    h, w = grid_shape(grid, acts.shape[0])
    return (weights @ acts.T).reshape(weights.shape[0], h, w)
