"""Step selection (``stages.explain.select``): every policy, its tie rule, feasibility, on hand-made inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from schemas.errors import DcamError
from stages.explain.select import POLICIES, attribution_feasibility, select_steps, selection_rows

# (unmask step, attribution steps, feasible flags or None, policy, explicit steps, expected [(step, weight)])
SELECT_CASES = [
    # unmask-step: the target's own step when it has a row
    (3, [1, 3, 5], None, "unmask-step", None, [(3, 1.0)]),
    # ... else the nearest attribution step
    (2, [0, 1, 7], None, "unmask-step", None, [(1, 1.0)]),
    (5, [0, 1, 7], None, "unmask-step", None, [(7, 1.0)]),
    (9, [0, 1, 7], None, "unmask-step", None, [(7, 1.0)]),
    # ties (equidistant steps): the earlier wins, whatever the input order
    (3, [2, 4], None, "unmask-step", None, [(2, 1.0)]),
    (3, [5, 1], None, "unmask-step", None, [(1, 1.0)]),
    (4, [7, 0, 1], None, "unmask-step", None, [(1, 1.0)]),
    # infeasible steps are skipped: 3 is the target's own step but infeasible; 2 and 4 tie, 2 is infeasible too
    (3, [2, 3, 4], [False, False, True], "unmask-step", None, [(4, 1.0)]),
    (3, [1, 3, 6], [True, False, True], "unmask-step", None, [(1, 1.0)]),
    # first / last feasible, order of the input and duplicates do not matter
    (2, [5, 0, 3, 3], None, "first-feasible", None, [(0, 1.0)]),
    (2, [5, 0, 3, 3], None, "last-feasible", None, [(5, 1.0)]),
    (2, [0, 3, 5], [False, True, False], "first-feasible", None, [(3, 1.0)]),
    (2, [0, 3, 5], [True, True, False], "last-feasible", None, [(3, 1.0)]),
    # all-feasible-mean: equal weights over the feasible steps only
    (0, [0, 2, 4, 6], None, "all-feasible-mean", None, [(0, 0.25), (2, 0.25), (4, 0.25), (6, 0.25)]),
    (0, [0, 2, 4, 6], [True, False, True, False], "all-feasible-mean", None, [(0, 0.5), (4, 0.5)]),
    # explicit: the given steps, sorted and deduplicated, equal weights; the unmask step plays no part
    (0, [0, 2, 4, 6], None, "explicit", [6, 2, 6], [(2, 0.5), (6, 0.5)]),
    (5, [0, 2, 4, 6], [False, True, True, True], "explicit", [4], [(4, 1.0)]),
]


@pytest.mark.parametrize("unmask, attr_steps, feasible, policy, steps, expected", SELECT_CASES)
def test_select_steps(unmask, attr_steps, feasible, policy, steps, expected):
    got = select_steps(unmask, attr_steps, policy=policy, steps=steps, feasible=feasible)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=1e-12)
    assert sum(w for _, w in got) == pytest.approx(1.0)


def test_every_policy_is_in_the_table():
    assert {case[3] for case in SELECT_CASES} == set(POLICIES)


# (attribution steps, feasible flags, policy, explicit steps, pattern of the one-line error)
ERROR_CASES = [
    ([], None, "unmask-step", None, r"^no feasible step: the capture recorded no attribution row"),
    ([1, 2], [False, False], "first-feasible", None, r"^no feasible step: none of the attribution steps \[1, 2\]"),
    ([0, 2, 4], None, "explicit", [1], r"^explicit steps \[1\] are not feasible; feasible steps: \[0, 2, 4\]$"),
    ([0, 2, 4], [True, False, True], "explicit", [0, 2], r"^explicit steps \[2\] are not feasible; feasible steps: "
                                                         r"\[0, 4\]$"),
    ([0, 2], None, "explicit", None, r"^policy 'explicit' needs a list of steps"),
    ([0, 2], None, "nearest", None, r"^unknown selection policy 'nearest'; known: unmask-step, "),
    ([0, 2], [True], "unmask-step", None, r"^feasible: 1 flags for 2 attribution steps$"),
]


@pytest.mark.parametrize("attr_steps, feasible, policy, steps, pattern", ERROR_CASES)
def test_select_steps_errors(attr_steps, feasible, policy, steps, pattern):
    with pytest.raises(DcamError, match=pattern) as e:
        select_steps(0, attr_steps, policy=policy, steps=steps, feasible=feasible)
    assert "\n" not in str(e.value)


@dataclass
class FakeSample:
    """The part of :class:`schemas.capture.CaptureSample` that selection reads."""

    sample_id: str
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return list(self.attrs["layers"])

    @property
    def targets(self) -> list[dict[str, Any]]:
        return list(self.attrs["targets"])

    def array(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def recorded(self) -> np.ndarray:
        return self.arrays["recorded"]


def fake_sample(mode="full", *, attr_steps=(0, 2, 4), step_feasible=None, recorded=None, steps=6,
                prefix_has_span=True) -> FakeSample:
    """Two word targets, unmasked at steps 1 and 4, captured at two layers."""
    targets = [{"index": 0, "text": "red", "kind": "word", "unmask_step": 1},
               {"index": 1, "text": "circle", "kind": "word", "unmask_step": 4}]
    forwards = [{"step": int(s), "kind": "full" if mode == "full" else "answer", "contains_image_span": mode == "full"}
                for s in attr_steps]
    if mode == "prefix-cache":
        forwards.insert(0, {"step": -1, "kind": "prefix", "contains_image_span": prefix_has_span})
    feas = np.full(steps, mode == "full") if step_feasible is None else np.asarray(step_feasible, dtype=bool)
    rec = np.ones((len(attr_steps), 2), bool) if recorded is None else np.asarray(recorded, dtype=bool)
    return FakeSample("s0", {"mode": mode, "layers": [1, 3], "targets": targets, "forwards": forwards, "record": "all"},
                      {"attr_steps": np.asarray(attr_steps, np.int16), "step_feasible": feas, "recorded": rec})


def _chosen(rows):
    """(target, step, layer, attr_row, weight) of each selection row."""
    return [(r["target"], r["step"], r["layer"], r["attr_row"], r["weight"]) for r in rows]


# (sample, policy, layers, explicit steps, expected (target, step, layer, attr_row, weight) rows)
ROWS_CASES = [
    # target 0 unmasks at 1: 0 and 2 tie, 0 wins; target 1 unmasks at 4, which has a row
    (fake_sample(), "unmask-step", None, None,
     [(0, 0, 1, 0, 1.0), (0, 0, 3, 0, 1.0), (1, 4, 1, 2, 1.0), (1, 4, 3, 2, 1.0)]),
    (fake_sample(), "last-feasible", [3], None, [(0, 4, 3, 2, 1.0), (1, 4, 3, 2, 1.0)]),
    (fake_sample(), "all-feasible-mean", [1], None,
     [(t, s, 1, r, 1 / 3) for t in (0, 1) for r, s in enumerate((0, 2, 4))]),
    (fake_sample(), "explicit", [1], [2], [(0, 2, 1, 1, 1.0), (1, 2, 1, 1, 1.0)]),
    # step 0 infeasible in the capture: target 0 now takes step 2
    (fake_sample(step_feasible=[False, True, True, True, True, True]), "unmask-step", [1], None,
     [(0, 2, 1, 1, 1.0), (1, 4, 1, 2, 1.0)]),
    (fake_sample(step_feasible=[False, True, True, True, False, True]), "all-feasible-mean", [1], None,
     [(0, 2, 1, 1, 1.0), (1, 2, 1, 1, 1.0)]),
    # prefix-cache: step_feasible is False everywhere, every step reaches the prefix pass through the cache
    (fake_sample("prefix-cache"), "unmask-step", [1], None, [(0, 0, 1, 0, 1.0), (1, 4, 1, 2, 1.0)]),
    (fake_sample("prefix-cache"), "first-feasible", [3], None, [(0, 0, 3, 0, 1.0), (1, 0, 3, 0, 1.0)]),
]


@pytest.mark.parametrize("sample, policy, layers, steps, expected", ROWS_CASES)
def test_selection_rows(sample, policy, layers, steps, expected):
    rows = selection_rows(sample, policy=policy, layers=layers, steps=steps)
    got = _chosen(rows)
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    assert [g[4] for g in got] == pytest.approx([e[4] for e in expected])
    assert {(r["sample_id"], r["policy"], r["target_kind"]) for r in rows} == {("s0", policy, "word")}
    assert [r["word"] for r in rows] == [("red", "circle")[g[0]] for g in got]


# (sample, policy, layers, explicit steps, pattern of the one-line error)
ROWS_ERROR_CASES = [
    (fake_sample(step_feasible=np.zeros(6, bool)), "unmask-step", None, None,
     r"^no feasible step: none of the attribution steps \[0, 2, 4\]"),
    (fake_sample(step_feasible=[True, True, False, True, True, True]), "explicit", None, [2],
     r"^explicit steps \[2\] are not feasible; feasible steps: \[0, 4\]$"),
    (fake_sample("prefix-cache", prefix_has_span=False), "unmask-step", None, None, r"^no feasible step"),
    (fake_sample(), "unmask-step", [2], None, r"^sample s0: layers \[2\] were not captured \(captured: \[1, 3\]\)$"),
    # recorded at the unmask step only: target 0 (unmask 1 -> step 0) was recorded at row 0, target 1 at row 2
    (fake_sample(recorded=[[True, False], [False, False], [False, True]]), "last-feasible", None, None,
     r"^sample s0: policy 'last-feasible' asks for step 4 of target 0 \('red'\), which the capture did not record"),
    (fake_sample(step_feasible=[True] * 4), "unmask-step", None, None,
     r"^sample s0: attribution steps \[4\] are outside step_feasible \(4 steps\)$"),
]


@pytest.mark.parametrize("sample, policy, layers, steps, pattern", ROWS_ERROR_CASES)
def test_selection_rows_errors(sample, policy, layers, steps, pattern):
    with pytest.raises(DcamError, match=pattern) as e:
        selection_rows(sample, policy=policy, layers=layers, steps=steps)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("sample, expected", [
    (fake_sample(), [True, True, True]),
    (fake_sample(step_feasible=[True, False, False, True, True, False]), [True, False, True]),
    (fake_sample("prefix-cache"), [True, True, True]),
    (fake_sample("prefix-cache", prefix_has_span=False), [False, False, False]),
])
def test_attribution_feasibility(sample, expected):
    assert attribution_feasibility(sample, [int(s) for s in sample.array("attr_steps")]) == expected


@pytest.mark.parametrize("mode", ["full", "prefix-cache"])
def test_every_attribution_step_of_a_toy_capture_is_feasible(tmp_path, mode):
    """A real store in either mode: step_feasible is all True (full) or all False (prefix-cache, where the
    prefix pass holds the image span), and in both every one of the STEPS replayed steps is selectable."""
    import torch

    from schemas.capture import CaptureStore
    from stages.capture.core import CaptureConfig, capture_sample
    from stages.capture.toy_adapter import ToyAdapter
    from stages.synth import render_scene
    from stages.toy.model import ToyConfig, ToyDMLLM

    gen, steps = 8, 4
    torch.manual_seed(0)
    adapter = ToyAdapter(ToyDMLLM(ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3,
                                            num_heads=2, gen_length=gen)).eval())
    config = CaptureConfig(layers=(0, 1), steps=steps, block_length=gen, mode=mode, record="all")
    cap = capture_sample(adapter, render_scene(np.random.default_rng(1)).image, config, sample_id="s")
    store = CaptureStore.create(tmp_path / "store", config={"t": mode})
    store.write_sample("s", arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
    sample = CaptureStore.open(tmp_path / "store").sample("s")
    assert sample.array("step_feasible").tolist() == [mode == "full"] * steps
    assert attribution_feasibility(sample, list(range(steps))) == [True] * steps
    rows = selection_rows(sample, policy="all-feasible-mean", layers=None, steps=None)
    assert [(r["step"], r["attr_row"], r["layer"]) for r in rows] == [
        (s, s, layer) for _ in sample.targets for s in range(steps) for layer in (0, 1)]
    assert {r["weight"] for r in rows} == {1 / steps}
