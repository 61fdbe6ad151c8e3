"""The report stage: one self-contained HTML page (and publication PNGs) of an explain run.

``build_report(RUN)`` reads ``RUN/run.json`` (written by :func:`stages.graph.finish_run`),
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

The stage is split by responsibility: :mod:`.data` reads the artifacts (a missing one is an error, or a
notice on the page where the page can do without it), :mod:`.tables` and :mod:`.figures` turn them into
the page's tables and images, :mod:`.page` renders ``templates/report.html.j2`` (jinja2, autoescaped),
and this module runs the stage: options, the output directory, the manifest.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
from schemas.storage import write_bytes_atomic, write_text_atomic
from stages.report.data import (
    NOT_A_RUN,
    RUN_FILE,
    PresetResults,
    open_dataset,
    open_presets,
    open_store,
    read_faithfulness,
    read_run,
    sample_view,
    shown_names,
)
from stages.report.figures import (
    CMAPS,
    ablation_figure,
    ablation_png,
    colour_bar,
    data_uri,
    display_map,
    overlay_name,
    safe_name,
    sample_grid,
)
from stages.report.page import render_page
from stages.report.tables import SUMMARY_COLUMNS, faithfulness_table, metrics_table

__all__ = ["CMAPS", "NOT_A_RUN", "RUN_FILE", "ablation_figure", "build_report", "check_report_options",
           "display_map", "overlay_name", "read_run", "safe_name"]

#: 2.1: the page comes from a jinja2 template (the same page; entities spelt &#39;, notices of unreadable
#: inputs shown).
STAGE_VERSION = "2.1"
KIND = "report"
#: Palette size of the inlined thumbnails: about 7 KB each at 128 px, no visible banding of the colour map.
THUMB_COLORS = 128


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
    shown = shown_names(run, methods)
    if not shown:
        raise DcamError(f"{run_dir / RUN_FILE} lists no presets; {NOT_A_RUN}")
    presets = open_presets(run_dir, run, shown, with_maps=True, columns=SUMMARY_COLUMNS)
    scored = list(presets)
    for name in (n for n in run["presets"] if n.startswith("ablation-") and n not in shown):
        try:  # only the chart reads these: one with a missing artifact is named on the page, not drawn
            scored += open_presets(run_dir, run, [name], with_maps=False, columns=SUMMARY_COLUMNS)
        except DcamError:
            continue
    faithfulness, faith_note = read_faithfulness(run_dir, run)
    store, store_note = open_store(run)
    dataset, dataset_note = open_dataset(run)
    ids: set[str] = set()
    failed_upstream: dict[str, str] = {}
    for p in presets:
        ids |= set(p.maps.index["sample_id"].astype(str))
        for s in p.maps.manifest.samples:
            ids.add(s.sample_id)
            if s.status == "failed":
                failed_upstream.setdefault(s.sample_id, s.reason or "failed upstream")
    all_ids = sorted(ids)
    shown_ids = all_ids if max_samples is None else all_ids[:max_samples]

    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    tmp = _prepare_out(out, overwrite=overwrite)
    try:
        statuses = []
        samples = []
        if progress:
            progress(0, len(shown_ids))
        contexts = {}
        for p in presets:
            for sid, ctx in p.maps.contexts.items():
                contexts.setdefault(sid, ctx)
        for i, sid in enumerate(shown_ids):
            s0 = time.perf_counter()
            view = sample_view(sid, store, dataset, contexts.get(sid, {}))
            if view.problem is None and sid in failed_upstream:
                view.problem = failed_upstream[sid]
            samples.append(sample_grid(view, presets, tmp, thumb_size, THUMB_COLORS, cmap))
            has_maps = any((p.maps.index["sample_id"] == sid).any() for p in presets)
            reason = view.problem if view.image is None else (None if has_maps else failed_upstream.get(sid, "no maps"))
            statuses.append(SampleStatus(sample_id=sid, status="failed" if reason else "ok", reason=reason,
                                         seconds=time.perf_counter() - s0))
            if progress:
                progress(i + 1, len(shown_ids))
        chart = ablation_png(scored)
        if chart is not None:
            write_bytes_atomic(tmp / "ablation.png", chart)
        failed = {s.sample_id for s in statuses if s.status == "failed"}
        page = render_page(
            title=run_dir.resolve().name,
            meta=_meta_rows(run, store, run_dir, out, len(all_ids), len(shown_ids)),
            notices=[n for n in (store_note, dataset_note) if n],
            metrics=metrics_table(presets),
            faithfulness=None if faithfulness is None else faithfulness_table(faithfulness, scored),
            faithfulness_note=faith_note,
            ablation=_ablation(run, scored, chart),
            maps_shown=("ReLU'd and divided by their maximum (as scored)" if cmap != "diverging" else
                        "raw and signed, divided by their largest magnitude (0 is white)"),
            contents=[(sid, sid in failed) for sid in shown_ids],
            samples=samples, presets=[p.name for p in presets], cbar=colour_bar(cmap),
            omitted=len(all_ids) - len(shown_ids), max_samples=max_samples,
        )
        # a caption or word may hold a lone surrogate (undecodable bytes of a dataset file): written as '?'
        write_text_atomic(tmp / "report.html", page, errors="replace")
        _write_report_manifest(tmp, run, presets, store, statuses, max_samples, methods, thumb_size, cmap, t0)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)  # publishes the whole report directory at once
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.html"


def _relative(target: str | None, base: Path) -> str:
    """``target`` relative to ``base`` (a URL or a missing value unchanged)."""
    if not target:
        return "–"
    if "://" in str(target):
        return str(target)
    return os.path.relpath(Path(target).resolve(), base.resolve())


def _meta_rows(run: dict[str, Any], store, run_dir: Path, out: Path, n_samples: int, n_shown: int) -> list[tuple[str, str]]:
    cfg = store.config if store is not None else {}
    return [
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


def _ablation(run: dict[str, Any], all_scored: list[PresetResults], chart: bytes | None) -> dict[str, Any]:
    names = [n for n in run["presets"] if n.startswith("ablation-")]
    scored = [p.name for p in all_scored if p.name.startswith("ablation-") and "f3" in p.summary]
    return {"chart": None if chart is None else data_uri(chart), "scored": len(scored), "total": len(names),
            "unscored": ", ".join(sorted(set(names) - set(scored)))}


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
