"""The report's figures: the ablation chart, the overlays of each map on its image, the colour bar, and the
grid of overlays of one sample (written as PNG files, inlined as thumbnails)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.report.data import PresetResults, SampleView
from stages.report.tables import caption

#: The paper's ablation rows (``method.md`` §1.7), in its order, and their labels.
ABLATION_ORDER = ("baseline", "akd", "dacg", "cba", "sicd", "full")
ABLATION_LABELS = {"baseline": "Baseline", "akd": "+AKD", "dacg": "+DACG", "cba": "+CBA", "sicd": "+SICD",
                   "full": "Full"}
#: Colour maps of the overlays: option -> (matplotlib name, outline colour absent from it, what the map shows).
CMAPS = {
    "jet": ("jet", (255, 255, 255), "ReLU, ÷ max", (0.0, 1.0)),
    "viridis": ("viridis", (255, 0, 255), "ReLU, ÷ max", (0.0, 1.0)),
    "diverging": ("RdBu_r", (0, 230, 0), "raw, ÷ max |map|", (-1.0, 1.0)),
}
_KIND_ORDER = {"word": 0, "contrastive": 1, "response": 2}


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI (the page opens offline)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def safe_name(word: str, *, limit: int = 40) -> str:
    """A file-name-safe form of a word: letters, digits, ``-`` and ``_``; at most ``limit`` characters."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", str(word)).strip("-")[:limit].strip("-")
    return name or "word"


def overlay_name(sample_id: str, target: int, word: str, kind: str, layer: int | None = None) -> str:
    """``{sample_id}_{target:02d}_{word}.png``; the response/contrastive targets use their kind as the word."""
    stem = f"{sample_id}_{int(target):02d}_{safe_name(word if kind == 'word' else kind)}"
    return f"{stem}_L{layer}.png" if layer is not None else f"{stem}.png"


def ablation_png(presets: list[PresetResults]) -> bytes | None:
    """Bar chart of F3 and Obj-IoU of the ``ablation-*`` presets in the paper's order; None without any.

    The axis spans the metrics' whole range, 0 to 1, so a difference looks as large as it is; the
    error bars are the 95% bootstrap intervals over samples.
    """
    fig = ablation_figure(presets)
    if fig is None:
        return None
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def ablation_figure(presets: list[PresetResults]):
    """The matplotlib Figure behind :func:`ablation_png` (None without scored ablation-* presets)."""
    by_name = {p.name: p for p in presets}
    rows = [(ABLATION_LABELS[k], by_name[f"ablation-{k}"]) for k in ABLATION_ORDER
            if f"ablation-{k}" in by_name and "f3" in by_name[f"ablation-{k}"].summary]
    if not rows:
        return None
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(1.1 * len(rows) + 2.4, 3.4), dpi=150)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for off, name, label, colour in ((-0.2, "f3", "F3", "#3b6fb6"), (0.2, "obj_iou", "Obj-IoU", "#e0883a")):
        vals = np.array([r[1].summary.get(name, np.nan) for r in rows])
        ci = np.array([r[1].intervals.get(name, (np.nan, np.nan)) for r in rows], dtype=np.float64)
        err = np.where(np.isnan(ci.T), 0.0, np.abs(ci.T - vals))  # (2, rows): below and above each bar
        bars = ax.bar(x + off, vals, 0.4, yerr=err, capsize=2, label=label, color=colour, ecolor="#333")
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(x, [r[0] for r in rows])
    ax.set_ylabel("score (0 = none, 1 = perfect)")
    ax.set_ylim(0, 1)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", color="#ddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title("Ablation (ablation-* presets), 95% bootstrap intervals", fontsize=9)
    ax.legend(fontsize=8, frameon=False, ncols=2, loc="upper right")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


@dataclass
class Canvas:
    """One size at which overlays are drawn: the base image, the instances' outlines at that size, the cross size."""

    image: np.ndarray
    outlines: tuple[np.ndarray, np.ndarray] | None  # stages.report.overlay.instance_outlines at this size
    arm: int

    def point(self, row: int, col: int, source_shape: tuple[int, int]) -> tuple[int, int]:
        """A pixel of the source image, mapped to the centre of its footprint here."""
        h, w = self.image.shape[:2]
        return (min(h - 1, int((row + 0.5) * h / source_shape[0])), min(w - 1, int((col + 0.5) * w / source_shape[1])))


def canvases(view: SampleView, thumb: int) -> tuple[Canvas, Canvas]:
    """The publication-size canvas (integer enlargement) and the thumbnail canvas of a sample."""
    from stages.report.overlay import fit_image, fit_mask, instance_outlines, publication_scale, upscale_nearest

    scale = publication_scale(view.image.shape[:2])
    big = upscale_nearest(view.image, scale)
    small = fit_image(view.image, thumb)
    big_lines = small_lines = None
    if view.instances is not None and len(view.instances):
        big_lines = instance_outlines(np.stack([upscale_nearest(m, scale) for m in view.instances]),
                                      thickness=max(2, scale))
        small_lines = instance_outlines(np.stack([fit_mask(m, small.shape[:2]) > 0 for m in view.instances]),
                                        thickness=2 if thumb >= 96 else 1)
    return Canvas(big, big_lines, max(6, 2 * scale)), Canvas(small, small_lines, max(3, thumb // 24))


def display_map(m: np.ndarray, cmap: str) -> np.ndarray:
    """The map as the overlay colours it: ReLU ÷ max in [0, 1], or for ``diverging`` raw ÷ max |m| moved to [0, 1]."""
    from stages.score.stage import unit_map

    if cmap != "diverging":
        return unit_map(m)
    raw = np.asarray(m, dtype=np.float64)
    scale = float(np.abs(raw).max()) if raw.size else 0.0
    return (raw / scale + 1.0) / 2.0 if scale > 0 else np.full(raw.shape, 0.5)


def draw(canvas: Canvas, shown: np.ndarray, solid: list[bool], peak_rc: tuple[int, int], source_shape, cmap: str) -> np.ndarray:
    """One overlay: the map over the canvas, the instances outlined (``solid`` per instance), the peak crossed."""
    from stages.report.overlay import contours, mark_peak, overlay

    name, colour = CMAPS[cmap][0], CMAPS[cmap][1]
    out = overlay(canvas.image, shown, cmap=name)
    if canvas.outlines is not None:
        out = contours(out, canvas.outlines, solid=solid, color=colour)
    return mark_peak(out, *canvas.point(*peak_rc, source_shape), color=colour, arm=canvas.arm)


def colour_bar(cmap: str) -> dict[str, Any]:
    """The colour bar of ``cmap`` for the template: a CSS gradient of the colour map, its range and meaning."""
    import matplotlib

    name, colour, what, (lo, hi) = CMAPS[cmap]
    stops = ", ".join(f"rgb{tuple(int(c) for c in matplotlib.colormaps[name](t, bytes=True)[:3])} {100 * t:.0f}%"
                      for t in np.linspace(0, 1, 11))
    return {"name": name, "lo": f"{lo:g}", "hi": f"{hi:g}", "what": what, "stops": stops, "outline": f"rgb{colour}"}


def _row_target(view: SampleView, kind: str, word: str) -> int | None:
    """The object label a row is scored against (None: every object, the best-matching one)."""
    from stages.ingest.words import classify_word

    if kind != "word" or not view.categories:
        return None
    what, label = classify_word(word, view.categories, phrases=view.phrases)
    return label if what == "object" else -1


def sample_grid(view: SampleView, presets: list[PresetResults], out: Path, thumb: int, colors: int,
                cmap: str) -> dict[str, Any]:
    """Draw one sample: its image with the ground truth (``out/images``), every map's overlay
    (``out/overlays/{preset}``), and return the section's data for the template (thumbnails inlined)."""
    from stages.report.overlay import encode_png, fit_image, fit_mask, label_colors, outline, peak, save_png
    from stages.score.metrics import resize_bilinear
    from stages.score.stage import unit_map

    sid = view.sample_id
    section: dict[str, Any] = {"sid": sid, "problem": view.problem, "notices": view.notices, "image": None,
                               "text": "", "references": [], "legend": [], "rows": None}
    if view.image is None:
        section["problem"] = view.problem or "no image"
        return section
    big, small = canvases(view, thumb)
    legend = []
    gt_big, gt_small = big.image, fit_image(view.image, 2 * thumb)
    if view.mask is not None:
        cols = label_colors([v for v in np.unique(view.mask) if v != 0])
        scale = big.image.shape[0] // view.image.shape[0]
        gt_big = outline(big.image, fit_mask(view.mask, big.image.shape[:2]), colors=cols, thickness=max(1, scale))
        gt_small = outline(gt_small, fit_mask(view.mask, gt_small.shape[:2]), colors=cols)
        legend = [(f"rgb{c}", view.names.get(lab, str(lab))) for lab, c in cols.items()]
    save_png(gt_big, out / "images" / f"{sid}.png")
    section.update(image={"width": gt_small.shape[1], "height": gt_small.shape[0],
                          "src": data_uri(encode_png(gt_small, colors=colors))},
                   text=view.text, references=view.references[:2], legend=legend)

    # (kind order, target, layer) -> {preset: (index record, map)}
    cells: dict[tuple[int, int, int], dict[str, tuple[dict, np.ndarray]]] = {}
    for p in presets:
        rows = p.maps.index[p.maps.index["sample_id"] == sid]
        for _, sub in rows.groupby("array"):
            for rec, m in zip(sub.to_dict(orient="records"), p.maps.maps_for(sub)):
                key = (_KIND_ORDER.get(rec["target_kind"], 3), int(rec["target"]), int(rec["layer"]))
                cells.setdefault(key, {})[p.name] = (rec, m)
    if not cells:
        return section
    layers_per_target: dict[int, set[int]] = {}
    for _, target, layer in cells:
        layers_per_target.setdefault(target, set()).add(layer)
    source_shape = view.image.shape[:2]
    rows_out = []
    for key in sorted(cells):
        _, target, layer = key
        several = len(layers_per_target[target]) > 1
        first = next(iter(cells[key].values()))[0]
        kind = first["target_kind"]
        word = str(first["word"])
        step = f"step {first['step']}" if int(first["step"]) >= 0 else "steps mean"
        scored_against = _row_target(view, kind, word)
        solid = [scored_against is None or lab == scored_against for lab in view.instance_labels]
        row_cells = []
        for p in presets:
            if p.name not in cells[key]:
                row_cells.append(None)
                continue
            rec, m = cells[key][p.name]
            shown = display_map(m, cmap)
            peak_rc = peak(resize_bilinear(unit_map(m), source_shape))  # the pointing game's point
            name = overlay_name(sid, target, rec["word"], kind, layer if several else None)
            save_png(draw(big, shown, solid, peak_rc, source_shape, cmap), out / "overlays" / p.name / name)
            thumb_png = encode_png(draw(small, shown, solid, peak_rc, source_shape, cmap), colors=colors)
            iou, verdict, words = caption(p, sid, target, layer, kind)
            what = f"'{word}' (word {target})" if kind == "word" else f"{kind} (target {target})"
            row_cells.append({"preset": p.name, "file": name, "iou": iou, "verdict": verdict,
                              "text": f"sample {sid}, {what}, {p.name}" + (f": {words}" if words else ""),
                              "width": small.image.shape[1], "height": small.image.shape[0],
                              "src": data_uri(thumb_png)})
        rows_out.append({"word": word if kind == "word" else None, "kind": kind,
                         "sub": f"#{target} · {step}" + (f" · L{layer}" if several else ""), "cells": row_cells})
    section["rows"] = rows_out
    return section
