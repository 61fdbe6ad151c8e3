"""The report stage: one self-contained HTML page (and publication PNGs) of an explain run.

``build_report(RUN)`` reads ``RUN/run.json`` (written by :func:`stages.explain.runner.explain_run`),
the final maps artifact and the scores artifact of every preset, the capture store (generated text,
image path) and the dataset (ground-truth masks), and writes::

    OUT/report.html                                   opens offline: plain CSS, images as data URIs
    OUT/ablation.png                                  F3 and Obj-IoU of the ablation-* presets (when run)
    OUT/images/{sample_id}.png                        the image with ground-truth outlines
    OUT/overlays/{preset}/{sample_id}_{target:02d}_{word}.png   one map over its image
    OUT/manifest.json                                 kind "report": inputs with digests, per-sample status

Maps are shown as the scoring stage scores them: ReLU then division by the maximum
(:func:`stages.score.stage.unit_map`), upsampled bilinearly to the image
(:func:`stages.report.overlay.overlay`). Small images are enlarged by an integer factor
(nearest neighbour) for the PNG files, so a 96 px synthetic image gives 288 px figures.
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

STAGE_VERSION = "1.0"
KIND = "report"
RUN_FILE = "run.json"
NOT_A_RUN = "not an explain run directory: run 'dcam explain STORE --score' first"

#: The paper's ablation rows (``method.md`` §1.7), in its order, and their labels.
ABLATION_ORDER = ("baseline", "akd", "dacg", "cba", "sicd", "full")
ABLATION_LABELS = {"baseline": "Baseline", "akd": "+AKD", "dacg": "+DACG", "cba": "+CBA", "sicd": "+SICD",
                   "full": "Full"}
#: Columns of the metrics table, from each preset's ``summary.csv``, where present.
SUMMARY_COLUMNS = ("n_samples", "obj_iou", "contrast", "concentration", "f3", "pointing_accuracy", "obj_iou_word",
                   "f1_iou")
SUMMARY_LABELS = {"n_samples": "samples", "obj_iou": "Obj-IoU", "contrast": "Contrast",
                  "concentration": "Concentration", "f3": "F3", "pointing_accuracy": "Pointing acc.",
                  "obj_iou_word": "Obj-IoU (word)", "f1_iou": "F1-IoU (TAM)"}
#: The per-map metrics captioned under a thumbnail, per target kind: (Obj-IoU, pointing hit).
CAPTION_METRICS = {"word": ("obj_iou_word", "pointing_hit_word"), "contrastive": ("obj_iou", "pointing_hit"),
                   "response": ("response_obj_iou", "response_pointing_hit")}
#: Palette size of the inlined thumbnails: about 5 KB each at 112 px, no visible banding of the jet map.
THUMB_COLORS = 96
_KIND_ORDER = {"word": 0, "contrastive": 1, "response": 2}


@dataclass
class _Preset:
    """One preset of the run, opened."""

    name: str
    chain: list[str]
    profile: str
    maps: Any  # schemas.maps.MapSet
    scores_path: Path | None
    summary: dict[str, float] = field(default_factory=dict)
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


def _artifact_path(run_dir: Path, recorded: str | None) -> Path | None:
    """Find an artifact that ``run.json`` names: as recorded, else ``RUN/<stage>/<key>``.

    ``run.json`` records the paths it was given, which are relative to the directory ``dcam explain``
    ran in; the artifact root's own layout (``ROOT/<stage>/<key>``) finds them from anywhere.
    """
    if not recorded:
        return None
    p = Path(recorded)
    if (p / "manifest.json").is_file():
        return p
    local = run_dir.joinpath(*p.parts[-2:])
    if (local / "manifest.json").is_file():
        return local
    raise DcamError(f"artifact {recorded} named in {run_dir / RUN_FILE} is missing; rerun 'dcam explain'")


def _open_presets(run_dir: Path, run: dict[str, Any], methods: Sequence[str] | None) -> list[_Preset]:
    import pandas as pd

    from schemas.maps import read_mapset

    names = list(run["presets"])
    if methods is not None:
        unknown = [m for m in methods if m not in run["presets"]]
        if unknown:
            raise DcamError(f"unknown method(s) {', '.join(unknown)}: this run has {', '.join(names)}")
        names = [n for n in names if n in set(methods)]
    wanted = {m for pair in CAPTION_METRICS.values() for m in pair}
    out = []
    for name in names:
        entry = run["presets"][name]
        maps = read_mapset(_artifact_path(run_dir, entry.get("maps")))
        scores = _artifact_path(run_dir, entry.get("scores"))
        preset = _Preset(name, list(entry.get("chain", [])), str(entry.get("profile", "")), maps, scores)
        if scores is not None:
            read_manifest(scores, "scores")
            summary = pd.read_csv(scores / "summary.csv")
            if "method" in summary.columns and (summary["method"] == name).any():
                summary = summary[summary["method"] == name]
            if len(summary):
                preset.summary = {k: float(v) for k, v in summary.iloc[0].items()
                                  if k != "method" and isinstance(v, (int, float, np.number)) and not pd.isna(v)}
            metrics = pd.read_parquet(scores / "metrics.parquet", columns=["sample_id", "target", "layer", "metric", "value"])
            metrics = metrics[metrics["metric"].isin(wanted)]
            preset.captions = {(str(s), int(t), int(la), str(m)): float(v) for s, t, la, m, v in metrics.itertuples(index=False)}
        out.append(preset)
    return out


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


# ------------------------------------------------------------------ sections


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:1.5em;margin:0 0 .4em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:1.4em 0 .3em}
table{border-collapse:collapse}td,th{padding:3px 8px;font-size:.9em}
table.meta td:first-child{color:#666;padding-right:16px}
table.metrics th,table.metrics td{border:1px solid #ddd;text-align:right}
table.metrics td.name,table.metrics th.name{text-align:left}
table.metrics td.best{font-weight:bold;background:#e3f3e3}
.chain{color:#777;font-size:.8em}
.scroll{overflow-x:auto}
table.grid td,table.grid th{border:1px solid #eee;text-align:center;vertical-align:top;padding:2px}
table.grid th.word{text-align:right;white-space:nowrap;font-weight:normal}
table.grid th.method{font-size:.75em;max-width:140px;word-break:break-all}
table.grid img{display:block;image-rendering:pixelated}
.cap{font-size:.72em;color:#444}.hit{color:#1a7f1a}.miss{color:#b22}
.sample{display:flex;gap:18px;align-items:flex-start}
.text{max-width:60em}.text p{margin:.3em 0}
.legend span{display:inline-block;margin-right:10px;font-size:.85em}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.note{color:#777;font-size:.85em}.failed{color:#b22}
"""


def _header(run: dict[str, Any], store, run_dir: Path, n_samples: int, n_shown: int) -> str:
    cfg = store.config if store is not None else {}
    rows = [
        ("run", str(run_dir.resolve())),
        ("store", str(run.get("store")) + ("" if store is not None else " (not readable now)")),
        ("dataset", str(run.get("dataset") or "– (not scored)")),
        ("model", str(cfg.get("model", "–"))),
        ("mode", str(cfg.get("mode", "–"))),
        ("steps", str(cfg.get("steps", "–"))),
        ("policy", str(run.get("policy", "–"))),
        ("layers", ", ".join(map(str, run.get("layers") or cfg.get("layers") or [])) or "–"),
        ("samples", f"{n_shown} shown of {n_samples}"),
    ]
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h1>Diffusion-CAM report</h1>\n<table class='meta'>{cells}</table>\n"


def _metrics_table(presets: list[_Preset]) -> str:
    cols = [c for c in SUMMARY_COLUMNS if any(c in p.summary for p in presets)]
    if not cols:
        return "<h2>Metrics</h2><p class='note'>No scores in this run (run 'dcam explain STORE --score').</p>\n"
    best = {}
    for c in cols:
        vals = [p.summary[c] for p in presets if c in p.summary and not math.isnan(p.summary[c])]
        if c != "n_samples" and len(vals) > 1 and max(vals) > min(vals):
            best[c] = max(vals)
    head = "".join(f"<th>{html.escape(SUMMARY_LABELS[c])}</th>" for c in cols)
    body = []
    for p in presets:
        cells = []
        for c in cols:
            v = p.summary.get(c)
            text = _fmt(v, 0) if c == "n_samples" and v is not None else _fmt(v)
            cls = " class='best'" if v is not None and c in best and math.isclose(v, best[c], rel_tol=0, abs_tol=1e-12) else ""
            cells.append(f"<td{cls}>{text}</td>")
        chain = " → ".join(p.chain)
        body.append(f"<tr><td class='name'>{html.escape(p.name)}<div class='chain'>{html.escape(chain)} "
                    f"[{html.escape(p.profile)}]</div></td>{''.join(cells)}</tr>")
    return ("<h2>Metrics</h2>\n<p class='note'>Dataset-level means per method (F3 and pointing accuracy computed "
            "from the means, as in the paper); best value per column in bold.</p>\n"
            f"<table class='metrics'><tr><th class='name'>method</th>{head}</tr>{''.join(body)}</table>\n")


def ablation_png(presets: list[_Preset]) -> bytes | None:
    """Bar chart of F3 and Obj-IoU of the ``ablation-*`` presets in the paper's order; None without any."""
    by_name = {p.name: p for p in presets}
    rows = [(ABLATION_LABELS[k], by_name[f"ablation-{k}"]) for k in ABLATION_ORDER
            if f"ablation-{k}" in by_name and "f3" in by_name[f"ablation-{k}"].summary]
    if not rows:
        return None
    import io

    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    labels = [r[0] for r in rows]
    f3 = [r[1].summary.get("f3", float("nan")) for r in rows]
    iou = [r[1].summary.get("obj_iou", float("nan")) for r in rows]
    fig = Figure(figsize=(1.1 * len(rows) + 2.0, 3.2), dpi=150)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for off, vals, name, colour in ((-0.2, f3, "F3", "#3b6fb6"), (0.2, iou, "Obj-IoU", "#e0883a")):
        bars = ax.bar(x + off, vals, 0.4, label=name, color=colour)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(x, labels)
    ax.set_ylabel("score")
    ax.set_title("Ablation (ablation-* presets)", fontsize=10)
    top = max([v for v in f3 + iou if not math.isnan(v)] + [0.0])
    ax.set_ylim(0, top * 1.2 if top > 0 else 1.0)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@dataclass
class _SampleView:
    """What the report needs of one sample besides its maps."""

    sample_id: str
    text: str = ""
    references: list[str] = field(default_factory=list)
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    names: dict[int, str] = field(default_factory=dict)
    problem: str | None = None


def _sample_view(sid: str, store, dataset: dict[str, Any], contexts: dict[str, Any]) -> _SampleView:
    from stages.ingest.loaders import load_mask

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
        try:
            mask = load_mask(sample)
            if mask.shape == view.image.shape[:2]:
                view.mask = mask
            view.names = {}
            for obj in sample.objects:
                view.names.setdefault(int(obj.label), obj.name)
            if not view.references:
                view.references = list(sample.captions)
        except (DcamError, OSError, ValueError):
            view.mask = None
    return view


def _render_sample(view: _SampleView, presets: list[_Preset], out: Path, thumb: int, colors: int) -> str:
    from stages.report.overlay import (
        encode_png,
        fit_image,
        fit_mask,
        label_colors,
        outline,
        overlay,
        publication_scale,
        save_png,
        upscale_nearest,
    )
    from stages.score.stage import unit_map

    sid = view.sample_id
    parts = [f"<section id='s-{html.escape(sid)}'><h3>{html.escape(sid)}</h3>"]
    if view.image is None:
        parts.append(f"<p class='failed'>not rendered: {html.escape(view.problem or 'no image')}</p></section>")
        return "\n".join(parts)
    scale = publication_scale(view.image.shape[:2])
    big = upscale_nearest(view.image, scale)
    small = fit_image(view.image, thumb)
    legend = ""
    gt_big, gt_small = big, fit_image(view.image, 2 * thumb)
    if view.mask is not None:
        cols = label_colors([v for v in np.unique(view.mask) if v != 0])
        gt_big = outline(big, upscale_nearest(view.mask, scale), colors=cols, thickness=max(1, scale))
        gt_small = outline(gt_small, fit_mask(view.mask, gt_small.shape[:2]), colors=cols)
        legend = "".join(f"<span><i style='background:rgb{c}'></i>{html.escape(view.names.get(lab, str(lab)))}</span>"
                         for lab, c in cols.items())
    save_png(gt_big, out / "images" / f"{sid}.png")
    refs = "".join(f"<p class='note'>reference: {html.escape(r)}</p>" for r in view.references[:2])
    parts.append(
        f"<div class='sample'><img alt='{html.escape(sid)} with ground truth' src='{_data_uri(encode_png(gt_small, colors=colors))}'>"
        f"<div class='text'><p><b>generated:</b> {html.escape(view.text)}</p>{refs}"
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
    head = "".join(f"<th class='method'>{html.escape(p.name)}</th>" for p in presets)
    body = []
    for key in sorted(cells):
        _, target, layer = key
        several = len(layers_per_target[target]) > 1
        first = next(iter(cells[key].values()))[0]
        kind = first["target_kind"]
        label = html.escape(first["word"]) if kind == "word" else f"<i>{html.escape(kind)}</i>"
        step = f"step {first['step']}" if int(first["step"]) >= 0 else "steps mean"
        sub = f"#{target} · {step}" + (f" · L{layer}" if several else "")
        row = [f"<th class='word'>{label}<div class='cap'>{sub}</div></th>"]
        for p in presets:
            if p.name not in cells[key]:
                row.append("<td class='cap'>–</td>")
                continue
            rec, m = cells[key][p.name]
            u = unit_map(m)
            name = overlay_name(sid, target, rec["word"], kind, layer if several else None)
            save_png(overlay(big, u), out / "overlays" / p.name / name)
            uri = _data_uri(encode_png(overlay(small, u), colors=colors))
            row.append(f"<td><img alt='{html.escape(p.name)}' src='{uri}'>{_caption(p, sid, target, layer, kind)}</td>")
        body.append(f"<tr>{''.join(row)}</tr>")
    parts.append(f"<div class='scroll'><table class='grid'><tr><th></th>{head}</tr>{''.join(body)}</table></div></section>")
    return "\n".join(parts)


def _contents(ids: list[str], statuses: list[SampleStatus]) -> str:
    """Links to every sample section; failed samples marked."""
    failed = {s.sample_id for s in statuses if s.status == "failed"}
    links = " ".join(f"<a href='#s-{html.escape(sid)}'{' class=failed' if sid in failed else ''}>{html.escape(sid)}</a>"
                     for sid in ids)
    return f"<p class='note'>{links}</p>\n"


def _caption(p: _Preset, sid: str, target: int, layer: int, kind: str) -> str:
    iou_name, hit_name = CAPTION_METRICS.get(kind, CAPTION_METRICS["contrastive"])
    iou = p.captions.get((sid, target, layer, iou_name))
    hit = p.captions.get((sid, target, layer, hit_name))
    bits = []
    if iou is not None:
        bits.append(f"IoU {_fmt(iou, 2)}")
    if hit is not None and not math.isnan(hit):
        bits.append("<span class='hit'>hit</span>" if hit >= 0.5 else "<span class='miss'>miss</span>")
    return f"<div class='cap'>{' · '.join(bits)}</div>" if bits else ""


# ------------------------------------------------------------------ the stage


def _prepare_out(out: Path) -> Path:
    """A fresh temporary directory beside ``out``; refuses to replace anything but an earlier report."""
    if out.exists():
        if not out.is_dir():
            raise DcamError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            try:
                read_manifest(out, KIND)
            except DcamError:
                raise DcamError(f"{out} exists and is not a diffusion-cam report; choose another --out") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def build_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    max_samples: int | None = None,
    methods: Sequence[str] | None = None,
    thumb_size: int = 112,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the HTML report of an explain run.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The artifact root of ``dcam explain`` (holds ``run.json``).
    out_dir : str or os.PathLike, optional
        Output directory (default ``run_dir/report``); an earlier report there is replaced.
    max_samples : int, optional
        Show at most this many samples (in sample-id order); the page says how many were left out.
    methods : sequence of str, optional
        Presets to show (default every preset of the run), in the run's order.
    thumb_size : int, default 112
        Long side of the thumbnails inlined in the HTML, in pixels.
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
    if max_samples is not None and max_samples < 1:
        raise DcamError(f"max_samples: expected a positive number, got {max_samples}")
    if thumb_size < 16:
        raise DcamError(f"thumb_size: expected at least 16 pixels, got {thumb_size}")
    presets = _open_presets(run_dir, run, methods)
    if not presets:
        raise DcamError(f"{run_dir / RUN_FILE} lists no presets; {NOT_A_RUN}")
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
    tmp = _prepare_out(out)
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
            sections.append(_render_sample(view, presets, tmp, thumb_size, THUMB_COLORS))
            has_maps = any((p.maps.index["sample_id"] == sid).any() for p in presets)
            reason = view.problem if view.image is None else (None if has_maps else failed_upstream.get(sid, "no maps"))
            statuses.append(SampleStatus(sample_id=sid, status="failed" if reason else "ok", reason=reason,
                                         seconds=time.perf_counter() - s0))
            if progress:
                progress(i + 1, len(shown))
        chart = ablation_png(presets)
        if chart is not None:
            (tmp / "ablation.png").write_bytes(chart)
            ablation = (f"<h2>Ablation</h2>\n<img alt='ablation chart' style='max-width:100%' src='{_data_uri(chart)}'>\n")
        else:
            ablation = "<h2>Ablation</h2><p class='note'>No ablation-* presets with scores in this run.</p>\n"
        omitted = len(all_ids) - len(shown)
        note = (f"<p class='note'>{omitted} more sample(s) omitted (--max-samples {max_samples}).</p>"
                if omitted else "")
        page = (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>Diffusion-CAM report: {html.escape(run_dir.name)}</title><style>{_CSS}</style></head><body>\n"
            + _header(run, store, run_dir, len(all_ids), len(shown)) + _metrics_table(presets) + ablation
            + "<h2>Samples</h2>\n<p class='note'>Rows: generated words in order, then the whole response; "
            "columns: methods. Maps ReLU'd and divided by their maximum (as scored), jet colour map; captions: "
            "Obj-IoU against the named object and the pointing game (word rows), against the best object "
            "(response row).</p>\n" + _contents(shown, statuses) + "\n".join(sections) + note + "\n</body></html>\n"
        )
        (tmp / "report.html").write_text(page, encoding="utf-8")
        _write_report_manifest(tmp, run, presets, store, statuses, max_samples, methods, thumb_size, t0)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.html"


def _write_report_manifest(out: Path, run, presets, store, statuses, max_samples, methods, thumb_size, t0) -> None:
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
                "thumb_size": thumb_size, "normalisation": "relu-then-max", "cmap": "jet", "alpha": 0.5},
        inputs=inputs, content_digest=digest_files(out), samples=statuses,
        timings={"wall": time.perf_counter() - t0},
    )
    write_manifest(out, manifest)
