"""``dcam capture --record``: a capture records what its selection policy reads (issue 12)."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest

from schemas.capture import CaptureStore
from schemas.errors import DcamError
from stages.capture.core import CaptureConfig, capture_sample, record_plan
from stages.capture.targets import Target
from stages.explain.basemap import sample_base_maps
from stages.explain.select import selection_rows
from stages.basemaps import BASE_METHODS

GEN, STEPS = 8, 6


@pytest.fixture(scope="module")
def adapter(toy_adapter):
    return toy_adapter


@pytest.fixture(scope="module")
def image(toy_image):
    return toy_image


def _store(tmp_path, name, cap):
    store = CaptureStore.create(tmp_path / name, config={"t": name})
    store.write_sample("s", arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
    return CaptureStore.open(tmp_path / name).sample("s")


def _capture(adapter, image, mode, record, **kw):
    config = CaptureConfig(layers=(0, 1), steps=STEPS, block_length=GEN, mode=mode, temperature=0.5, record=record)
    return capture_sample(adapter, image, config, sample_id="s", **kw)


def test_record_plan_replays_each_targets_unmask_step_only():
    targets = [Target(0, "word", "red", (0,), (11,), 3), Target(1, "word", "circle", (1, 2), (16, 17), 1),
               Target(2, "word", "a", (3,), (8,), 3), Target(3, "response", "red circle a", (0, 1, 2, 3),
                                                             (11, 16, 17, 8), 3)]
    steps, recorded = record_plan(targets, 5, "unmask-step")
    assert steps == [1, 3]
    assert recorded.tolist() == [[False, True, False, False], [True, False, True, True]]
    steps, recorded = record_plan(targets, 5, "all")
    assert steps == [0, 1, 2, 3, 4] and recorded.shape == (5, 4) and recorded.all()
    with pytest.raises(DcamError, match="--record"):
        record_plan(targets, 5, "every-other")


@pytest.mark.parametrize("mode", ["full", "prefix-cache"])
def test_unmask_step_maps_equal_those_of_the_full_capture(adapter, image, tmp_path, mode):
    """Every base method's unmask-step map, from a full capture and from an unmask-step capture (with the
    generation's graphs kept, and replayed), is the same map."""
    full = _store(tmp_path, "all", _capture(adapter, image, mode, "all", graph_budget=0))
    lean = {name: _store(tmp_path, name, _capture(adapter, image, mode, "unmask-step", graph_budget=budget))
            for name, budget in (("kept", 1 << 30), ("replayed", 0))}
    t = len(full.targets)
    assert full.recorded().sum() == STEPS * t
    for sample in lean.values():
        np.testing.assert_array_equal(sample.array("tokens"), full.array("tokens"))
        assert (sample.recorded().sum(axis=0) == 1).all()  # one gradient row per target
        assert len(sample.array("attr_steps")) < STEPS
    for method in BASE_METHODS:
        if method == "tam" and mode == "prefix-cache":  # TAM reads the prefix pass, the same for every step
            continue
        expected = sample_base_maps(full, pd.DataFrame(selection_rows(full, policy="unmask-step", layers=None,
                                                                      steps=None)), method=method)
        for sample in lean.values():
            rows = pd.DataFrame(selection_rows(sample, policy="unmask-step", layers=None, steps=None))
            got = sample_base_maps(sample, rows, method=method)
            assert [g[0]["target"] for g in got] == [e[0]["target"] for e in expected]
            for (_, m), (_, e) in zip(got, expected):
                np.testing.assert_allclose(m, e, rtol=1e-5, atol=1e-6 * max(np.abs(e).max(), 1e-30))


def test_select_says_in_one_line_when_a_policy_asks_for_a_step_not_recorded(adapter, image, tmp_path):
    sample = _store(tmp_path, "lean", _capture(adapter, image, "full", "unmask-step"))
    assert len(sample.array("attr_steps")) > 1
    with pytest.raises(DcamError, match=r"did not record \(--record unmask-step\); capture with --record all") as e:
        selection_rows(sample, policy="all-feasible-mean", layers=None, steps=None)
    assert "\n" not in str(e.value)


def test_a_store_written_before_record_existed_reads_as_all_recorded(adapter, image, tmp_path):
    cap = _capture(adapter, image, "full", "all")
    del cap.arrays["recorded"]
    sample = _store(tmp_path, "old", cap)
    assert sample.recorded().shape == (STEPS, len(sample.targets)) and sample.recorded().all()
    assert len(selection_rows(sample, policy="all-feasible-mean", layers=[1], steps=None)) == STEPS * len(sample.targets)


def test_capture_freezes_the_loaded_objects_instead_of_collecting_per_sample(adapter, tmp_path, monkeypatch):
    from stages.capture.run import capture_dataset
    from stages.synth.write import write_dataset

    data = tmp_path / "data"
    write_dataset(data, count=2, seed=3)
    collected, frozen = [], []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(a) or 0)
    config = CaptureConfig(layers=(1,), steps=4, block_length=GEN)
    manifest = capture_dataset(data, tmp_path / "store", adapter=adapter, model_spec="toy", config=config,
                               on_sample=lambda sid, status: frozen.append((status, gc.get_freeze_count())))
    assert manifest.n_ok == 2 and collected == []
    assert [status for status, _ in frozen] == ["ok", "ok"] and all(count > 0 for _, count in frozen)
    assert gc.get_freeze_count() == 0


def test_cli_and_run_config_take_the_record_policy(tmp_path, capsys):
    from flows.cli import main
    from flows.config import CaptureSpec

    assert CaptureSpec().record == "unmask-step" and CaptureSpec(record="all").record == "all"
    with pytest.raises(ValueError):
        CaptureSpec(record="sometimes")
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["capture", "--data", str(data), "--out", str(tmp_path / "s"), "--record", "sometimes"])
    assert e.value.code == 2 and "--record: expected one of unmask-step, all" in capsys.readouterr().err


def test_the_select_stage_refuses_a_policy_the_capture_cannot_serve_in_one_line(adapter, image, tmp_path):
    from stages.explain.select import run_select

    cap = _capture(adapter, image, "full", "unmask-step")
    store = CaptureStore.create(tmp_path / "store", config={"record": "unmask-step"})
    store.write_sample("s", arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
    with pytest.raises(DcamError, match=r"^--policy last-feasible: the capture .* recorded each target at its unmask "
                                        r"step only \(--record unmask-step\)") as e:
        run_select(tmp_path / "store", tmp_path / "sel", policy="last-feasible")
    assert "\n" not in str(e.value)
    manifest = run_select(tmp_path / "store", tmp_path / "sel", policy="unmask-step")
    assert [s.status for s in manifest.samples] == ["ok"]
