"""The report stage: one self-contained HTML page (and publication PNGs) of an explain run.

``build_report(RUN)`` reads ``RUN/run.json`` (written by :func:`stages.explain.runner.explain_run`),
the final maps artifact and the scores artifact of every preset, the capture store (generated text,
image path), the dataset (ground-truth masks) and, when ``run.json`` names one, the faithfulness
results (``summary.json``), and writes::

    OUT/report.html                                   opens offline: inline CSS and script, images as data URIs
    OUT/ablation.png                                  F3 and Obj-IoU of the ablation-* presets (when scored)
    OUT/images/{sample_id}.png                        the image with ground-truth outlines
    OUT/overlays/{preset}/{sample_id}_{target:02d}_{word}.png   one map over its image (a thumbnail's link)
    OUT/manifest.json                                 kind "report": inputs with digests, per-sample status

Maps are shown as the scoring stage scores them, ReLU then division by the maximum
(:func:`stages.score.stage.unit_map`), with the ``jet`` or ``viridis`` colour map; or raw and signed,
divided by their largest magnitude, with a diverging map (``cmap="diverging"``, 0 is white). They are
upsampled bilinearly to the image (:func:`stages.report.overlay.overlay`). Every overlay carries the
ground-truth outline of each object instance in a colour the colour map does not use (solid: the object
the row is scored against; dashed: the other objects) and a cross at the map's maximum (the pointing
game's point), so every "hit" or "miss" can be checked by eye. Small images are enlarged by an integer
factor (nearest neighbour) for the PNG files, so a 96 px synthetic image gives 288 px figures. Every
path in the page is relative to it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from schemas.errors import DcamError
from schemas.manifest import (
    ARTIFACT_SCHEMA_VERSIONS,
    InputRef,
    SampleStatus,
    StageManifest,
    digest_files,
    read_manifest,
    write_manifest,
)

STAGE_VERSION = "2.0"
KIND = "report"
RUN_FILE = "run.json"
NOT_A_RUN = "not an explain run directory: run 'dcam explain STORE --score' first"

#: The paper's ablation rows (``method.md`` §1.7), in its order, and their labels.
ABLATION_ORDER = ("baseline", "akd", "dacg", "cba", "sicd", "full")
ABLATION_LABELS = {"baseline": "Baseline", "akd": "+AKD", "dacg": "+DACG", "cba": "+CBA", "sicd": "+SICD",
                   "full": "Full"}
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
#: The per-map metrics captioned under a thumbnail, per target kind: (Obj-IoU, pointing hit).
CAPTION_METRICS = {"word": ("obj_iou_word", "pointing_hit_word"), "contrastive": ("obj_iou", "pointing_hit"),
                   "response": ("response_obj_iou", "response_pointing_hit")}
#: Colour maps of the overlays: option -> (matplotlib name, outline colour absent from it, what the map shows).
CMAPS = {
    "jet": ("jet", (255, 255, 255), "ReLU, ÷ max", (0.0, 1.0)),
    "viridis": ("viridis", (255, 0, 255), "ReLU, ÷ max", (0.0, 1.0)),
    "diverging": ("RdBu_r", (0, 230, 0), "raw, ÷ max |map|", (-1.0, 1.0)),
}
#: Palette size of the inlined thumbnails: about 7 KB each at 128 px, no visible banding of the colour map.
THUMB_COLORS = 128
_KIND_ORDER = {"word": 0, "contrastive": 1, "response": 2}


@dataclass
class _Preset:
    """One preset of the run, opened."""

    name: str
    chain: list[str]
    profile: str
    maps: Any  # schemas.maps.MapSet, None when only its scores are read (the ablation chart)
    scores_path: Path | None
    summary: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    captions: dict[tuple[str, int, int, str], float] = field(default_factory=dict)


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/run.json`` as a dict; a :class:`DcamError` (:data:`NOT_A_RUN`) when there is none."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise DcamError(f"{run_dir}: {NOT_A_RUN}")
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DcamError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(run, dict) or not isinstance(run.get("presets"), dict):
        raise DcamError(f"{path} has no 'presets' mapping; {NOT_A_RUN}")
    return run


def _locate(run_dir: Path, recorded: str, marker: str) -> Path | None:
    """A directory ``run.json`` names, holding ``marker``: as recorded, else ``RUN/<stage>/<key>``.

    ``run.json`` records the paths it was given, which are relative to the directory ``dcam explain``
    ran in; the artifact root's own layout (``ROOT/<stage>/<key>``) finds them from anywhere.
    """
    p = Path(recorded)
    for candidate in (p, run_dir / p, run_dir.joinpath(*p.parts[-2:])):
        if (candidate / marker).is_file():
            return candidate
    return None


def _artifact_path(run_dir: Path, recorded: str | None) -> Path | None:
    if not recorded:
        return None
    found = _locate(run_dir, recorded, "manifest.json")
    if found is None:
        raise DcamError(f"artifact {recorded} named in {run_dir / RUN_FILE} is missing; rerun 'dcam explain'")
    return found


def _read_scores(preset: _Preset) -> None:
    """Fill a preset's summary, bootstrap intervals and thumbnail captions from its scores artifact."""
    import pandas as pd

    from stages.score.aggregate import summary_intervals

    read_manifest(preset.scores_path, "scores")
    summary = pd.read_csv(preset.scores_path / "summary.csv")
    if "method" in summary.columns and (summary["method"] == preset.name).any():
        summary = summary[summary["method"] == preset.name]
    if not len(summary):
        return
    first = summary.iloc[0]
    preset.summary = {k: float(v) for k, v in first.items()
                      if k != "method" and isinstance(v, (int, float, np.number)) and not pd.isna(v)}
    metrics = pd.read_parquet(preset.scores_path / "metrics.parquet")
    if "layer" in summary.columns:  # a layer sweep: the table shows the first layer's row, so do the intervals
        metrics = metrics[metrics["layer"] == first["layer"]]
    preset.intervals = summary_intervals(metrics, [c for c in SUMMARY_COLUMNS if c in preset.summary and c != "n_samples"])
    wanted = metrics[metrics["metric"].isin({m for pair in CAPTION_METRICS.values() for m in pair})]
    preset.captions = {(str(s), int(t), int(la), str(m)): float(v) for s, t, la, m, v in
                       wanted[["sample_id", "target", "layer", "metric", "value"]].itertuples(index=False)}


def _open_presets(run_dir: Path, run: dict[str, Any], names: Sequence[str], *, with_maps: bool) -> list[_Preset]:
    from schemas.maps import read_mapset

    out = []
    for name in names:
        entry = run["presets"][name]
        maps = read_mapset(_artifact_path(run_dir, entry.get("maps"))) if with_maps else None
        preset = _Preset(name, list(entry.get("chain", [])), str(entry.get("profile", "")), maps,
                         _artifact_path(run_dir, entry.get("scores")))
        if preset.scores_path is not None:
            _read_scores(preset)
        out.append(preset)
    return out


def _shown_names(run: dict[str, Any], methods: Sequence[str] | None) -> list[str]:
    names = list(run["presets"])
    if methods is None:
        return names
    unknown = [m for m in methods if m not in run["presets"]]
    if unknown:
        raise DcamError(f"unknown method(s) {', '.join(unknown)}: this run has {', '.join(names)}")
    return [n for n in names if n in set(methods)]


def _open_store(run: dict[str, Any]):
    from schemas.capture import CaptureStore

    try:
        return CaptureStore.open(run["store"]) if run.get("store") else None
    except DcamError:
        return None


def _open_dataset(run: dict[str, Any]) -> dict[str, Any]:
    from stages.ingest.loaders import load_dataset

    if not run.get("dataset"):
        return {}
    try:
        return {s.sample_id: s for s in load_dataset(run["dataset"]).samples}
    except (DcamError, OSError, ValueError):
        return {}


def safe_name(word: str, *, limit: int = 40) -> str:
    """A file-name-safe form of a word: letters, digits, ``-`` and ``_``; at most ``limit`` characters."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", str(word)).strip("-")[:limit].strip("-")
    return name or "word"


def overlay_name(sample_id: str, target: int, word: str, kind: str, layer: int | None = None) -> str:
    """``{sample_id}_{target:02d}_{word}.png``; the response/contrastive targets use their kind as the word."""
    stem = f"{sample_id}_{int(target):02d}_{safe_name(word if kind == 'word' else kind)}"
    return f"{stem}_L{layer}.png" if layer is not None else f"{stem}.png"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _breakable(name: str) -> str:
    """An escaped name that may wrap after ``-`` or ``_`` only, never inside a word."""
    return re.sub(r"([-_])", r"\1<wbr>", _esc(name))


def _relative(target: str | None, base: Path) -> str:
    """``target`` relative to ``base`` (a URL or a missing value unchanged)."""
    if not target:
        return "–"
    if "://" in str(target):
        return str(target)
    return os.path.relpath(Path(target).resolve(), base.resolve())


# ------------------------------------------------------------------ page parts


_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff;
line-height:1.4}
h1{font-size:1.5em;margin:0 0 .4em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:1.4em 0 .3em}
table{border-collapse:collapse}td,th{padding:3px 8px;font-size:.9em}
table.meta td{overflow-wrap:anywhere}table.meta td:first-child{color:#666;padding-right:16px;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
table.metrics th,table.metrics td{border:1px solid #ddd;text-align:right;vertical-align:top}
table.metrics td.name,table.metrics th.name{text-align:left;min-width:9em}
table.metrics td.best{font-weight:bold;background:#e3f3e3}
table.metrics th button{font:inherit;font-weight:bold;border:0;background:none;cursor:pointer;padding:0;
text-align:inherit;color:inherit}
table.metrics th[aria-sort=ascending] button::after{content:" ▲"}
table.metrics th[aria-sort=descending] button::after{content:" ▼"}
.ci{display:block;color:#666;font-size:.8em;white-space:nowrap}
.dir{color:#1a5fb4;font-weight:normal}
.chain{color:#777;font-size:.8em}
dl.defs{font-size:.85em;max-width:60em}dl.defs dt{font-weight:bold;float:left;clear:left;margin-right:.5em}
dl.defs dd{margin:0 0 .2em 0}
.badge{display:inline-block;background:#b22;color:#fff;border-radius:3px;padding:0 5px;font-size:.75em;
margin-left:4px}
.flags{color:#b22;font-size:.8em}
.gridwrap{overflow:auto;max-height:85vh;max-width:100%;border:1px solid #eee}
table.grid td,table.grid th{border:1px solid #eee;text-align:center;vertical-align:top;padding:2px}
table.grid thead th{position:sticky;top:0;background:#fff;z-index:2}
table.grid th.word{position:sticky;left:0;background:#fff;z-index:1;text-align:right;font-weight:normal;
min-width:5.5em;max-width:9em;overflow-wrap:break-word}
table.grid thead th.word{z-index:3}
table.grid th.method{font-size:.75em;min-width:6em;max-width:12em;word-break:normal;overflow-wrap:normal}
table.grid img{display:block;image-rendering:pixelated;max-width:none}
.cap{font-size:.72em;color:#444}.hit{color:#1a7f1a}.miss{color:#b22}
.sample{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.sample img{max-width:100%;height:auto}
.text{max-width:60em;min-width:0;flex:1 1 16em}.text p{margin:.3em 0;overflow-wrap:anywhere}
.legend span{display:inline-block;margin-right:10px;font-size:.85em}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.cbar{display:flex;align-items:center;gap:6px;font-size:.8em;margin:.4em 0;flex-wrap:wrap}
.cbar .ramp{width:180px;height:12px;border:1px solid #999}
.note{color:#666;font-size:.85em}.failed{color:#b22}
img.chart{max-width:100%;height:auto}
nav.contents a{margin-right:.4em;display:inline-block}
@media (max-width:600px){body{margin:10px}td,th{padding:2px 4px}}
"""

#: Sorting of the metric tables: a click on a header sorts by that column (numbers by value, missing last).
_SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    var button = th.querySelector('button');
    if (!button) return;
    button.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
        if (x === '' || y === '') return (x === '') - (y === '');
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _header(run: dict[str, Any], store, run_dir: Path, out: Path, n_samples: int, n_shown: int) -> str:
    cfg = store.config if store is not None else {}
    rows = [
        ("run", _relative(str(run_dir), out)),
        ("store", _relative(run.get("store"), out) + ("" if store is not None else " (not readable now)")),
        ("dataset", _relative(run.get("dataset"), out) if run.get("dataset") else "– (not scored)"),
        ("model", str(cfg.get("model", "–"))),
        ("mode", str(cfg.get("mode", "–"))),
        ("steps", str(cfg.get("steps", "–"))),
        ("policy", str(run.get("policy", "–"))),
        ("layers", ", ".join(map(str, run.get("layers") or cfg.get("layers") or [])) or "–"),
        ("samples", f"{n_shown} shown of {n_samples}"),
    ]
    cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return (f"<h1>Diffusion-CAM report</h1>\n<p class='note'>Paths are relative to this page.</p>\n"
            f"<table class='meta'>{cells}</table>\n")


def _value_cell(value: float | None, interval: tuple[float, float] | None, *, best: bool = False,
                digits: int = 3) -> str:
    """A sortable table cell: the value, its 95% interval below it."""
    missing = value is None or math.isnan(value)
    ci = ""
    if interval is not None and not any(math.isnan(x) for x in interval):
        ci = f"<span class='ci' title='95% bootstrap interval over samples'>[{_fmt(interval[0], digits)}, {_fmt(interval[1], digits)}]</span>"
    cls = " class='best'" if best else ""
    return f"<td{cls} data-v='{'' if missing else repr(float(value))}'>{_fmt(value, digits)}{ci}</td>"


def _head_cell(label: str, direction: str, definition: str) -> str:
    arrow = {"↑": " ↑", "↓": " ↓", "floor": " (floor)"}.get(direction, "")
    hint = {"↑": "higher is better", "↓": "lower is better", "floor": "random-order floor"}.get(direction, "")
    title = f"{definition} ({hint})" if hint else definition
    return (f"<th scope='col' title='{_esc(title)}'><button type='button'>{_esc(label)}"
            f"<span class='dir'>{_esc(arrow)}</span></button></th>")


def _definitions(info: dict[str, tuple[str, str, str]], names: Sequence[str]) -> str:
    hint = {"↑": " Higher is better.", "↓": " Lower is better.", "floor": ""}
    items = "".join(f"<dt>{_esc(info[n][0])}</dt><dd>{_esc(info[n][2] + hint.get(info[n][1], ''))}</dd>"
                    for n in names)
    return f"<dl class='defs'>{items}</dl>\n"


def _name_cell(p: _Preset, flags: Sequence[str] = ()) -> str:
    badge = (f"<span class='badge' title='{_esc('; '.join(flags))}'>flagged</span>"
             f"<div class='flags'>{_esc('; '.join(flags))}</div>") if flags else ""
    chain = f"<div class='chain'>{_esc(' → '.join(p.chain))} [{_esc(p.profile)}]</div>" if p.chain or p.profile else ""
    return f"<td class='name' data-v='{_esc(p.name)}'>{_breakable(p.name)}{badge}{chain}</td>"


def _metrics_table(presets: list[_Preset]) -> str:
    cols = [c for c in SUMMARY_COLUMNS if any(c in p.summary for p in presets)]
    if not cols:
        return "<h2>Plausibility</h2><p class='note'>No scores in this run (run 'dcam explain STORE --score').</p>\n"
    best = {}
    for c in cols:
        vals = [p.summary[c] for p in presets if c in p.summary and not math.isnan(p.summary[c])]
        if SUMMARY_INFO[c][1] == "↑" and len(vals) > 1 and max(vals) > min(vals):
            best[c] = max(vals)
    head = "".join(_head_cell(*SUMMARY_INFO[c]) for c in cols)
    body = []
    for p in presets:
        cells = []
        for c in cols:
            v = p.summary.get(c)
            is_best = v is not None and c in best and math.isclose(v, best[c], rel_tol=0, abs_tol=1e-12)
            cells.append(_value_cell(v, p.intervals.get(c), best=is_best, digits=0 if c == "n_samples" else 3))
        body.append(f"<tr>{_name_cell(p)}{''.join(cells)}</tr>")
    return ("<h2>Plausibility</h2>\n<p class='note'>Agreement of each method's maps with the ground-truth masks: "
            "dataset-level means per method, 95% bootstrap intervals over samples (1,000 resamples of the images) "
            "below each value, best value per column in bold. Click a column header to sort.</p>\n"
            f"<div class='scroll'><table class='metrics sortable'><thead><tr><th scope='col' class='name'>"
            f"<button type='button'>method</button></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>\n"
            + _definitions(SUMMARY_INFO, cols))


# ------------------------------------------------------------------ faithfulness


def read_faithfulness(run_dir: Path, run: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The faithfulness ``summary.json`` that ``run.json`` names (key ``"faithfulness"``), or a note why not.

    Returns
    -------
    (summary, note)
        ``summary`` is ``{"baseline": str, "methods": [record, ...]}`` with every record holding a
        ``method``; ``note`` explains a named but missing or malformed summary (the report says so
        instead of failing). Both None when the run has no faithfulness results.
    """
    recorded = run.get("faithfulness")
    if not recorded:
        return None, None
    found = _locate(run_dir, str(recorded), "summary.json")
    if found is None:
        return None, f"faithfulness results named in {RUN_FILE} ({_esc(recorded)}) are missing"
    try:
        summary = json.loads((found / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"faithfulness summary unreadable: {_esc(e)}"
    records = summary.get("methods") if isinstance(summary, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("method"), str) for r in records):
        return None, "faithfulness summary.json has no 'methods' list of records with a 'method' name"
    return summary, None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) is not None for v in value):
        return (float(value[0]), float(value[1]))
    return None


def _faithfulness_table(summary: dict[str, Any] | None, note: str | None, presets: list[_Preset]) -> str:
    if summary is None:
        return f"<h2>Faithfulness</h2><p class='note'>{note}.</p>\n" if note else ""
    records = summary["methods"]
    cols = [c for c in FAITHFULNESS_INFO if any(_number(r.get(c)) is not None for r in records)]
    by_name = {p.name: p for p in presets}
    body = []
    for r in records:
        flags = [str(f) for f in (r.get("flags") or [])]
        p = by_name.get(r["method"]) or _Preset(r["method"], [], "", None, None)
        cells = [_value_cell(_number(r.get(c)), _interval(r.get(f"{c}_ci"))) for c in cols]
        n_maps = _number(r.get("n_maps"))
        rand = r.get("randomisation")
        rand_text = (", ".join(f"{_esc(k)}: {_fmt(_number(v), 2)}" for k, v in rand.items())
                     if isinstance(rand, dict) and rand else "–")
        body.append(f"<tr>{_name_cell(p, flags)}{_value_cell(n_maps, None, digits=0)}{''.join(cells)}"
                    f"<td data-v=''>{rand_text}</td></tr>")
    head = ("<th scope='col'><button type='button'>maps</button></th>" + "".join(_head_cell(*FAITHFULNESS_INFO[c]) for c in cols)
            + "<th scope='col' title='Spearman ρ with the intact model&#39;s map after randomising the top k blocks "
              "(Adebayo et al. 2018); it should fall as k grows'>randomisation (k: ρ)</th>")
    flagged = sum(1 for r in records if r.get("flags"))
    baseline = _esc(summary.get("baseline", "–"))
    defs = _definitions(FAITHFULNESS_INFO, cols)
    return ("<h2>Faithfulness</h2>\n<p class='note'>Whether each map shows what the model used, beside the "
            f"plausibility above (removed regions replaced by the {baseline} baseline). 95% bootstrap intervals "
            f"below each value. {flagged} method(s) fail a sanity check (<span class='badge'>flagged</span>, the "
            "failed checks named).</p>\n"
            f"<div class='scroll'><table class='metrics sortable'><thead><tr><th scope='col' class='name'>"
            f"<button type='button'>method</button></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>\n"
            + defs + "<dl class='defs'><dt>randomisation</dt><dd>Spearman ρ between the map and the map after "
            "randomising the model's top k blocks; a map that stays the same does not depend on the model.</dd></dl>\n")


# ------------------------------------------------------------------ ablation


def ablation_png(presets: list[_Preset]) -> bytes | None:
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


def ablation_figure(presets: list[_Preset]):
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


def _ablation_section(run: dict[str, Any], all_scored: list[_Preset], chart: bytes | None) -> str:
    names = [n for n in run["presets"] if n.startswith("ablation-")]
    scored = [p.name for p in all_scored if p.name.startswith("ablation-") and "f3" in p.summary]
    if chart is not None:
        unscored = sorted(set(names) - set(scored))
        extra = f" Without readable scores, so not drawn: {_esc(', '.join(unscored))}." if unscored else ""
        return (f"<h2>Ablation</h2>\n<p class='note'>{len(scored)} of the run's {len(names)} ablation-* presets, "
                f"whether or not shown below.{extra}</p>\n"
                f"<img class='chart' alt='Ablation chart: F3 and Obj-IoU of {len(scored)} ablation-* presets on a "
                f"0 to 1 axis' src='{_data_uri(chart)}'>\n")
    if names:
        why = "none has scores (run 'dcam explain STORE --score' with a dataset)"
        return f"<h2>Ablation</h2><p class='note'>This run has {len(names)} ablation-* preset(s), but {why}.</p>\n"
    return ("<h2>Ablation</h2><p class='note'>This run has no ablation-* presets (run 'dcam explain STORE "
            "--preset ablation-baseline,ablation-full ...' to compare the modules).</p>\n")


# ------------------------------------------------------------------ samples


@dataclass
class _SampleView:
    """What the report needs of one sample besides its maps."""

    sample_id: str
    text: str = ""
    references: list[str] = field(default_factory=list)
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    instances: np.ndarray | None = None  # (K, H, W) bool
    instance_labels: list[int] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    phrases: bool = False
    problem: str | None = None


def _sample_view(sid: str, store, dataset: dict[str, Any], contexts: dict[str, Any]) -> _SampleView:
    from stages.ingest.loaders import load_instance_masks, load_mask

    view = _SampleView(sid)
    attrs: dict[str, Any] = {}
    if store is not None:
        try:
            attrs = store.sample(sid).attrs
        except DcamError:
            attrs = {}
    words = contexts.get("words") or attrs.get("words") or []
    view.text = str(attrs.get("generated_text") or " ".join(words))
    view.references = [str(c) for c in attrs.get("reference_captions", [])]
    sample = dataset.get(sid)
    image_path = attrs.get("image_path") or (sample.image_path if sample is not None else None)
    if image_path is None:
        view.problem = "no image path (sample not in the capture store or the dataset)"
        return view
    try:
        view.image = _read_image(image_path)
    except OSError as e:
        view.problem = f"image {image_path} unreadable: {e}"
        return view
    if sample is not None:
        view.categories = dict(sample.categories)
        view.phrases = sample.source in ("grandf", "tam-anno")
        try:
            mask = load_mask(sample)
            if mask.shape == view.image.shape[:2]:
                view.mask = mask
                instances = load_instance_masks(sample)
                if instances.shape[1:] == mask.shape:
                    view.instances = instances
                    view.instance_labels = [int(o.label) for o in sample.objects]
            for obj in sample.objects:
                view.names.setdefault(int(obj.label), obj.name)
            if not view.references:
                view.references = list(sample.captions)
        except (DcamError, OSError, ValueError):
            view.mask = None
    return view


@dataclass
class _Canvas:
    """One size at which overlays are drawn: the base image, the instances' outlines at that size, the cross size."""

    image: np.ndarray
    outlines: tuple[np.ndarray, np.ndarray] | None  # stages.report.overlay.instance_outlines at this size
    arm: int

    def point(self, row: int, col: int, source_shape: tuple[int, int]) -> tuple[int, int]:
        """A pixel of the source image, mapped to the centre of its footprint here."""
        h, w = self.image.shape[:2]
        return (min(h - 1, int((row + 0.5) * h / source_shape[0])), min(w - 1, int((col + 0.5) * w / source_shape[1])))


def _canvases(view: _SampleView, thumb: int) -> tuple[_Canvas, _Canvas]:
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
    return _Canvas(big, big_lines, max(6, 2 * scale)), _Canvas(small, small_lines, max(3, thumb // 24))


def display_map(m: np.ndarray, cmap: str) -> np.ndarray:
    """The map as the overlay colours it: ReLU ÷ max in [0, 1], or for ``diverging`` raw ÷ max |m| moved to [0, 1]."""
    from stages.score.stage import unit_map

    if cmap != "diverging":
        return unit_map(m)
    raw = np.asarray(m, dtype=np.float64)
    scale = float(np.abs(raw).max()) if raw.size else 0.0
    return (raw / scale + 1.0) / 2.0 if scale > 0 else np.full(raw.shape, 0.5)


def _draw(canvas: _Canvas, shown: np.ndarray, solid: list[bool], peak_rc: tuple[int, int], source_shape, cmap: str) -> np.ndarray:
    from stages.report.overlay import contours, mark_peak, overlay

    name, colour = CMAPS[cmap][0], CMAPS[cmap][1]
    out = overlay(canvas.image, shown, cmap=name)
    if canvas.outlines is not None:
        out = contours(out, canvas.outlines, solid=solid, color=colour)
    return mark_peak(out, *canvas.point(*peak_rc, source_shape), color=colour, arm=canvas.arm)


def colour_bar(cmap: str) -> str:
    """An inline colour bar (a CSS gradient of the colour map) with its value range and what it shows."""
    import matplotlib

    name, colour, what, (lo, hi) = CMAPS[cmap]
    stops = ", ".join(f"rgb{tuple(int(c) for c in matplotlib.colormaps[name](t, bytes=True)[:3])} {100 * t:.0f}%"
                      for t in np.linspace(0, 1, 11))
    return (f"<div class='cbar' role='img' aria-label='colour bar: {_esc(name)}, {lo:g} to {hi:g}, map {_esc(what)}'>"
            f"<span>{lo:g}</span><span class='ramp' style='background:linear-gradient(to right, {stops})'></span>"
            f"<span>{hi:g}</span><span class='note'>map value ({_esc(what)}; {_esc(name)}). Outlines in "
            f"<span style='background:rgb{colour};padding:0 4px;border:1px solid #000'>&nbsp;</span>: solid = the "
            "object the row is scored against, dashed = other objects; + = the map's maximum.</span></div>")


def _row_target(view: _SampleView, kind: str, word: str) -> int | None:
    """The object label a row is scored against (None: every object, the best-matching one)."""
    from stages.ingest.words import classify_word

    if kind != "word" or not view.categories:
        return None
    what, label = classify_word(word, view.categories, phrases=view.phrases)
    return label if what == "object" else -1


def _render_sample(view: _SampleView, presets: list[_Preset], out: Path, thumb: int, colors: int, cmap: str) -> str:
    from stages.report.overlay import encode_png, fit_image, fit_mask, label_colors, outline, peak, save_png
    from stages.score.metrics import resize_bilinear
    from stages.score.stage import unit_map

    sid = view.sample_id
    parts = [f"<section id='s-{_esc(sid)}'><h3>{_esc(sid)}</h3>"]
    if view.image is None:
        parts.append(f"<p class='failed'>not rendered: {_esc(view.problem or 'no image')}</p></section>")
        return "\n".join(parts)
    big, small = _canvases(view, thumb)
    legend = ""
    gt_big, gt_small = big.image, fit_image(view.image, 2 * thumb)
    if view.mask is not None:
        cols = label_colors([v for v in np.unique(view.mask) if v != 0])
        scale = big.image.shape[0] // view.image.shape[0]
        gt_big = outline(big.image, fit_mask(view.mask, big.image.shape[:2]), colors=cols, thickness=max(1, scale))
        gt_small = outline(gt_small, fit_mask(view.mask, gt_small.shape[:2]), colors=cols)
        legend = "".join(f"<span><i style='background:rgb{c}'></i>{_esc(view.names.get(lab, str(lab)))}</span>"
                         for lab, c in cols.items())
    save_png(gt_big, out / "images" / f"{sid}.png")
    refs = "".join(f"<p class='note'>reference: {_esc(r)}</p>" for r in view.references[:2])
    parts.append(
        f"<div class='sample'><a href='images/{quote(sid)}.png'><img alt='{_esc(sid)}: the image with its "
        f"ground-truth objects outlined' title='{_esc(sid)}' width='{gt_small.shape[1]}' height='{gt_small.shape[0]}' "
        f"src='{_data_uri(encode_png(gt_small, colors=colors))}'></a>"
        f"<div class='text'><p><b>generated:</b> {_esc(view.text)}</p>{refs}"
        f"<div class='legend'>{legend or '<span class=note>no ground-truth mask</span>'}</div></div></div>")

    # (kind order, target, layer) -> {preset: (index record, map)}
    cells: dict[tuple[int, int, int], dict[str, tuple[dict, np.ndarray]]] = {}
    for p in presets:
        rows = p.maps.index[p.maps.index["sample_id"] == sid]
        for _, sub in rows.groupby("array"):
            for rec, m in zip(sub.to_dict(orient="records"), p.maps.maps_for(sub)):
                key = (_KIND_ORDER.get(rec["target_kind"], 3), int(rec["target"]), int(rec["layer"]))
                cells.setdefault(key, {})[p.name] = (rec, m)
    if not cells:
        parts.append("<p class='failed'>no maps for this sample in any preset</p></section>")
        return "\n".join(parts)
    layers_per_target: dict[int, set[int]] = {}
    for _, target, layer in cells:
        layers_per_target.setdefault(target, set()).add(layer)
    head = "".join(f"<th scope='col' class='method'>{_breakable(p.name)}</th>" for p in presets)
    source_shape = view.image.shape[:2]
    body = []
    for key in sorted(cells):
        _, target, layer = key
        several = len(layers_per_target[target]) > 1
        first = next(iter(cells[key].values()))[0]
        kind = first["target_kind"]
        word = str(first["word"])
        label = _esc(word) if kind == "word" else f"<i>{_esc(kind)}</i>"
        step = f"step {first['step']}" if int(first["step"]) >= 0 else "steps mean"
        sub = f"#{target} · {step}" + (f" · L{layer}" if several else "")
        scored_against = _row_target(view, kind, word)
        solid = [scored_against is None or lab == scored_against for lab in view.instance_labels]
        row = [f"<th scope='row' class='word'>{label}<div class='cap'>{sub}</div></th>"]
        for p in presets:
            if p.name not in cells[key]:
                row.append("<td class='cap'>–</td>")
                continue
            rec, m = cells[key][p.name]
            shown = display_map(m, cmap)
            peak_rc = peak(resize_bilinear(unit_map(m), source_shape))  # the pointing game's point
            name = overlay_name(sid, target, rec["word"], kind, layer if several else None)
            save_png(_draw(big, shown, solid, peak_rc, source_shape, cmap), out / "overlays" / p.name / name)
            thumb_png = encode_png(_draw(small, shown, solid, peak_rc, source_shape, cmap), colors=colors)
            caption, verdict = _caption(p, sid, target, layer, kind)
            what = f"'{word}' (word {target})" if kind == "word" else f"{kind} (target {target})"
            text = f"sample {sid}, {what}, {p.name}" + (f": {verdict}" if verdict else "")
            row.append(f"<td><a href='overlays/{quote(p.name)}/{quote(name)}'><img alt='{_esc(text)}' "
                       f"title='{_esc(text)}' width='{small.image.shape[1]}' height='{small.image.shape[0]}' "
                       f"src='{_data_uri(thumb_png)}'></a>{caption}</td>")
        body.append(f"<tr>{''.join(row)}</tr>")
    parts.append(f"{colour_bar(cmap)}<div class='gridwrap'><table class='grid'><thead><tr><th scope='col' "
                 f"class='word'>word</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>")
    return "\n".join(parts)


def _contents(ids: list[str], statuses: list[SampleStatus]) -> str:
    """Links to every sample section; failed samples marked."""
    failed = {s.sample_id for s in statuses if s.status == "failed"}
    links = " ".join(f"<a href='#s-{_esc(sid)}'{' class=failed' if sid in failed else ''}>{_esc(sid)}</a>"
                     for sid in ids)
    return f"<nav class='contents note'>{links}</nav>\n"


def _caption(p: _Preset, sid: str, target: int, layer: int, kind: str) -> tuple[str, str]:
    """The thumbnail's caption HTML and its plain-text verdict (for alt text)."""
    iou_name, hit_name = CAPTION_METRICS.get(kind, CAPTION_METRICS["contrastive"])
    iou = p.captions.get((sid, target, layer, iou_name))
    hit = p.captions.get((sid, target, layer, hit_name))
    bits, words = [], []
    if iou is not None:
        bits.append(f"IoU {_fmt(iou, 2)}")
        words.append(f"IoU {_fmt(iou, 2)}")
    if hit is not None and not math.isnan(hit):
        verdict = "hit" if hit >= 0.5 else "miss"
        bits.append(f"<span class='{verdict}'>{verdict}</span>")
        words.append(f"pointing {verdict}")
    return (f"<div class='cap'>{' · '.join(bits)}</div>" if bits else ""), ", ".join(words)


# ------------------------------------------------------------------ the stage


def _prepare_out(out: Path, *, overwrite: bool) -> Path:
    """A fresh temporary directory beside ``out``; refuses to replace anything but an earlier report."""
    if out.exists():
        if not out.is_dir():
            raise DcamError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            try:
                read_manifest(out, KIND)
            except DcamError:
                raise DcamError(f"{out} exists and is not a diffusion-cam report; choose another --out") from None
            if not overwrite:
                raise DcamError(f"{out} holds a report already; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def check_report_options(*, max_samples: int | None, thumb_size: int, cmap: str) -> None:
    """Validate the options of :func:`build_report` (one-line :class:`DcamError` naming the option)."""
    if max_samples is not None and max_samples < 1:
        raise DcamError(f"max_samples: expected a positive number, got {max_samples}")
    if thumb_size < 16:
        raise DcamError(f"thumb_size: expected at least 16 pixels, got {thumb_size}")
    if cmap not in CMAPS:
        raise DcamError(f"cmap: expected one of {', '.join(CMAPS)}, got {cmap!r}")


def build_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    max_samples: int | None = None,
    methods: Sequence[str] | None = None,
    thumb_size: int = 128,
    cmap: str = "jet",
    overwrite: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the HTML report of an explain run.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The artifact root of ``dcam explain`` (holds ``run.json``).
    out_dir : str or os.PathLike, optional
        Output directory (default ``run_dir/report``).
    max_samples : int, optional
        Show at most this many samples (in sample-id order); the page says how many were left out.
    methods : sequence of str, optional
        Presets to show (default every preset of the run), in the run's order. The ablation chart uses
        every scored ``ablation-*`` preset of the run regardless.
    thumb_size : int, default 128
        Long side of the thumbnails inlined in the HTML, in pixels; each links to its full-size overlay.
    cmap : {"jet", "viridis", "diverging"}, default "jet"
        Colour map of the overlays (:data:`CMAPS`); ``diverging`` shows the raw, signed maps.
    overwrite : bool, default True
        Replace an earlier report at ``out_dir`` (the flows rebuild it on every run); False refuses.
    progress : callable (done, total), optional
        Called once before the first sample and after every sample.

    Returns
    -------
    Path
        ``out_dir/report.html``.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    check_report_options(max_samples=max_samples, thumb_size=thumb_size, cmap=cmap)
    shown_names = _shown_names(run, methods)
    if not shown_names:
        raise DcamError(f"{run_dir / RUN_FILE} lists no presets; {NOT_A_RUN}")
    presets = _open_presets(run_dir, run, shown_names, with_maps=True)
    scored = list(presets)
    for name in (n for n in run["presets"] if n.startswith("ablation-") and n not in shown_names):
        try:  # only the chart reads these: one with a missing artifact is left out of it, not fatal
            scored += _open_presets(run_dir, run, [name], with_maps=False)
        except DcamError:
            continue
    faithfulness, faith_note = read_faithfulness(run_dir, run)
    store = _open_store(run)
    dataset = _open_dataset(run)
    ids: set[str] = set()
    failed_upstream: dict[str, str] = {}
    for p in presets:
        ids |= set(p.maps.index["sample_id"].astype(str))
        for s in p.maps.manifest.samples:
            ids.add(s.sample_id)
            if s.status == "failed":
                failed_upstream.setdefault(s.sample_id, s.reason or "failed upstream")
    all_ids = sorted(ids)
    shown = all_ids if max_samples is None else all_ids[:max_samples]

    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    tmp = _prepare_out(out, overwrite=overwrite)
    try:
        statuses = []
        sections = []
        if progress:
            progress(0, len(shown))
        contexts = {}
        for p in presets:
            for sid, ctx in p.maps.contexts.items():
                contexts.setdefault(sid, ctx)
        for i, sid in enumerate(shown):
            s0 = time.perf_counter()
            view = _sample_view(sid, store, dataset, contexts.get(sid, {}))
            if view.problem is None and sid in failed_upstream:
                view.problem = failed_upstream[sid]
            sections.append(_render_sample(view, presets, tmp, thumb_size, THUMB_COLORS, cmap))
            has_maps = any((p.maps.index["sample_id"] == sid).any() for p in presets)
            reason = view.problem if view.image is None else (None if has_maps else failed_upstream.get(sid, "no maps"))
            statuses.append(SampleStatus(sample_id=sid, status="failed" if reason else "ok", reason=reason,
                                         seconds=time.perf_counter() - s0))
            if progress:
                progress(i + 1, len(shown))
        chart = ablation_png(scored)
        if chart is not None:
            (tmp / "ablation.png").write_bytes(chart)
        omitted = len(all_ids) - len(shown)
        note = (f"<p class='note'>{omitted} more sample(s) omitted (--max-samples {max_samples}).</p>"
                if omitted else "")
        what = "ReLU'd and divided by their maximum (as scored)" if cmap != "diverging" else \
            "raw and signed, divided by their largest magnitude (0 is white)"
        page = (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Diffusion-CAM report: {_esc(run_dir.resolve().name)}</title><style>{_CSS}</style></head><body>\n"
            + _header(run, store, run_dir, out, len(all_ids), len(shown)) + _metrics_table(presets)
            + _faithfulness_table(faithfulness, faith_note, scored) + _ablation_section(run, scored, chart)
            + "<h2>Samples</h2>\n<p class='note'>Rows: generated words in order, then the whole response; "
            f"columns: methods. Maps {what}, colour bar above each grid. Captions: Obj-IoU and the pointing game "
            "against the named object (word rows) or the best object (response row). Click a thumbnail for its "
            "full-size overlay.</p>\n"
            + _contents(shown, statuses) + "\n".join(sections) + note
            + f"\n<script>{_SORT_SCRIPT}</script>\n</body></html>\n"
        )
        # a caption or word may hold a lone surrogate (undecodable bytes of a dataset file): shown as U+FFFD
        (tmp / "report.html").write_text(page, encoding="utf-8", errors="replace")
        _write_report_manifest(tmp, run, presets, store, statuses, max_samples, methods, thumb_size, cmap, t0)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.html"


def _write_report_manifest(out: Path, run, presets, store, statuses, max_samples, methods, thumb_size, cmap, t0) -> None:
    inputs: dict[str, InputRef] = {}
    for p in presets:
        inputs[f"maps:{p.name}"] = InputRef(path=str(p.maps.path.resolve()), kind="maps",
                                            content_digest=p.maps.manifest.content_digest)
        if p.scores_path is not None:
            inputs[f"scores:{p.name}"] = InputRef(path=str(p.scores_path.resolve()), kind="scores",
                                                  content_digest=read_manifest(p.scores_path).content_digest)
    if store is not None and store.manifest() is not None:
        inputs["capture"] = InputRef(path=str(Path(store.path).resolve()), kind="capture",
                                     content_digest=store.manifest().content_digest)
    manifest = StageManifest(
        kind=KIND, schema_version=ARTIFACT_SCHEMA_VERSIONS[KIND], stage="report", stage_version=STAGE_VERSION,
        config={"max_samples": max_samples, "methods": list(methods) if methods is not None else None,
                "thumb_size": thumb_size, "normalisation": "relu-then-max" if cmap != "diverging" else "signed-max-abs",
                "cmap": cmap, "alpha": 0.5},
        inputs=inputs, content_digest=digest_files(out), samples=statuses,
        timings={"wall": time.perf_counter() - t0},
    )
    write_manifest(out, manifest)
