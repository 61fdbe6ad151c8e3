"""The percentile bootstrap of dataset-level figures (stages.score.bootstrap)."""

import numpy as np
import pytest

from stages.score.bootstrap import bootstrap_ci


def test_interval_brackets_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    small = rng.normal(0.5, 0.1, size=20)
    large = rng.normal(0.5, 0.1, size=2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s
    assert lo_l < large.mean() < hi_l
    # the half-width of a mean's interval shrinks as 1/sqrt(n): 100x the samples, about 10x narrower
    assert 5 < (hi_s - lo_s) / (hi_l - lo_l) < 20
    # and it is close to the normal approximation 1.96 * sd / sqrt(n)
    assert (hi_l - lo_l) / 2 == pytest.approx(1.96 * large.std() / np.sqrt(large.size), rel=0.15)


def test_constant_values_give_a_point_interval_and_one_unit_gives_none():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    assert all(np.isnan(bootstrap_ci([0.3])))
    assert all(np.isnan(bootstrap_ci([0.3, np.nan])))  # NaN values are left out


def test_groups_resample_whole_samples():
    # two samples: every word of sample a is 0, of sample b is 1. Resampling words would give a tight
    # interval around 0.5; resampling samples can draw a,a (mean 0) or b,b (mean 1).
    values = [0.0] * 50 + [1.0] * 50
    groups = ["a"] * 50 + ["b"] * 50
    lo_w, hi_w = bootstrap_ci(values)
    lo_g, hi_g = bootstrap_ci(values, groups=groups)
    assert 0.35 < lo_w < 0.5 < hi_w < 0.65
    assert (lo_g, hi_g) == pytest.approx((0.0, 1.0))


def test_custom_statistic_matches_the_closed_form_mean_and_is_seeded():
    v = np.random.default_rng(3).uniform(size=40)
    g = np.repeat(np.arange(10), 4)
    assert bootstrap_ci(v, groups=g, statistic=np.mean) == pytest.approx(bootstrap_ci(v, groups=g), abs=1e-12)
    assert bootstrap_ci(v, seed=5) == bootstrap_ci(v, seed=5)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(v, confidence=1.5)
