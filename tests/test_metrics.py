"""Metrics of the scoring stage on hand-made maps and masks with known answers."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.filters import threshold_otsu
from skimage.transform import resize

from stages.score import (
    binarize_otsu,
    concentration,
    contrast,
    contrast_score,
    energy_pointing_game,
    f1_iou,
    f3,
    func_iou,
    obj_iou,
    otsu_threshold_uint8,
    pointing_game,
    resize_bilinear,
    score_map,
    tam_word_scores,
)
from stages.score.metrics import resize_bilinear_uint8, tam_binarize, to_uint8
from stages.score.aggregate import frame, long_rows, summarise, write_table

# ------------------------------------------------------------------------------------------ F3 vs paper

#: method.md §1.7, main table (COCO | GranDf) and the COCO ablation: Obj-IoU %, Contrast, Concentration %, F3 %.
PAPER_ROWS = [
    ("LLaVA-CAM COCO", 20.02, 2.18, 41.22, 18.08),
    ("Grad-CAM COCO", 19.93, 2.04, 41.91, 17.43),
    ("TAM COCO", 15.21, 2.51, 40.10, 17.61),
    ("Diffusion-CAM COCO", 30.10, 2.58, 51.41, 23.04),
    ("LLaVA-CAM GranDf", 18.16, 1.41, 70.80, 14.22),
    ("Grad-CAM GranDf", 17.82, 1.48, 75.42, 14.67),
    ("TAM GranDf", 20.39, 1.36, 67.31, 14.23),
    ("Diffusion-CAM GranDf", 28.41, 2.02, 86.14, 20.53),
]
PAPER_ABLATION = [
    ("Baseline", 20.12, 2.19, 41.42, 18.16),
    ("+AKD", 25.85, 2.28, 44.01, 20.16),
    ("+DACG", 21.22, 2.20, 47.94, 18.88),
    ("+CBA", 21.42, 2.41, 42.63, 19.59),
    ("+SICD", 24.11, 2.29, 44.31, 19.82),
    ("Full", 30.10, 2.58, 51.44, 23.04),
]


def test_f3_reproduces_the_headline_number():
    assert f3(0.3010, 2.58, 0.5141) == pytest.approx(0.2304, abs=5e-5)


@pytest.mark.parametrize("name, iou, con, conc, expected", PAPER_ROWS + PAPER_ABLATION)
def test_f3_reproduces_every_table_row(name, iou, con, conc, expected):
    # The table's inputs are rounded to 2 decimals; the largest gap found is 4.4e-4
    # (Diffusion-CAM GranDf, 0.205736 vs 0.2053), the next +AKD at 4.3e-4, all others <= 9.2e-5.
    assert f3(iou / 100, con, conc / 100) == pytest.approx(expected / 100, abs=5e-4)


def test_f3_is_a_harmonic_mean_with_capped_contrast():
    assert f3(0.5, 10.0, 0.5) == pytest.approx(0.5)
    assert f3(1.0, 40.0, 1.0) == 1.0  # contrast 40 -> contrast_score capped at 1
    assert contrast_score(40.0) == 1.0 and contrast_score(5.0) == 0.25
    assert f3(0.0, 5.0, 0.5) == 0.0
    assert math.isnan(f3(float("nan"), 5.0, 0.5))
    np.testing.assert_allclose(f3(np.array([0.5, 1.0]), np.array([10.0, 20.0]), 0.5), [0.5, 0.75])
    with pytest.raises(ValueError, match=">= 0"):
        f3(-0.1, 2.0, 0.5)


# ------------------------------------------------------------------------------------- resize and Otsu


def test_resize_matches_skimage_order1_edge_without_antialiasing():
    rng = np.random.default_rng(0)
    for h, w, out_h, out_w in [(3, 4, 12, 16), (21, 28, 480, 640), (10, 10, 5, 7), (1, 5, 4, 9), (7, 3, 7, 3)]:
        m = rng.random((h, w))
        expected = resize(m, (out_h, out_w), order=1, mode="edge", anti_aliasing=False)
        np.testing.assert_allclose(resize_bilinear(m, (out_h, out_w)), expected, atol=1e-12)


def test_resize_hand_case_half_pixel_centres():
    # 1x2 -> 1x4: source x = (dx + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped 0, .25, .75, 1.
    out = resize_bilinear(np.array([[0.0, 1.0]]), (1, 4))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]])


def test_to_uint8_clips_then_truncates():
    _, t = binarize_otsu(np.array([[0.0, 1.0]]), (1, 2))
    assert t == 0
    img = (255 * np.clip(np.array([[-0.5, 0.999, 1.5, 0.5]]), 0, 1)).astype(np.uint8)
    assert img.tolist() == [[0, 254, 255, 127]]


def test_otsu_hand_cases():
    # Two values: every t in [10, 199] separates them perfectly; ties go to the smallest t, as cv2.
    img = np.array([[10, 10, 200, 200]], dtype=np.uint8)
    assert otsu_threshold_uint8(img) == 10
    # Values 0, 1, 2 once each: t=0 and t=1 both give between-class variance 0.5 in exact arithmetic, but
    # OpenCV's floating-point recurrence makes t=1's larger by an ulp, and cv2 returns 1 (checked, 4.10 and 5.0).
    assert otsu_threshold_uint8(np.array([[0, 1, 2]], dtype=np.uint8)) == 1
    # 20 x 0, 15 x 28, 20 x 56: both splits give exactly 448.0 in doubles; strict ">" keeps the first, 0.
    assert otsu_threshold_uint8(np.repeat(np.array([0, 28, 56], np.uint8), [20, 15, 20]).reshape(55, 1)) == 0
    # 0,0,0,1,2,9: t=0 -> 0.5*0.5*(0-4)**2=4; t=1 -> (4/6)(2/6)(.25-5.5)**2=6.125; t=2 -> (5/6)(1/6)(.6-9)**2=9.8.
    assert otsu_threshold_uint8(np.array([[0, 0, 0, 1, 2, 9]], dtype=np.uint8)) == 2
    # A constant image has no valid split: cv2 returns 0.
    assert otsu_threshold_uint8(np.full((3, 3), 77, dtype=np.uint8)) == 0
    with pytest.raises(ValueError, match="image: expected dtype uint8"):
        otsu_threshold_uint8(np.zeros((2, 2)))


def test_otsu_agrees_with_skimage_on_random_images():
    rng = np.random.default_rng(1)
    for _ in range(40):
        shape = tuple(rng.integers(5, 60, 2))
        img = (rng.random(shape) ** rng.uniform(0.3, 3.0) * 255).astype(np.uint8)
        if img.min() == img.max():
            continue
        assert otsu_threshold_uint8(img) == threshold_otsu(img)
    bimodal = np.concatenate([rng.normal(50, 10, 500), rng.normal(190, 15, 300)]).clip(0, 255).astype(np.uint8)
    assert otsu_threshold_uint8(bimodal.reshape(20, 40)) == threshold_otsu(bimodal)


def test_binarize_otsu_resizes_and_thresholds():
    heat = np.zeros((2, 2))
    heat[0, 0] = 1.0
    binary, t = binarize_otsu(heat, (4, 4))
    # Resized: the top-left 2x2 corner is >= .5625 of the peak, the far corner 0; Otsu splits it off.
    assert binary.shape == (4, 4)
    assert binary[0, 0] and not binary[3, 3]
    assert t == otsu_threshold_uint8((255 * resize_bilinear(heat, (4, 4))).astype(np.uint8))


# --------------------------------------------------------------------------------------- paper metrics


def _square_mask():
    mask = np.zeros((10, 10), dtype=np.int32)
    mask[2:6, 2:6] = 3  # 16 px
    mask[7:9, 7:9] = 5  # 4 px
    return mask


def test_map_exactly_on_the_object():
    mask = _square_mask()
    heat = (mask == 3).astype(float)
    s = score_map(heat, mask)
    assert s["obj_iou"] == 1.0 and s["precision"] == 1.0 and s["recall"] == 1.0 and s["label"] == 3
    assert s["contrast"] == pytest.approx(0.8 / 1e-8)  # mean(fg) = 16/20 on the union, mean(bg) = 0 -> huge
    assert s["contrast_score"] == 1.0
    # fg is the union of both objects: all of the map's mass is on object 3, inside the union.
    assert s["concentration"] == pytest.approx(1.0)
    assert s["f3"] == pytest.approx(1.0)
    assert s["pointing_hit"] == 1.0 and s["energy_pointing_mask"] == 1.0 and s["energy_pointing_bbox"] == 1.0


def test_uniform_map():
    mask = _square_mask()
    s = score_map(np.full((5, 5), 0.5), mask)
    # Constant map: Otsu threshold 0, uint8 value 127 > 0 -> the whole image is foreground.
    assert s["otsu_threshold"] == 0.0
    assert s["obj_iou"] == pytest.approx(16 / 100)
    assert s["precision"] == pytest.approx(0.16) and s["recall"] == 1.0
    assert s["contrast"] == pytest.approx(1.0)
    assert s["concentration"] == pytest.approx(20 / 100)
    assert s["pointing_hit"] == 1.0  # every pixel is a maximum; some lie on an object


def test_half_overlap_by_hand():
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:, :2] = 1  # left half, 8 px
    binary = np.zeros((4, 4), dtype=bool)
    binary[:2, :] = True  # top half, 8 px; overlap 4 px, union 12 px
    r = obj_iou(binary, mask)
    assert (r.iou, r.precision, r.recall, r.label) == (pytest.approx(1 / 3), 0.5, 0.5, 1)
    heat = binary.astype(float)
    assert contrast(heat, mask > 0) == pytest.approx(0.5 / (0.5 + 1e-8))
    assert concentration(heat, mask > 0) == pytest.approx(0.5)


def test_obj_iou_best_label_and_given_label():
    mask = _square_mask()
    binary = mask == 5
    best = obj_iou(binary, mask)
    assert best.label == 5 and best.iou == 1.0
    given = obj_iou(binary, mask, label=3)
    assert given.label == 3 and given.iou == 0.0 and given.precision == 0.0 and given.recall == 0.0
    with pytest.raises(ValueError, match=r"label: 4 is not present .*labels present: 3, 5"):
        obj_iou(binary, mask, label=4)
    empty = obj_iou(np.zeros((3, 3), bool), np.zeros((3, 3), np.int32))
    assert math.isnan(empty.iou) and empty.label is None
    # An empty binary map: IoU 0 and precision defined as 0.
    assert obj_iou(np.zeros((10, 10), bool), mask) == (0.0, 0.0, 0.0, 3)


def test_obj_iou_equal_iou_goes_to_the_smallest_label():
    mask = np.array([[1, 2]], dtype=np.int32)
    assert obj_iou(np.array([[True, True]]), mask).label == 1


def test_metric_validation_names_the_parameter():
    with pytest.raises(ValueError, match="binary: shape"):
        obj_iou(np.zeros((3, 3), bool), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="semantic_mask: expected an integer"):
        obj_iou(np.zeros((3, 3), bool), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="heatmap: contains NaN"):
        score_map(np.full((2, 2), np.nan), np.zeros((3, 3), np.int32))
    with pytest.raises(ValueError, match="heatmap: expected a non-empty 2-D"):
        score_map(np.zeros((2, 2, 3)), np.zeros((3, 3), np.int32))


def test_contrast_nan_without_foreground_or_background():
    heat = np.ones((2, 2))
    assert math.isnan(contrast(heat, np.zeros((2, 2), bool)))
    assert math.isnan(contrast(heat, np.ones((2, 2), bool)))


def test_inputs_are_not_mutated():
    mask = _square_mask()
    heat = np.linspace(-0.5, 1.5, 25).reshape(5, 5)
    heat_copy, mask_copy = heat.copy(), mask.copy()
    score_map(heat, mask, label=5)
    np.testing.assert_array_equal(heat, heat_copy)
    np.testing.assert_array_equal(mask, mask_copy)


# -------------------------------------------------------------------------------------- pointing games


def test_pointing_game_hit_miss_tie_empty_tolerance():
    obj = np.zeros((5, 5), dtype=bool)
    obj[0, 0] = True
    heat = np.zeros((5, 5))
    heat[0, 0] = 1.0
    assert pointing_game(heat, obj) == 1.0
    heat2 = np.zeros((5, 5))
    heat2[2, 2] = 1.0
    assert pointing_game(heat2, obj) == 0.0
    assert pointing_game(heat2, obj, tolerance=2.0) == 0.0  # distance sqrt(8) = 2.83
    assert pointing_game(heat2, obj, tolerance=3.0) == 1.0
    tie = np.zeros((5, 5))
    tie[0, 0] = tie[4, 4] = 1.0  # two maxima, one inside
    assert pointing_game(tie, obj) == 1.0
    assert math.isnan(pointing_game(heat, np.zeros((5, 5), bool)))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(heat, obj, tolerance=-1)


def test_energy_pointing_mask_and_bbox():
    obj = np.zeros((4, 4), dtype=bool)
    obj[0, 0] = obj[1, 1] = True  # mask 2 px, bbox = [0:2, 0:2] 4 px
    heat = np.zeros((4, 4))
    heat[0, 1] = 1.0  # inside the box, outside the mask
    heat[0, 0] = 1.0
    heat[3, 3] = 2.0
    heat[3, 0] = -5.0  # negative values carry no energy
    assert energy_pointing_game(heat, obj, region="mask") == pytest.approx(1 / 4)
    assert energy_pointing_game(heat, obj, region="bbox") == pytest.approx(2 / 4)
    assert math.isnan(energy_pointing_game(np.zeros((4, 4)), obj))
    assert math.isnan(energy_pointing_game(heat, np.zeros((4, 4), bool)))
    with pytest.raises(ValueError, match="region"):
        energy_pointing_game(heat, obj, region="disc")


def test_score_map_with_label_points_at_that_object():
    mask = _square_mask()
    heat = np.zeros((10, 10))
    heat[7:9, 7:9] = 1.0
    assert score_map(heat, mask, label=3)["pointing_hit"] == 0.0
    assert score_map(heat, mask, label=5)["pointing_hit"] == 1.0
    assert score_map(heat, mask)["label"] == 5


# ---------------------------------------------------------------------------------------- TAM protocol


def test_func_iou_hand_case():
    heat = np.array([[0.0, 0.1], [0.5, 1.0]])  # uint8: 0, 25, 127, 255
    assert func_iou(heat, 100.0) == 0.5
    assert func_iou(heat, 25.0) == 0.25  # strictly below
    assert f1_iou(0.5, 0.5) == pytest.approx(0.5)
    assert f1_iou(0.2, 0.8) == pytest.approx(2 * 0.2 * 0.8 / 1.0)


def test_tam_word_scores_by_hand():
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2, :2] = 1
    on_object = (mask == 1).astype(float)  # Otsu threshold 0 on {0, 255}: binary = object, IoU 1
    off = np.zeros((4, 4))
    off[3, 3] = 1.0
    function_map = np.full((4, 4), 0.0)
    function_map[0, 0] = 1.0  # uint8 255 at one pixel of 16
    words = [("function", None), ("object", 1), ("object", 1), ("other", None), ("object", 7), ("function", None)]
    maps = [function_map, off, on_object, off, off, np.full((4, 4), 1.0)]
    out = tam_word_scores(maps, words, mask)
    objects = [e for e in out if e["kind"] == "object"]
    # Words 1 and 2 are consecutive with label 1: merged, keeping the best IoU (word 2's, 1.0); label 7 is
    # not in the image: no Obj-IoU entry (TAM's `if gt.sum() != 0`).
    assert [(e["index"], e["label"], e["value"]) for e in objects] == [(1, 1, 1.0)]
    # fg threshold = mean of the 3 noun thresholds, all 0 -> Func-IoU = share of pixels < 0 = 0.
    funcs = [e for e in out if e["kind"] == "function"]
    assert [(e["index"], e["value"]) for e in funcs] == [(0, 0.0), (5, 0.0)]
    assert tam_word_scores([off], [("function", None)], mask) == []
    with pytest.raises(ValueError, match="word_classes: 1 entries for 2 heatmaps"):
        tam_word_scores([off, off], [("function", None)], mask)


def test_resize_bilinear_uint8_hand_worked_like_opencv_fixed_point():
    # [0, 255] -> 4 columns. x = (dx + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25: the outer two clamp to the
    # edge pixel; weights (1 - f, f) * 2048 = (1536, 512), (512, 1536). Row sums 255 * 512 = 130560 and
    # 255 * 1536 = 391680; ((S >> 4) * 2048 >> 16 + 2) >> 2 = (255 + 2) >> 2 = 64 and (765 + 2) >> 2 = 191.
    out = resize_bilinear_uint8(np.array([[0, 255]], np.uint8), (1, 4))
    np.testing.assert_array_equal(out, [[0, 64, 191, 255]])
    # The float route (resize, then uint8(255 * h)) truncates 63.75 to 63: one level apart.
    np.testing.assert_array_equal(to_uint8(resize_bilinear(np.array([[0.0, 1.0]]), (1, 4))), [[0, 63, 191, 255]])
    # Halving both sides is OpenCV's fast area average: (0 + 1 + 2 + 4 + 2) >> 2 = 2.
    np.testing.assert_array_equal(resize_bilinear_uint8(np.array([[0, 1], [2, 4]], np.uint8), (1, 1)), [[2]])
    with pytest.raises(ValueError, match="uint8"):
        resize_bilinear_uint8(np.zeros((2, 2)), (4, 4))


def test_resize_bilinear_uint8_matches_opencv_when_installed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    for h, w, big_h, big_w in [(24, 24, 480, 640), (5, 7, 40, 40), (13, 38, 72, 5), (27, 27, 427, 640), (8, 6, 4, 3)]:
        img = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
        np.testing.assert_array_equal(resize_bilinear_uint8(img, (big_h, big_w)), cv2.resize(img, (big_w, big_h)))


def test_tam_resize_moves_the_otsu_threshold_by_one_level():
    heat = np.array([[0.0, 1.0]])
    # uint8 route: [0, 64, 191, 255] -> Otsu splits {0, 64} | {191, 255} at the first best t, 64; float: 63.
    assert tam_binarize(heat, (1, 4))[1] == 64
    assert tam_binarize(heat, (1, 4), tam_resize="float")[1] == 63
    mask = np.array([[1, 1, 0, 0]], np.int32)
    func_map = np.full((1, 1), 63 / 255)  # uint8 63: below 64, not below 63
    words = [("object", 1), ("function", None)]
    assert tam_word_scores([heat, func_map], words, mask)[1]["value"] == 1.0
    assert tam_word_scores([heat, func_map], words, mask, tam_resize="float")[1]["value"] == 0.0
    with pytest.raises(ValueError, match="tam_resize"):
        tam_binarize(heat, (1, 4), tam_resize="nearest")


def test_tam_absent_category_skipped_in_obj_iou_but_its_threshold_kept():
    # Hand-worked TAM eval.py on one 1x4 sample (maps at the mask's size, so the resize is the identity):
    # "dog" (label 1, present): uint8 [255, 255, 0, 0], Otsu t = 0 (first of the tied best splits), IoU 1.
    # "cat" (label 5, absent): uint8 [0, 102, 204, 255]; between-class variances 6557 (t=0), 7966 (t=102),
    #   4389 (t=204) -> t = 102; no IoU (gt.sum() == 0) but the threshold counts: fg = (0 + 102) / 2 = 51.
    # "the": uint8 [0, 25, 76, 127] -> Func-IoU = mean(v < 51) = 2 / 4.
    mask = np.array([[1, 1, 0, 0]], np.int32)
    dog, cat, the = np.array([[1.0, 1.0, 0, 0]]), np.array([[0, 0.4, 0.8, 1.0]]), np.array([[0, 0.1, 0.3, 0.5]])
    out = tam_word_scores([the, dog, cat], [("function", None), ("object", 1), ("object", 5)], mask)
    assert [(e["index"], e["metric"], e["value"]) for e in out] == [(0, "func_iou", 0.5), (1, "tam_obj_iou", 1.0)]
    assert out[1]["otsu_threshold"] == 0.0
    # Dataset F1-IoU of this sample: Obj 1.0, Func 0.5 -> 2 * 0.5 / 1.5 (with an IoU-0 entry it was 0.5).
    assert f1_iou(1.0, 0.5) == pytest.approx(2 / 3)
    # Only absent nouns: no Obj-IoU, yet a threshold, so function words are scored (fg = 102: 3 of 4 below).
    only_absent = tam_word_scores([cat, the], [("object", 5), ("function", None)], mask)
    assert [(e["metric"], e["value"]) for e in only_absent] == [("func_iou", 0.75)]


def test_tam_merge_joins_only_the_consecutive_words_themselves():
    # Departure (README): TAM merges by consecutive labels alone, so two consecutive absent nouns of one
    # category would merge the two IoU entries before them. Here "dog" and "grass" stay two entries.
    mask = np.array([[1, 1, 2, 2]], np.int32)
    dog, grass = np.array([[1.0, 1.0, 0, 0]]), np.array([[0, 0, 1.0, 1.0]])
    absent = np.array([[0, 0.4, 0.8, 1.0]])
    words = [("object", 1), ("object", 2), ("object", 9), ("object", 9)]
    out = tam_word_scores([dog, grass, absent, absent], words, mask)
    assert [(e["index"], e["label"], e["value"]) for e in out] == [(0, 1, 1.0), (1, 2, 1.0)]


def test_tam_func_iou_uses_the_mean_noun_threshold():
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:, :2] = 2
    ramp = np.tile(np.array([0.0, 0.2, 0.6, 1.0]), (4, 1))  # uint8 0, 51, 153, 255 -> Otsu threshold 51
    _, t = binarize_otsu(ramp, mask.shape)
    func_map = np.tile(np.array([0.0, 0.1, 0.3, 0.9]), (4, 1))  # uint8 0, 25, 76, 229
    out = tam_word_scores([ramp, func_map], [("object", 2), ("function", None)], mask)
    assert out[1]["value"] == func_iou(func_map, float(t))
    assert out[1]["value"] == pytest.approx(np.mean(np.array([0, 25, 76, 229]) < t))


# ------------------------------------------------------------------------------------------- aggregate


def _rows():
    rows = []
    rows += long_rows({"obj_iou": 0.2, "contrast": 2.0, "concentration": 0.4, "f3": 0.9, "pointing_hit": 1.0},
                      sample_id="a", target=1, word="dog", method="dcam", step=0, layer=10)
    rows += long_rows({"obj_iou": 0.4, "contrast": 4.0, "concentration": 0.6, "f3": 0.9, "pointing_hit": float("nan")},
                      sample_id="b", target=1, word="cat", method="dcam", step=0, layer=10)
    rows += long_rows({"obj_iou": 0.1, "contrast": 1.0, "concentration": 0.1, "pointing_hit": 0.0},
                      sample_id="a", target=1, word="dog", method="gradcam", step=0, layer=10)
    rows += long_rows({"tam_obj_iou": 0.5}, sample_id="a", target=1, word="dog", method="dcam", step=0, layer=10)
    rows += long_rows({"tam_obj_iou": 0.3}, sample_id="b", target=1, word="cat", method="dcam", step=0, layer=10)
    rows += long_rows({"tam_obj_iou": 0.1}, sample_id="b", target=2, word="dogs", method="dcam", step=0, layer=10)
    rows += long_rows({"func_iou": 0.9}, sample_id="a", target=0, word="the", method="dcam", step=0, layer=10)
    return frame(rows)


def test_summary_is_f3_of_means_not_mean_of_f3():
    summary = summarise(_rows()).set_index("method")
    d = summary.loc["dcam"]
    assert d["obj_iou"] == pytest.approx(0.3) and d["contrast"] == pytest.approx(3.0)
    # 3 / (1/0.3 + 20/3 + 1/0.5) = 3 / 12 = 0.25, while the per-map f3 rows (0.9) are ignored.
    assert d["f3"] == pytest.approx(0.25)
    # Pooled word means: Obj = (0.5 + 0.3 + 0.1) / 3 = 0.3, Func = 0.9 -> F1 = 2*.27/1.2 = 0.45.
    assert d["tam_obj_iou"] == pytest.approx(0.3)
    assert d["f1_iou"] == pytest.approx(0.45)
    assert d["pointing_accuracy"] == 1.0  # the NaN (empty object) is left out
    assert d["n_samples"] == 2 and d["n_maps"] == 4
    g = summary.loc["gradcam"]
    assert g["pointing_accuracy"] == 0.0 and math.isnan(g["f1_iou"])


def test_summary_prefixed_families():
    rows = long_rows({"response_obj_iou": 0.3, "response_contrast": 3.0, "response_concentration": 0.5,
                      "response_f3": 0.7, "pointing_hit_word": 0.0, "obj_iou_word": 0.2},
                     sample_id="a", target=-1, word="", method="m", step=0, layer=10)
    summary = summarise(frame(rows)).iloc[0]
    assert summary["response_f3"] == pytest.approx(0.25)  # recomputed, the per-map 0.7 is ignored
    assert summary["pointing_accuracy_word"] == 0.0 and summary["obj_iou_word"] == pytest.approx(0.2)
    assert "f3_word" not in summary.index and "pointing_hit_word" not in summary.index


def test_summary_by_layer_and_validation():
    df = _rows()
    df.loc[df["sample_id"] == "b", "layer"] = 20
    by_layer = summarise(df, by=("method", "layer"))
    assert list(by_layer[["method", "layer"]].itertuples(index=False, name=None)) == [
        ("dcam", 10), ("dcam", 20), ("gradcam", 10)
    ]
    with pytest.raises(ValueError, match="by: unknown column"):
        summarise(df, by=("model",))
    with pytest.raises(ValueError, match="df: missing column"):
        summarise(df.drop(columns="layer"))


def test_write_table_parquet_and_csv(tmp_path):
    df = _rows()
    paths = write_table(df, tmp_path / "scores")
    back = pd.read_parquet(paths["parquet"])
    pd.testing.assert_frame_equal(back, df)
    assert pd.read_csv(paths["csv"]).shape == df.shape


# ------------------------------------------------------------------------------------------------- CLI


def _run_cli(args, capsys):
    from flows.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _write_case(tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4, :4] = 3
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[:2, :2] = 1.0
    np.save(tmp_path / "h.npy", heat)
    Image.fromarray(mask).save(tmp_path / "m.png")
    return tmp_path / "h.npy", tmp_path / "m.png"


def test_cli_score_map_json(tmp_path, capsys):
    h, m = _write_case(tmp_path)
    code, out, _ = _run_cli(["score-map", "--heatmap", str(h), "--mask", str(m), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    expected = score_map(np.load(h), np.asarray(Image.open(m)).astype(np.int32))
    assert result["obj_iou"] == pytest.approx(expected["obj_iou"])
    assert result["label"] == 3 and result["pointing_hit"] == 1.0
    code, out, _ = _run_cli(["score-map", "--heatmap", str(h), "--mask", str(m), "--label", "3"], capsys)
    assert code == 0 and "obj_iou" in out and "pointing_hit" in out


@pytest.mark.parametrize("case, message", [
    ("missing-heatmap", "--heatmap"),
    ("missing-mask", "--mask"),
    ("3d-heatmap", "2-D"),
    ("bad-label", "label 9 is not present"),
    ("rgb-mask", "single-channel"),
])
def test_cli_score_map_errors_are_one_line(tmp_path, capsys, case, message):
    h, m = _write_case(tmp_path)
    args = ["score-map", "--heatmap", str(h), "--mask", str(m)]
    if case == "missing-heatmap":
        args[2] = str(tmp_path / "nope.npy")
    elif case == "missing-mask":
        args[4] = str(tmp_path / "nope.png")
    elif case == "3d-heatmap":
        np.save(h, np.zeros((2, 2, 2)))
    elif case == "bad-label":
        args += ["--label", "9"]
    elif case == "rgb-mask":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(m)
    code, out, err = _run_cli(args, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcam: error:") and message in lines[0], err


def test_summary_intervals_resample_samples_and_recompute_composites():
    from stages.score.aggregate import summary_intervals

    rows = []
    for sid in ("a", "b", "c"):  # identical samples: every resample gives the same figures
        for target in (0, 1):
            rows += long_rows({"obj_iou": 0.3 if target else 0.1, "contrast": 4.0, "concentration": 0.5,
                               "pointing_hit": float(target)}, sample_id=sid, target=target, word="w", method="m",
                              step=0, layer=1)
    ci = summary_intervals(frame(rows), ["obj_iou", "f3", "pointing_accuracy", "f1_iou"])
    assert set(ci) == {"obj_iou", "f3", "pointing_accuracy"}  # no TAM rows: no F1-IoU interval
    assert ci["obj_iou"] == pytest.approx((0.2, 0.2))
    assert ci["pointing_accuracy"] == pytest.approx((0.5, 0.5))
    assert ci["f3"] == pytest.approx((float(f3(0.2, 4.0, 0.5)),) * 2)  # F3 of the means, not a mean of F3
    # Two samples that differ: the interval spans their means' range and no more.
    rows = long_rows({"obj_iou": 0.0}, sample_id="a", target=0, word="w", method="m", step=0, layer=1)
    rows += long_rows({"obj_iou": 1.0}, sample_id="b", target=0, word="w", method="m", step=0, layer=1)
    lo, hi = summary_intervals(frame(rows), ["obj_iou"])["obj_iou"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
