"""Score routing (``stages.score.stage``): which protocol and metrics each map gets, with known answers.

The hand-made sample is 4x4 pixels: a circle (label 1) in the top-left 2x2 block, a square (label 2) in the
bottom-right 2x2 block; the dataset also names a triangle (label 3) that is not in this image. Maps are at
the mask's resolution, so no resize moves a value.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from schemas.errors import DcamError
from stages.score.stage import score_sample, unit_map

PAPER = ("obj_iou", "precision", "recall", "contrast", "concentration", "pointing_hit", "energy_pointing_bbox",
         "energy_pointing_mask")
WORD = ("obj_iou_word", "pointing_hit_word", "energy_pointing_bbox_word", "energy_pointing_mask_word")
RESPONSE = tuple(f"response_{k}" for k in PAPER)

TL = np.zeros((4, 4), bool)
TL[:2, :2] = True
#: raw signed map: 4 on the circle, 0.8 elsewhere -> unit map 1 on the circle, 0.2 elsewhere (uint8 255 / 51)
ON_CIRCLE = np.where(TL, 4.0, 0.8)
#: a function word's map: 0.1 on the left half (uint8 25, below any Otsu threshold of ON_CIRCLE, 51..254), 1 on
#: the right half
HALF = np.where(np.arange(4)[None, :] < 2, 0.1, 1.0) * np.ones((4, 1))


@pytest.fixture
def sample(tmp_path):
    return _sample(tmp_path, "synthetic", {"circle": 1, "square": 2, "triangle": 3})


def _sample(tmp_path, source, categories):
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1
    mask[2:, 2:] = 2
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    return SimpleNamespace(sample_id="s", source=source, categories=categories, mask_path=str(tmp_path / "mask.png"),
                           height=4, width=4, objects=[])


def _score(sample, entries, **kw):
    """``entries``: (target, word, target_kind, layer, map); returns {(target, layer): {metric: value}}."""
    rows = pd.DataFrame([{"target": t, "word": w, "target_kind": k, "step": 2, "layer": layer}
                         for t, w, k, layer, _ in entries])
    out: dict[tuple[int, int], dict[str, float]] = {}
    for r in score_sample(sample, rows, np.stack([m for *_, m in entries]), method="m", **kw):
        assert (r["sample_id"], r["method"], r["step"]) == ("s", "m", 2)
        out.setdefault((r["target"], r["layer"]), {})[r["metric"]] = r["value"]
    return out


# (target kind, word, metrics the map gets); the sample's other words: "circle" (object) and "the" (function)
ROUTES = [
    ("response", "circle square", set(RESPONSE)),  # the paper's protocol, prefixed, no TAM
    ("contrastive", "circle", set(PAPER)),  # the paper's one map, against the best object, no TAM
    ("word", "circle", set(PAPER) | set(WORD) | {"tam_obj_iou"}),  # a present object: both protocols
    ("word", "circles", set(PAPER) | set(WORD) | {"tam_obj_iou"}),  # plurals name the same object
    ("word", "triangle", set()),  # an object absent from the image: no ground truth, no TAM Obj-IoU
    ("word", "red", set()),  # neither an object nor a function word
    ("word", "a", {"func_iou"}),  # a function word: TAM's Func-IoU
]


@pytest.mark.parametrize("kind, word, expected", ROUTES)
def test_which_metrics_a_map_gets(sample, kind, word, expected):
    got = _score(sample, [(0, "circle", "word", 1, ON_CIRCLE), (1, "the", "word", 1, HALF),
                          (2, word, kind, 1, ON_CIRCLE)])
    assert set(got.get((2, 1), {})) == expected


def test_known_values_of_both_protocols(sample):
    """ON_CIRCLE binarises to the circle; the word "square" names the other object.

    Paper protocol (foreground = circle and square, 8 pixels; map sum 4 + 12 * 0.2 = 6.4): Obj-IoU 1 with the
    circle, contrast (4 + 0.8) / 8 / 0.2 = 3, concentration 4.8 / 6.4 = 0.75, the peak lies on an object,
    energy in the objects' box (the whole image) 1, in their mask 0.75. Against the square: IoU 0, no hit,
    energy 0.8 / 6.4 = 0.125 (box and mask agree). TAM: the circle's Obj-IoU is 1; "the" is below the noun
    threshold on half of its map.
    """
    got = _score(sample, [(0, "square", "word", 1, ON_CIRCLE), (1, "the", "word", 1, HALF)])
    expected = {"obj_iou": 1.0, "precision": 1.0, "recall": 1.0, "contrast": 3.0, "concentration": 0.75,
                "pointing_hit": 1.0, "energy_pointing_bbox": 1.0, "energy_pointing_mask": 0.75,
                "obj_iou_word": 0.0, "pointing_hit_word": 0.0, "energy_pointing_bbox_word": 0.125,
                "energy_pointing_mask_word": 0.125, "tam_obj_iou": 0.0}
    assert got[(0, 1)] == pytest.approx(expected, rel=1e-6)
    assert got[(1, 1)] == pytest.approx({"func_iou": 0.5})
    got = _score(sample, [(0, "circle", "word", 1, ON_CIRCLE), (1, "the", "word", 1, HALF)])
    assert got[(0, 1)]["tam_obj_iou"] == pytest.approx(1.0) and got[(0, 1)]["obj_iou_word"] == pytest.approx(1.0)


@pytest.mark.parametrize("tam_resize", ["uint8", "float"])
def test_tam_protocol_runs_per_layer(sample, tam_resize):
    """Layer 1 has a matched noun, so "the" gets Func-IoU there; layer 2 has none, so "the" gets nothing."""
    got = _score(sample, [(0, "circle", "word", 1, ON_CIRCLE), (1, "the", "word", 1, HALF),
                          (0, "red", "word", 2, ON_CIRCLE), (1, "the", "word", 2, HALF)], tam_resize=tam_resize)
    assert got[(1, 1)] == pytest.approx({"func_iou": 0.5})
    assert (1, 2) not in got and (0, 2) not in got


def test_an_absent_nouns_threshold_still_counts(sample):
    """TAM: "triangle" gets no Obj-IoU, but its Otsu threshold (of the two-level ON_CIRCLE) is the noun
    foreground threshold, so "the" still gets Func-IoU (without a matched noun it gets none, as in layer 2 of
    test_tam_protocol_runs_per_layer)."""
    got = _score(sample, [(0, "triangle", "word", 1, ON_CIRCLE), (1, "the", "word", 1, HALF)])
    assert got == {(1, 1): pytest.approx({"func_iou": 0.5})}


@pytest.mark.parametrize("source, routed", [("synthetic", False), ("coco", False), ("grandf", True),
                                            ("tam-anno", True)])
def test_phrase_datasets_match_a_word_inside_a_grounding_phrase(tmp_path, source, routed):
    """GranDf and TAM anno.json name objects by free-text phrases: "red" names "a red circle" there only."""
    sample = _sample(tmp_path, source, {"a red circle": 1, "a blue square": 2})
    got = _score(sample, [(0, "red", "word", 1, ON_CIRCLE)])
    assert set(got.get((0, 1), {})) == ((set(PAPER) | set(WORD) | {"tam_obj_iou"}) if routed else set())


@pytest.mark.parametrize("raw, expected", [
    ([[-1.0, 2.0], [4.0, 0.0]], [[0.0, 0.5], [1.0, 0.0]]),  # ReLU, then divide by the maximum
    ([[0.25, 0.5], [1.0, 0.0]], [[0.25, 0.5], [1.0, 0.0]]),  # an already normalised map is unchanged
    ([[-3.0, -1.0], [-2.0, -0.5]], [[0.0, 0.0], [0.0, 0.0]]),  # no positive value: all zeros
    ([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]),
])
def test_unit_map(raw, expected):
    raw = np.asarray(raw)
    before = raw.copy()
    np.testing.assert_allclose(unit_map(raw), expected, atol=1e-15)
    np.testing.assert_array_equal(raw, before)  # the input is not changed


def test_maps_are_scored_after_unit_map(sample):
    """A map and its positive multiple, or the same map with negative values where it was 0, score alike."""
    base = np.where(TL, 1.0, 0.0)
    shifted = np.where(TL, 5.0, -2.0)
    a = _score(sample, [(0, "circle", "word", 1, base)])
    b = _score(sample, [(0, "circle", "word", 1, shifted)])
    assert a[(0, 1)] == pytest.approx(b[(0, 1)], nan_ok=True)


def test_run_score_refuses_an_unknown_tam_resize(tmp_path):
    from stages.score.stage import run_score

    with pytest.raises(DcamError, match=r"^tam_resize: expected one of uint8, float, got 'nearest'$"):
        run_score(tmp_path / "maps", tmp_path / "data", tmp_path / "out", tam_resize="nearest")
