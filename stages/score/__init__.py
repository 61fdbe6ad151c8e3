"""Scoring stage: localisation metrics of per-word maps (:mod:`.metrics`) and their aggregation (:mod:`.aggregate`)."""

from stages.score.metrics import (
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

__all__ = [
    "binarize_otsu",
    "concentration",
    "contrast",
    "contrast_score",
    "energy_pointing_game",
    "f1_iou",
    "f3",
    "func_iou",
    "obj_iou",
    "otsu_threshold_uint8",
    "pointing_game",
    "resize_bilinear",
    "score_map",
    "tam_word_scores",
]
