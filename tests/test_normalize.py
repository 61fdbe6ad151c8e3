"""The one normalise and one threshold implementation (stages/refine/normalize.py), hand-computed."""

from __future__ import annotations

import numpy as np
import pytest

from stages.refine.normalize import divide_by_max, min_max, zero_below

STACK = np.array([[[1.0, 3.0], [2.0, 5.0]],  # min 1, max 5
                  [[2.0, 2.0], [2.0, 2.0]],  # flat
                  [[-4.0, 0.0], [-2.0, -1.0]]], np.float32)  # all non-positive


def test_min_max_per_map_by_range_and_by_max():
    got = min_max(STACK, eps=0)
    np.testing.assert_allclose(got[0], [[0.0, 0.5], [0.25, 1.0]])
    np.testing.assert_array_equal(got[1], STACK[1])  # a flat map is left as it is
    np.testing.assert_allclose(got[2], [[0.0, 1.0], [0.5, 0.75]])
    official = min_max(STACK[:2], denominator="max", eps=0)  # predict.py: (cam - min) / max
    np.testing.assert_allclose(official[0], [[0.0, 0.4], [0.2, 0.8]])
    np.testing.assert_array_equal(official[1], np.zeros((2, 2)))
    assert got.dtype == np.float32 and official.dtype == np.float32
    # eps is added to the denominator in the map's dtype
    assert min_max(STACK[0])[1, 1] == np.float32(4) / (np.float32(4) + np.float32(1e-8))
    assert min_max(np.array([[0, 2]])).dtype == np.float64  # integers become float64
    with pytest.raises(ValueError, match="denominator"):
        min_max(STACK, denominator="mean")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        min_max(np.ones(3))


def test_divide_by_max_leaves_maps_without_a_positive_maximum():
    got = divide_by_max(STACK)
    np.testing.assert_allclose(got[0], STACK[0] / 5)
    np.testing.assert_allclose(got[1], np.ones((2, 2)))
    np.testing.assert_array_equal(got[2], STACK[2])
    assert got.dtype == np.float32
    # ReLU first, then max: the score stage's unit map
    np.testing.assert_array_equal(divide_by_max(np.maximum(STACK[2], 0)), np.zeros((2, 2)))


def test_zero_below_keeps_values_at_the_threshold_and_the_dtype():
    got = zero_below(STACK[0] / 5, 0.4)
    np.testing.assert_allclose(got, [[0.0, 0.6], [0.4, 1.0]])
    assert got.dtype == np.float32
    assert zero_below(np.array([0.1, 0.5]), 0.5).tolist() == [0.0, 0.5]
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        zero_below(STACK, float("nan"))
