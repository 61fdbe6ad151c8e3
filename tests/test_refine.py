"""Post-processing modules: hand-computed cases, per-pixel oracles, profiles, chain, presets, CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from stages.refine import MapContext, sorted_percentile
from stages.refine.akd import adaptive_kernel_denoise, paper_kernel_size, reference_kernel_size
from stages.refine.cba import background_attenuate, background_threshold
from stages.refine.chain import MODULES, apply_chain
from stages.refine.dacg import confidence_gate, confidence_threshold
from stages.refine.normalize import clip_and_rescale
from stages.refine.rank_filter import _NETWORK9, rank_gaussian_filter
from stages.refine.sicd import causal_debias, repeat_ratio_ids, repeat_ratio_words

OFFICIAL = ["akd", "dacg", "cba", "normalize", "sicd"]


def loop_rank_filter(img: np.ndarray, k: int) -> np.ndarray:
    """Per-pixel oracle: TAM's rank Gaussian filter written as a plain double loop."""
    out = np.zeros(img.shape)
    p = k // 2
    padded = np.pad(img, p, mode="reflect")
    offsets = np.arange(k * k) - k * k // 2
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            window = np.sort(padded[i : i + k, j : j + k].ravel())
            mean = window.mean()
            if mean > 0:
                sigma = window.std() / mean
                kernel = np.exp(-(offsets**2) / (2 * sigma**2))
                out[i, j] = (window * kernel / kernel.sum()).sum()
    return out


def cam_like(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Normalised maps with a blob and noise, like official base maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    blob = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * 3.0**2))
    maps = blob + 0.2 * rng.random((n, h, w))
    lo = maps.min(axis=(1, 2), keepdims=True)
    return (maps - lo) / (maps.max(axis=(1, 2), keepdims=True) + 1e-8)


# ---------------------------------------------------------------- rank filter


def test_sorting_network_sorts_every_binary_input():
    # 0-1 principle: a comparator network that sorts all 2^9 binary inputs sorts everything.
    for bits in itertools.product((0, 1), repeat=9):
        v = list(bits)
        for i, j in _NETWORK9:
            v[i], v[j] = min(v[i], v[j]), max(v[i], v[j])
        assert v == sorted(bits)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_vectorised_rank_filter_equals_loop_oracle(k):
    rng = np.random.default_rng(k)
    maps = rng.random((4, 9, 11)) - 0.15  # some windows with mean <= 0, some negative values
    out = rank_gaussian_filter(maps, size=k)
    for m, o in zip(maps, out):
        np.testing.assert_allclose(o, loop_rank_filter(m, k), atol=1e-6, rtol=0)


def test_rank_filter_single_peak_hand_computed():
    img = np.zeros((5, 5))
    img[2, 2] = 1.0
    # every window touching the peak holds eight 0 and one 1: mean 1/9, std sqrt(8)/9, sigma = sqrt(8),
    # weights exp(-a^2 / 16) over a = -4..4, and the value is the weight of the top rank (a = 4).
    a = np.arange(-4, 5)
    w = np.exp(-(a**2) / 16.0)
    expected = np.zeros((5, 5))
    expected[1:4, 1:4] = w[-1] / w.sum()
    np.testing.assert_allclose(rank_gaussian_filter(img), expected, atol=1e-12)


def test_rank_filter_constant_window_takes_its_value_and_validates_size():
    np.testing.assert_array_equal(rank_gaussian_filter(np.full((4, 4), 0.3)), np.full((4, 4), 0.3))
    np.testing.assert_array_equal(rank_gaussian_filter(np.zeros((4, 4))), np.zeros((4, 4)))
    for bad in (2, 0, -3, 3.0, True):
        with pytest.raises(ValueError, match="size"):
            rank_gaussian_filter(np.ones((4, 4)), size=bad)


# ---------------------------------------------------------------- AKD


def test_reference_kernel_is_always_3():
    stds = np.linspace(0, 10, 101)
    for height in (1, 14, 21, 27, 42, 512, 768, 5000):
        assert np.all(reference_kernel_size(stds, height) == 3)
    assert reference_kernel_size(0.2, 27) == 3


def test_akd_reference_constant_map_stays_constant():
    cam = np.full((6, 7), 0.5)
    out = adaptive_kernel_denoise(cam, profile="reference")
    np.testing.assert_allclose(out, 0.5, atol=1e-5)
    assert not np.array_equal(out, cam)  # the jitter is there


def test_akd_reference_equals_jitter_then_rank_filter():
    cam = cam_like(1, 8, 9, seed=3)[0]
    noise = np.random.default_rng(7).standard_normal((8, 9))
    expected = rank_gaussian_filter(cam + 1e-6 * cam.max() * noise, size=3)
    np.testing.assert_allclose(adaptive_kernel_denoise(cam, context=MapContext(seed=7)), expected, atol=1e-15)


def test_paper_kernel_adapts_to_steps_variance_and_resolution():
    # k = int(3 * min(S/16, 2) * min(5 std, 2) * min(sqrt(hw)/24, 1.5)), odd, clamped to [3, 11]
    assert paper_kernel_size(0.2, (27, 27), 32) == 7  # 3 * 2 * 1 * 1.125 = 6.75
    assert paper_kernel_size(0.2, (27, 27), 8) == 3  # 1.69
    assert paper_kernel_size(0.2, (27, 27), 16) == 3  # 3.375
    assert paper_kernel_size(0.3, (27, 27), 64) == 11  # 10.125 -> 10 -> 11
    assert paper_kernel_size(0.1, (27, 27), 32) == 3  # 3.375
    assert paper_kernel_size(0.2, (14, 14), 32) == 3  # 3.5
    assert paper_kernel_size(0.2, (42, 42), 32) == 9  # f_size capped at 1.5
    assert paper_kernel_size(0.25, (24, 24), None) == 3  # unknown steps: f_step 1 -> 3.75
    np.testing.assert_array_equal(paper_kernel_size(np.array([0.1, 0.2, 0.25]), (27, 27), np.array([32, 32, 32])), [3, 7, 9])


def test_akd_paper_output_depends_on_num_steps():
    cam = cam_like(1, 27, 27, seed=1)[0]
    few = adaptive_kernel_denoise(cam, profile="paper", context=MapContext(num_steps=4))
    many = adaptive_kernel_denoise(cam, profile="paper", context=MapContext(num_steps=64))
    np.testing.assert_allclose(few, rank_gaussian_filter(cam, size=3), atol=1e-15)
    k = paper_kernel_size(cam.std(), (27, 27), 64)
    assert k > 3
    np.testing.assert_allclose(many, rank_gaussian_filter(cam, size=k), atol=1e-15)


def test_akd_stack_results_do_not_depend_on_stack_company():
    maps = cam_like(5, 10, 12, seed=2)
    ctx = [MapContext(seed=s) for s in (0, 1, 0, 2, 1)]
    stacked = adaptive_kernel_denoise(maps, context=ctx)
    for m, c, s in zip(maps, ctx, stacked):
        np.testing.assert_array_equal(adaptive_kernel_denoise(m, context=c), s)


# ---------------------------------------------------------------- DACG


@pytest.mark.parametrize(
    "values, alpha, zeta",
    [
        ([0.0, 0.0, 1.0, 1.0], 90, 1.0),  # sigma 0.5 > 0.22; nz = [1, 1]
        ([0.4, 0.5, 0.6, 0.7], 75, 0.625),  # mu 0.55 > 0.35, sigma 0.112; P75 = 0.6 + 0.25 * 0.1
        ([0.1, 0.2, 0.3, 0.0], 80, 0.26),  # mu 0.15 < 0.25; nz = [.1, .2, .3], P80 = 0.2 + 0.6 * 0.1
        ([0.2, 0.3, 0.3, 0.4], 85, 0.355),  # mu 0.3; P85 = 0.3 + 0.55 * 0.1
        ([0.0, 0.0, 0.0, 0.0], 0, 1e-6),  # all zero
        ([0.0, 1e-9, 0.0, 0.0], 80, 1e-6),  # zeta floored at 1e-6
    ],
)
def test_dacg_threshold_branches(values, alpha, zeta):
    a, z = confidence_threshold(np.array([values]))
    assert a == alpha
    assert z == pytest.approx(zeta, abs=1e-12)


def test_dacg_threshold_on_stack_equals_np_percentile():
    offset, scale = np.meshgrid(np.linspace(-0.3, 0.6, 7), np.linspace(0.1, 1.5, 7))
    maps = offset.reshape(-1, 1, 1) + scale.reshape(-1, 1, 1) * cam_like(49, 6, 7, seed=5)
    maps[3] = 0.0
    maps[4, :3] = -0.2
    alpha, zeta = confidence_threshold(maps)
    for m, a, z in zip(maps, alpha, zeta):
        nz = m[m > 0]
        if nz.size:
            assert z == pytest.approx(max(np.percentile(nz, a), 1e-6), abs=1e-12)
    assert set(alpha.tolist()) == {0.0, 75.0, 80.0, 85.0, 90.0}


def test_sorted_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    rows = np.sort(rng.random((30, 17)), axis=1)
    start = rng.integers(0, 17, 30)
    count = 17 - start
    for q in (0, 12.5, 50, 60, 85, 100):
        got = sorted_percentile(rows, start, count, q)
        want = [np.percentile(r[s:], q) for r, s in zip(rows, start)]
        np.testing.assert_allclose(got, want, atol=1e-15)


def test_dacg_reference_is_an_exact_no_op():
    maps = cam_like(3, 8, 8, seed=4)
    np.testing.assert_array_equal(confidence_gate(maps, profile="reference"), maps)


def test_official_width1_column_blur_changes_nothing():
    # What predict.py does: gather the low values into an (m, 1) column and blur with ksize (3, 1),
    # i.e. along the width-1 axis: every tap reads the pixel itself.
    cam = cam_like(1, 8, 8, seed=4)[0]
    _, zeta = confidence_threshold(cam)
    column = cam[cam <= zeta].reshape(-1, 1)
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.3**2))
    taps /= taps.sum()
    padded = np.pad(column, ((0, 0), (1, 1)), mode="reflect")  # reflect of width 1 repeats the pixel
    blurred = taps[0] * padded[:, :-2] + taps[1] * padded[:, 1:-1] + taps[2] * padded[:, 2:]
    np.testing.assert_allclose(blurred, column, rtol=1e-15, atol=0)
    cv2 = pytest.importorskip("cv2")
    np.testing.assert_array_equal(cv2.GaussianBlur(column, (3, 1), 0.3), column)


def test_dacg_paper_smooths_low_confidence_pixels_only():
    cam = cam_like(1, 12, 12, seed=6)[0]
    _, zeta = confidence_threshold(cam)
    out = confidence_gate(cam, profile="paper")
    high = cam > zeta
    assert high.any() and (~high).any()
    np.testing.assert_array_equal(out[high], cam[high])
    assert np.abs(out[~high] - cam[~high]).max() > 1e-3
    assert out[~high].max() <= zeta
    # normalised 3 x 3 Gaussian (sigma 1) over low-confidence neighbours, half-sample symmetric borders
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / 2)
    kernel = np.outer(g, g)
    padded = np.pad(cam, 1, mode="symmetric")
    low = np.pad(~high, 1, mode="symmetric").astype(float)
    for i, j in zip(*np.nonzero(~high)):
        win, mask = padded[i : i + 3, j : j + 3], low[i : i + 3, j : j + 3]
        assert out[i, j] == pytest.approx((kernel * mask * win).sum() / (kernel * mask).sum(), abs=1e-12)


def test_dacg_paper_keeps_a_constant_background():
    cam = np.full((6, 6), 0.1)
    cam[2:4, 2:4] = 1.0
    out = confidence_gate(cam, profile="paper", delta_sigma=0.9)
    np.testing.assert_allclose(out, cam, atol=1e-15)


# ---------------------------------------------------------------- CBA


def test_cba_hand_computed():
    cam = np.array([[0.0, 0.2, 0.4, 1.0]])
    # nz = [.2, .4, 1]: P50 = 0.4; P60(all) = 0.2 + 0.8 * 0.2 = 0.36; mean(nz) = 1.6 / 3; 0.05 max = 0.05
    delta = 0.15 * 0.4 + 0.15 * 0.36 + 0.2 * (1.6 / 3) + 0.3 * 0.05
    assert background_threshold(cam) == pytest.approx(delta, abs=1e-12)
    expected = cam.copy()
    expected[0, 1] = 0.2 * (0.2 / delta)  # lambda = v / delta = 0.849 in [0.5, 1]
    np.testing.assert_allclose(background_attenuate(cam), expected, atol=1e-12)


def test_cba_very_low_values_are_halved_not_less():
    cam = np.array([[0.03, 0.2, 0.4, 1.0]])
    delta = 0.15 * 0.3 + 0.15 * 0.36 + 0.2 * (1.63 / 4) + 0.3 * 0.05  # 0.1955
    assert background_threshold(cam) == pytest.approx(delta, abs=1e-12)
    # 0.03 < 0.2 delta: lambda = 0.3 * 0.03 / delta = 0.046 -> clipped to 0.5; 0.2 >= delta: foreground
    np.testing.assert_allclose(background_attenuate(cam), [[0.015, 0.2, 0.4, 1.0]], atol=1e-12)


def test_cba_never_below_half_and_foreground_untouched():
    maps = cam_like(20, 9, 9, seed=8)
    out = background_attenuate(maps)
    delta = background_threshold(maps)[:, None, None]
    fg = maps >= delta
    np.testing.assert_array_equal(out[fg], maps[fg])
    assert np.all(out[~fg] >= 0.5 * maps[~fg] - 1e-15)
    assert np.all(out <= maps)
    assert np.all(background_threshold(np.zeros((2, 3, 3))) == 1e-6)


# ---------------------------------------------------------------- normalize


def test_normalize_clips_to_raw_max_then_rescales():
    cam = np.array([[-0.5, 0.2], [0.6, 1.5]])
    out = clip_and_rescale(cam, context=MapContext(raw_max=1.0))
    np.testing.assert_allclose(out, [[0.0, 0.2 / (1 + 1e-8)], [0.6 / (1 + 1e-8), 1.0 / (1 + 1e-8)]])
    np.testing.assert_array_equal(clip_and_rescale(np.full((2, 2), 0.7)), np.full((2, 2), 0.7))


# ---------------------------------------------------------------- SICD


def _sicd_map():
    cam = np.full((4, 4), 0.2)
    cam[1, 1], cam[2, 3] = 0.5, 1.0  # mean 0.26875, std 0.2022: only 1.0 is above mean + 2 std
    return cam


def test_sicd_subtracts_with_capped_alpha():
    cam = _sicd_map()
    # ids [7, 7]: one repeated id / 2 ids -> I = 0.025 everywhere, 0.045 at the outlier
    interference = np.full((4, 4), 0.025)
    interference[2, 3] = 0.045
    alpha_star = (cam * interference).sum() / (interference**2).sum()  # 0.1275 / 0.0114 = 11.18
    assert alpha_star == pytest.approx(0.1275 / 0.0114)
    out = causal_debias(cam, context=MapContext(generated_ids=[7, 7]))
    np.testing.assert_allclose(out, cam - 0.5 * interference, atol=1e-15)  # alpha = min(11.18, 0.5)


def test_sicd_guard_keeps_the_map():
    cam = np.zeros((4, 4))
    cam[0, 0] = 0.1
    # I = 0.025 + 0.02 at the outlier: alpha* = 0.1 * 0.045 / (15 * 0.025^2 + 0.045^2) = 0.3947;
    # H_enh has range 0.1 - 0.3947 * 0.045 = 0.0822 < 0.9 * 0.1, so the guard keeps H.
    alpha = 0.1 * 0.045 / (15 * 0.025**2 + 0.045**2)
    assert 0.1 - alpha * 0.045 < 0.09
    out = causal_debias(cam, context=MapContext(generated_ids=[7, 7]))
    np.testing.assert_array_equal(out, cam)


def test_sicd_repeat_ratios():
    assert repeat_ratio_ids([5, 6, 2, 2, 2, 2]) == pytest.approx(1 / 6)
    assert repeat_ratio_ids([1, 2, 3]) == 0.0
    assert repeat_ratio_ids(None) == 0.0
    assert repeat_ratio_ids(np.array([2, 2, 3])) == pytest.approx(1 / 3)
    fw = frozenset({"a", "and"})
    assert repeat_ratio_words(["dog", "runs", "."], fw) == 0.0
    assert repeat_ratio_words(["a", "dog", "and", "a", "Dog", "."], fw) == pytest.approx(3 / 5)


def test_sicd_paper_ignores_repeated_eos_but_reacts_to_repeated_words():
    cam = _sicd_map()
    eos = MapContext(generated_ids=[5, 6, 2, 2, 2, 2], words=["dog", "runs"])
    plain = causal_debias(cam, profile="paper")
    assert not np.array_equal(causal_debias(cam, profile="reference", context=eos), causal_debias(cam, profile="reference"))
    np.testing.assert_array_equal(causal_debias(cam, profile="paper", context=eos), plain)
    words = MapContext(generated_ids=[5, 6, 2, 2, 2, 2], words=["a", "dog", "and", "a", "cat"])
    repeated = causal_debias(cam, profile="paper", context=words)
    # interfering words {a, and} / 5 words: I = 0.02 everywhere + 0.02 at the outlier; alpha capped at 0.5
    interference = np.full((4, 4), 0.02)
    interference[2, 3] = 0.04
    np.testing.assert_allclose(repeated, cam - 0.5 * interference, atol=1e-15)
    # no repeat: only the outlier term, I = 0.02 there: alpha* = 1.0 / 0.02 = 50 -> 0.5
    expected_plain = cam.copy()
    expected_plain[2, 3] -= 0.01
    np.testing.assert_allclose(plain, expected_plain, atol=1e-15)


# ---------------------------------------------------------------- chain and profiles


def test_reference_chain_invariants():
    maps = cam_like(12, 9, 10, seed=9).astype(np.float32)
    before = maps.copy()
    ctx = MapContext(generated_ids=[1, 2, 2, 0, 0], seed=3)
    out = apply_chain(maps, OFFICIAL, profile="reference", contexts=ctx)
    assert out.shape == maps.shape and out.dtype == np.float32
    np.testing.assert_array_equal(maps, before)
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out, apply_chain(maps, OFFICIAL, profile="reference", contexts=ctx))
    single = apply_chain(maps[4], OFFICIAL, profile="reference", contexts=ctx)
    assert single.shape == maps[4].shape
    np.testing.assert_array_equal(single, out[4])


def test_reference_chain_seed_only_moves_the_jitter():
    maps = cam_like(4, 9, 10, seed=10)
    a = apply_chain(maps, ["akd"], contexts=MapContext(seed=0))
    b = apply_chain(maps, ["akd"], contexts=MapContext(seed=1))
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_chain_equals_modules_in_sequence_and_order_matters():
    maps = cam_like(3, 8, 8, seed=11) * 0.8
    ctx = MapContext(raw_max=0.8)
    step = background_attenuate(maps)
    step = clip_and_rescale(step, context=ctx)
    np.testing.assert_allclose(apply_chain(maps, ["cba", "normalize"]), step, atol=1e-15)
    ids = MapContext(generated_ids=[4, 4, 5])
    assert not np.allclose(apply_chain(maps, ["normalize", "sicd"], contexts=ids), apply_chain(maps, ["sicd", "normalize"], contexts=ids))
    np.testing.assert_array_equal(apply_chain(maps, []), maps)


def test_chain_rejects_unknown_names_and_stray_params():
    with pytest.raises(ValueError, match="unknown module 'gauss'.*akd, dacg, cba, normalize, sicd"):
        apply_chain(np.zeros((1, 3, 3)), ["akd", "gauss"])
    with pytest.raises(ValueError, match="params given for \\['sicd'\\]"):
        apply_chain(np.zeros((1, 3, 3)), ["akd"], params={"sicd": {}})
    with pytest.raises(ValueError, match="bad parameters for module 'cba'"):
        apply_chain(np.zeros((1, 3, 3)), ["cba"], params={"cba": {"nonsense": 0.2}})
    with pytest.raises(ValueError, match="profile"):
        apply_chain(np.zeros((1, 3, 3)), ["akd"], profile="official")
    with pytest.raises(ValueError, match="shape"):
        apply_chain(np.zeros(3), ["akd"])
    with pytest.raises(ValueError, match="2 items"):
        apply_chain(np.zeros((3, 3, 3)), ["sicd"], contexts=[MapContext(), MapContext()])
    assert set(MODULES) >= {"akd", "dacg", "cba", "sicd", "normalize"}


def test_chain_params_reach_the_module():
    maps = cam_like(2, 8, 8, seed=12)
    np.testing.assert_allclose(
        apply_chain(maps, ["rank-filter"], params={"rank-filter": {"size": 5}}), rank_gaussian_filter(maps, size=5), atol=1e-15
    )


def test_paper_profile_differs_from_reference():
    maps = cam_like(4, 27, 27, seed=13)
    ctx = MapContext(generated_ids=[3, 3, 2, 2], words=["a", "red", "ball"], num_steps=32)
    ref = apply_chain(maps, OFFICIAL, profile="reference", contexts=ctx)
    paper = apply_chain(maps, OFFICIAL, profile="paper", contexts=ctx)
    assert paper.shape == ref.shape and paper.min() >= 0 and paper.max() <= 1
    assert np.abs(paper - ref).max() > 0.01


# ---------------------------------------------------------------- presets


def test_presets():
    from stages.presets import PRESETS, get_preset

    expected = {
        "diffusion-cam", "diffusion-cam-reference", "gradcam", "llava-cam", "tam", "ablation-baseline",
        "ablation-akd", "ablation-dacg", "ablation-cba", "ablation-sicd", "ablation-full", "grad-norm", "gradcam-pp",
    }
    assert set(PRESETS) == expected
    assert get_preset("diffusion-cam-reference").modules == tuple(OFFICIAL)
    assert get_preset("diffusion-cam").profile == "paper"
    assert get_preset("ablation-baseline").threshold == 0.4 and get_preset("ablation-baseline").modules == ()
    with pytest.raises(ValueError, match="known presets: diffusion-cam"):
        get_preset("nope")
    rng = np.random.default_rng(0)
    arrays = {"acts": rng.normal(size=(30, 8)), "alpha_pos": np.abs(rng.normal(size=(2, 8))), "tam_logits": rng.normal(size=(2, 30))}
    base = get_preset("ablation-baseline")
    out = base.maps(arrays, (5, 6))
    from stages.basemaps import diffusion_cam_base

    raw = diffusion_cam_base(arrays["acts"], arrays["alpha_pos"], (5, 6), normalize=True)
    np.testing.assert_array_equal(out, np.where(raw < 0.4, 0, raw))
    tam = get_preset("tam").maps(arrays, (5, 6))
    clipped = np.maximum(arrays["tam_logits"], 0).reshape(2, 5, 6)
    lo, hi = clipped.min(axis=(1, 2), keepdims=True), clipped.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(tam, rank_gaussian_filter((clipped - lo) / (hi - lo + 1e-8)), atol=1e-6)
    assert get_preset("diffusion-cam").maps(arrays, (5, 6), contexts=MapContext(num_steps=32)).shape == (2, 5, 6)


# ---------------------------------------------------------------- CLI


def _run_cli(args):
    from flows.cli import main

    main(["refine", *map(str, args)])


def test_cli_round_trip(tmp_path):
    maps = cam_like(3, 6, 7, seed=14).astype(np.float32)
    src, dst = tmp_path / "maps.npy", tmp_path / "out.npy"
    np.save(src, maps)
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([[1, 1, 2], [3, 4, 5], [0, 0, 0]]))
    words = tmp_path / "words.json"
    words.write_text(json.dumps(["a", "cat", "and", "a", "dog"]))
    _run_cli(["--input", src, "--output", dst, "--modules", "akd,dacg,cba,normalize,sicd", "--profile", "reference",
              "--token-ids", ids, "--seed", "2"])
    contexts = [MapContext(generated_ids=i, seed=2) for i in ([1, 1, 2], [3, 4, 5], [0, 0, 0])]
    np.testing.assert_array_equal(np.load(dst), apply_chain(maps, OFFICIAL, profile="reference", contexts=contexts))
    _run_cli(["--input", src, "--output", dst, "--modules", "akd,sicd", "--profile", "paper", "--words", words, "--num-steps", "32"])
    ctx = MapContext(words=["a", "cat", "and", "a", "dog"], num_steps=32)
    np.testing.assert_array_equal(np.load(dst), apply_chain(maps, ["akd", "sicd"], profile="paper", contexts=ctx))
    np.save(src, maps[0])
    _run_cli(["--input", src, "--output", dst, "--modules", "cba"])
    assert np.load(dst).shape == (6, 7)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown", "unknown module(s) blur"),
        ("shape", "shape (n, h, w) or (h, w)"),
        ("missing", "does not exist"),
        ("unreadable", "is not a readable .npy array"),
        ("same", "refusing to overwrite"),
        ("ids", "holds 2 lists but the input has 3 maps"),
        ("profile", "--profile must be one of"),
        ("nan", "NaN"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, case, message):
    src, dst = tmp_path / "maps.npy", tmp_path / "out.npy"
    np.save(src, np.random.default_rng(0).random((3, 4, 4)))
    args = ["--input", src, "--output", dst]
    if case == "unknown":
        args += ["--modules", "akd,blur"]
    elif case == "shape":
        np.save(src, np.zeros(5))
    elif case == "missing":
        args[1] = tmp_path / "absent.npy"
    elif case == "unreadable":
        src.write_text("not an array")
    elif case == "same":
        args[3] = src
    elif case == "ids":
        ids = tmp_path / "ids.json"
        ids.write_text("[[1, 2], [3, 3]]")
        args += ["--token-ids", ids]
    elif case == "profile":
        args += ["--profile", "official"]
    elif case == "nan":
        np.save(src, np.full((2, 3, 3), np.nan))
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(args)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dcam: error:")
    assert message in err
    if case == "same":
        assert np.load(src).shape == (3, 4, 4)


def test_cba_parameters_floor_and_very_low_factor():
    # one background value v = 0.05 far below delta: factor clip(v/delta)*0.3 is tiny, so the floor decides
    cam = np.array([[[1.0, 1.0, 1.0], [1.0, 0.05, 1.0], [1.0, 1.0, 1.0]]])
    from stages.refine.cba import background_attenuate, background_threshold

    delta = float(background_threshold(cam)[0])
    assert 0.05 < 0.2 * delta
    np.testing.assert_allclose(background_attenuate(cam)[0, 1, 1], 0.05 * 0.5)
    np.testing.assert_allclose(background_attenuate(cam, floor=0.2)[0, 1, 1], 0.05 * 0.2)
    lam = min(max(0.05 / delta * 1.0, 0.2), 1.0)  # very_low_factor 1: no extra attenuation
    np.testing.assert_allclose(background_attenuate(cam, floor=0.2, very_low_factor=1.0)[0, 1, 1], 0.05 * lam)
    with pytest.raises(ValueError, match="floor"):
        background_attenuate(cam, floor=0.0)
