"""The page's metric tables as data for the template: the plausibility table (each preset's ``summary.csv``)
and the faithfulness table (the faithfulness stage's ``summary.json``), with their column definitions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from stages.report.data import CAPTION_METRICS, PresetResults

#: Columns of the plausibility table, from each preset's ``summary.csv``, where present:
#: name -> (label, direction, definition). Direction "↑" higher is better, "↓" lower is better, "" a count.
SUMMARY_INFO = {
    "n_samples": ("samples", "", "Samples (images) with at least one scored map."),
    "obj_iou": ("Obj-IoU", "↑", "IoU of the Otsu-binarised map with the best-matching object (the paper's "
                "protocol), mean over maps."),
    "contrast": ("Contrast", "↑", "Mean of the map on all objects / mean on the background (a ratio, ≥ 0); "
                 "F3 counts min(Contrast / 20, 1)."),
    "concentration": ("Concentration", "↑", "Share of the map's total mass that lies on the objects, in [0, 1]."),
    "f3": ("F3", "↑", "Harmonic mean of mean Obj-IoU, min(mean Contrast / 20, 1) and mean Concentration "
           "(from the dataset means, as in the paper)."),
    "pointing_accuracy": ("Pointing acc.", "↑", "Share of maps whose maximum (the cross on an overlay) lies on "
                          "an object (pointing game, no tolerance)."),
    "obj_iou_word": ("Obj-IoU (word)", "↑", "Obj-IoU against the object the word names, not the best one."),
    "f1_iou": ("F1-IoU (TAM)", "↑", "TAM's protocol: harmonic mean of Obj-IoU per matched noun and Func-IoU "
               "(share of a function word's map below the nouns' mean Otsu threshold)."),
}
SUMMARY_COLUMNS = tuple(SUMMARY_INFO)
#: Columns of the faithfulness table (``summary.json`` of the faithfulness stage): name -> (label,
#: direction, definition).
FAITHFULNESS_INFO = {
    "deletion_auc": ("Deletion AUC", "↓", "Area under the target score as the most salient image regions are "
                     "removed first; a faithful map makes the score fall fast."),
    "random_deletion_auc": ("Deletion AUC, random", "floor", "The same with regions removed in random order: "
                            "the floor a map should beat (stay below)."),
    "insertion_auc": ("Insertion AUC", "↑", "Area under the target score as the most salient regions are "
                      "revealed first on the baseline image; a faithful map makes it rise fast."),
    "random_insertion_auc": ("Insertion AUC, random", "floor", "The same in random order: the floor a map "
                             "should beat (stay above)."),
    "occlusion_spearman": ("Occlusion agreement", "↑", "Spearman ρ between the map and the occlusion map "
                           "(the score drop when each region is hidden)."),
    "target_sensitivity": ("Target sensitivity", "↓", "Mean pairwise Spearman ρ between the word maps of one "
                           "response; low means the map depends on the word (target-sensitive)."),
    "norm_spearman": ("Norm correlation", "↓", "Spearman ρ between the map and the image tokens' activation "
                      "norm; high means the map may only follow activation magnitude."),
}
_ARROWS = {"↑": " ↑", "↓": " ↓", "floor": " (floor)"}
_HINTS = {"↑": "higher is better", "↓": "lower is better", "floor": "random-order floor"}
_SENTENCES = {"↑": " Higher is better.", "↓": " Lower is better.", "floor": ""}


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``–`` for a missing value or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def value_cell(value: float | None, interval: tuple[float, float] | None, *, best: bool = False,
               digits: int = 3) -> dict[str, Any]:
    """A sortable cell: the value, its sort key (empty when missing) and its 95% interval, if any."""
    missing = value is None or math.isnan(value)
    ci = None
    if interval is not None and not any(math.isnan(x) for x in interval):
        ci = (fmt(interval[0], digits), fmt(interval[1], digits))
    return {"text": fmt(value, digits), "sort": "" if missing else repr(float(value)), "ci": ci, "best": best}


def head_cell(label: str, direction: str, definition: str) -> dict[str, str]:
    """A column header: label, direction arrow and a tooltip with the definition."""
    hint = _HINTS.get(direction, "")
    return {"label": label, "arrow": _ARROWS.get(direction, ""),
            "title": f"{definition} ({hint})" if hint else definition}


def definitions(info: dict[str, tuple[str, str, str]], names: Sequence[str]) -> list[tuple[str, str]]:
    """``(label, definition)`` of each column shown."""
    return [(info[n][0], info[n][2] + _SENTENCES.get(info[n][1], "")) for n in names]


def name_cell(p: PresetResults, flags: Sequence[str] = ()) -> dict[str, Any]:
    """The method cell: name, failed sanity checks and the chain that made the maps."""
    chain = f"{' → '.join(p.chain)} [{p.profile}]" if p.chain or p.profile else None
    return {"name": p.name, "flags": "; ".join(flags), "chain": chain}


def metrics_table(presets: list[PresetResults]) -> dict[str, Any] | None:
    """The plausibility table (None when no preset is scored); the best value of each "↑" column marked."""
    cols = [c for c in SUMMARY_COLUMNS if any(c in p.summary for p in presets)]
    if not cols:
        return None
    best = {}
    for c in cols:
        vals = [p.summary[c] for p in presets if c in p.summary and not math.isnan(p.summary[c])]
        if SUMMARY_INFO[c][1] == "↑" and len(vals) > 1 and max(vals) > min(vals):
            best[c] = max(vals)
    rows = []
    for p in presets:
        cells = []
        for c in cols:
            v = p.summary.get(c)
            is_best = v is not None and c in best and math.isclose(v, best[c], rel_tol=0, abs_tol=1e-12)
            cells.append(value_cell(v, p.intervals.get(c), best=is_best, digits=0 if c == "n_samples" else 3))
        rows.append({"name": name_cell(p), "cells": cells})
    return {"head": [head_cell(*SUMMARY_INFO[c]) for c in cols], "rows": rows,
            "definitions": definitions(SUMMARY_INFO, cols)}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) is not None for v in value):
        return (float(value[0]), float(value[1]))
    return None


def faithfulness_table(summary: dict[str, Any], presets: list[PresetResults]) -> dict[str, Any]:
    """The faithfulness table of a summary read by :func:`stages.report.data.read_faithfulness`."""
    records = summary["methods"]
    cols = [c for c in FAITHFULNESS_INFO if any(_number(r.get(c)) is not None for r in records)]
    by_name = {p.name: p for p in presets}
    rows = []
    for r in records:
        flags = [str(f) for f in (r.get("flags") or [])]
        p = by_name.get(r["method"]) or PresetResults(r["method"], [], "", None, None)
        rand = r.get("randomisation")
        rand_text = (", ".join(f"{k}: {fmt(_number(v), 2)}" for k, v in rand.items())
                     if isinstance(rand, dict) and rand else "–")
        rows.append({"name": name_cell(p, flags), "maps": value_cell(_number(r.get("n_maps")), None, digits=0),
                     "cells": [value_cell(_number(r.get(c)), _interval(r.get(f"{c}_ci"))) for c in cols],
                     "randomisation": rand_text})
    return {"head": [head_cell(*FAITHFULNESS_INFO[c]) for c in cols], "rows": rows,
            "definitions": definitions(FAITHFULNESS_INFO, cols), "baseline": summary.get("baseline", "–"),
            "flagged": sum(1 for r in records if r.get("flags"))}


def caption(p: PresetResults, sid: str, target: int, layer: int, kind: str) -> tuple[str | None, str | None, str]:
    """A thumbnail's Obj-IoU text, pointing verdict (``hit``/``miss``) and the plain-text verdict for its alt text."""
    iou_name, hit_name = CAPTION_METRICS.get(kind, CAPTION_METRICS["contrastive"])
    iou = p.captions.get((sid, target, layer, iou_name))
    hit = p.captions.get((sid, target, layer, hit_name))
    iou_text = f"IoU {fmt(iou, 2)}" if iou is not None else None
    verdict = ("hit" if hit >= 0.5 else "miss") if hit is not None and not math.isnan(hit) else None
    words = [w for w in (iou_text, verdict and f"pointing {verdict}") if w]
    return iou_text, verdict, ", ".join(words)
