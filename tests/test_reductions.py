"""Declared gradient reductions: each base method's, the union a capture stores, derivation from --store-grads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from schemas.capture import CaptureStore
from schemas.errors import DcamError
from stages.basemaps import BASE_METHODS, REDUCTIONS, default_reductions, get_base_method, reductions_for
from stages.basemaps.reductions import Reduction
from stages.capture.config import family_config
from stages.capture.core import CaptureConfig, capture_sample
from stages.explain.basemap import sample_base_maps
from stages.explain.select import selection_rows

GEN, STEPS = 8, 4

# One target, N = 3 tokens, D = 2 channels.
A = np.array([[1.0, -2.0], [0.0, 1.0], [2.0, 2.0]], np.float32)
G = np.array([[[1.0, -1.0], [3.0, 0.0], [-1.0, 2.0]]], np.float32)


def test_each_declared_reduction_hand_computed():
    expected = {
        "alpha": [[1.0, 1 / 3]],  # column means of G
        "alpha_pos": [[4 / 3, 2 / 3]],  # column means of ReLU(G)
        "gxa": [[3.0, 0.0, 2.0]],  # row sums of G * A: 1 + 2, 0 + 0, -2 + 4
        "gnorm": [[np.sqrt(2), 3.0, np.sqrt(5)]],
    }
    for name, want in expected.items():
        got = REDUCTIONS[name].from_arrays(G, A)
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
        assert got.dtype == np.float32
    grads = REDUCTIONS["grads"].from_arrays(G, A)
    assert grads.dtype == np.float16 and np.array_equal(grads, G)


def test_methods_declare_what_they_read_and_the_union_is_sorted():
    assert get_base_method("gradcam").needs == ("acts", "alpha")
    assert get_base_method("gradcam-pp").needs == ("acts", "alpha_pp")
    assert get_base_method("tam").reductions == ()
    assert reductions_for(["llava-cam", "diffusion-cam-base"]) == ("alpha_pos",)
    assert reductions_for(["grad-norm", "gradcam-pp", "tam", "gradcam"]) == ("alpha", "alpha_pp", "gnorm")
    assert default_reductions() == ("alpha", "alpha_pos", "alpha_pp", "gnorm", "gxa")
    assert set(REDUCTIONS) == {*default_reductions(), "grads"}
    assert set(BASE_METHODS) >= {"gradcam-pp"}
    with pytest.raises(ValueError, match="unknown base method 'scorecam'"):
        reductions_for(["scorecam"])


def test_a_reduction_returning_the_wrong_shape_or_per_is_refused():
    bad = Reduction("bad", "channel", lambda g, a: g.sum(-1), "per token, declared per channel")
    with pytest.raises(ValueError, match="reduction 'bad' returned shape \\(1, 3\\), expected \\(1, 2\\)"):
        bad.from_arrays(G, A)
    with pytest.raises(ValueError, match="per must be one of"):
        Reduction("bad", "pixel", lambda g, a: g, "")


def test_capture_config_keeps_reductions_sorted_and_refuses_unknown_ones():
    config = CaptureConfig(layers=(1,), steps=4, block_length=8, reductions=("gxa", "alpha", "gxa"))
    assert config.reductions == ("alpha", "gxa")
    assert [r.name for r in config.stored_reductions()] == ["alpha", "gxa"]
    assert config.to_dict()["reductions"] == ["alpha", "gxa"]
    assert CaptureConfig(layers=(1,), steps=4, block_length=8).reductions == default_reductions()
    grads = CaptureConfig(layers=(1,), steps=4, block_length=8, reductions=(), store_grads=True)
    assert [r.name for r in grads.stored_reductions()] == ["grads"]
    with pytest.raises(DcamError, match="unknown gradient reduction 'alpha_xx'"):
        CaptureConfig(layers=(1,), steps=4, block_length=8, reductions=("alpha_xx",))
    with pytest.raises(DcamError, match="store_grads"):
        CaptureConfig(layers=(1,), steps=4, block_length=8, reductions=("grads",))


def test_family_config_stores_what_the_named_methods_declare(toy_adapter):
    config = family_config(toy_adapter, layers=[1], steps=STEPS, methods=["gradcam-pp", "tam"])
    assert config.reductions == ("alpha_pp",)
    assert family_config(toy_adapter, layers=[1], steps=STEPS).reductions == default_reductions()
    with pytest.raises(DcamError, match="--methods: unknown base method 'scorecam'"):
        family_config(toy_adapter, layers=[1], steps=STEPS, methods=["scorecam"])


def _sample(tmp_path, name, toy_adapter, toy_image, mode, **kw):
    config = CaptureConfig(layers=(0, 1), steps=STEPS, block_length=GEN, mode=mode, temperature=0.5, **kw)
    cap = capture_sample(toy_adapter, toy_image, config, sample_id="s")
    store = CaptureStore.create(tmp_path / name, config=config.to_dict())
    store.write_sample("s", arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
    return CaptureStore.open(tmp_path / name).sample("s")


def _maps(sample, method, **options):
    rows = pd.DataFrame(selection_rows(sample, policy="unmask-step", layers=None, steps=None))
    return sample_base_maps(sample, rows, method=method, options=options)


@pytest.mark.parametrize("mode", ["full", "prefix-cache"])
def test_maps_from_stored_gradients_equal_those_from_stored_reductions(toy_adapter, toy_image, tmp_path, mode):
    """A capture for Grad-CAM++ alone stores its weights and nothing else; a capture that keeps only the full
    gradient gives every method's maps through the same functions, equal up to the float16 rounding of the
    stored gradient and activations."""
    lean = _sample(tmp_path, "pp", toy_adapter, toy_image, mode, reductions=reductions_for(["gradcam-pp"]))
    assert lean.reductions == ["alpha_pp"]
    assert lean.has("alpha_pp", 1) and not lean.has("alpha", 1) and not lean.has("grads", 1)
    full = _sample(tmp_path, "default", toy_adapter, toy_image, mode)
    assert full.reductions == list(default_reductions())
    grads = _sample(tmp_path, "grads", toy_adapter, toy_image, mode, reductions=(), store_grads=True)
    assert grads.reductions == ["grads"] and not grads.has("alpha_pp", 0)
    np.testing.assert_array_equal(lean.array("tokens"), grads.array("tokens"))

    for stored, method, options in [(lean, "gradcam-pp", {}), (full, "gradcam-pp", {"relu": True}),
                                    *((full, m, {}) for m in BASE_METHODS if m not in ("tam", "grad-x-act"))]:
        expected = _maps(stored, method, **options)
        got = _maps(grads, method, **options)
        assert [g[0]["target"] for g in got] == [e[0]["target"] for e in expected]
        for (_, m), (_, e) in zip(got, expected):
            scale = max(float(np.abs(e).max()), 1e-30)
            np.testing.assert_allclose(m, e, rtol=2e-2, atol=2e-3 * scale, err_msg=method)
    # grad-x-act sums G * A over channels with heavy cancellation (pre-norm blocks: G nearly orthogonal to A), so
    # the float16 rounding of the stored inputs dominates it; its derived map is checked against the float64 sum
    # over the stored arrays instead, row by row.
    attr_steps, act_row = list(grads.array("attr_steps")), grads.array("act_row")
    for rec, m in _maps(grads, "grad-x-act"):
        r, layer = attr_steps.index(rec["step"]), rec["layer"]
        g = grads.array("grads", layer)[r, rec["target"]].astype(np.float64)
        a = grads.array("acts", layer)[act_row[r]].astype(np.float64)
        want = (g * a).sum(-1).reshape(m.shape)
        terms = (np.abs(g) * np.abs(a)).sum(-1).reshape(m.shape)  # float32 summation error is a few ulps of this
        assert (np.abs(m - want) <= 1e-5 * terms).all()
        assert np.abs(want).max() > 0
    # the Grad-CAM++ maps of the lean and the default capture are the same computation
    for (_, m), (_, e) in zip(_maps(lean, "gradcam-pp"), _maps(full, "gradcam-pp")):
        np.testing.assert_array_equal(m, e)


def test_a_method_whose_reduction_is_not_stored_fails_in_one_line(toy_adapter, toy_image, tmp_path):
    lean = _sample(tmp_path, "pp", toy_adapter, toy_image, "full", reductions=("alpha_pp",))
    with pytest.raises(DcamError, match=r"base method 'gradcam' needs the gradient reduction 'alpha' \(L0\)") as e:
        _maps(lean, "gradcam")
    assert "dcam capture --methods gradcam" in str(e.value) and "\n" not in str(e.value)
    assert len(_maps(lean, "tam")) > 0  # TAM reads no gradient


def test_a_run_captures_the_reductions_of_its_chains_and_its_store_is_keyed_by_them(tmp_path, monkeypatch):
    from flows import pipeline
    from flows.config import RunConfig

    monkeypatch.setattr("stages.capture.run.model_digest", lambda spec: "model")
    monkeypatch.setattr(pipeline, "dataset_digest", lambda path: "data")

    def run_config(presets):
        return RunConfig.model_validate({"root": str(tmp_path), "dataset": {"synth": {"count": 1}},
                                         "explain": {"presets": presets}})

    plain = run_config(["gradcam", "tam"])
    assert pipeline.capture_methods(plain) == ["gradcam", "tam"]
    assert pipeline.capture_config_dict(plain, "x")["reductions"] == ["alpha"]
    official = run_config(["diffusion-cam", "llava-cam", "gradcam"])
    assert pipeline.capture_config_dict(official, "x")["reductions"] == ["alpha", "alpha_pos"]
    assert pipeline.capture_path(plain, "x") != pipeline.capture_path(official, "x")
    assert pipeline.capture_path(official, "x") == pipeline.capture_path(run_config(["llava-cam", "gradcam"]), "x")


def test_a_sample_written_before_reductions_were_recorded_lists_its_arrays(toy_adapter, toy_image, tmp_path):
    config = CaptureConfig(layers=(1,), steps=STEPS, block_length=GEN, reductions=("alpha", "gxa"), store_grads=True)
    cap = capture_sample(toy_adapter, toy_image, config, sample_id="s")
    assert cap.attrs.pop("reductions") == ["alpha", "gxa", "grads"]
    store = CaptureStore.create(tmp_path / "old", config={})
    store.write_sample("s", arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
    assert CaptureStore.open(tmp_path / "old").sample("s").reductions == ["alpha", "grads", "gxa"]
