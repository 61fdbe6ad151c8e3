"""What the report reads: ``run.json``, each preset's maps and scores, the faithfulness summary, the capture
store and the dataset.

Nothing here is swallowed: an artifact that ``run.json`` names but that is missing or unreadable is a
one-line :class:`~schemas.errors.DcamError` (maps, scores), or, where the page can be drawn without it
(the store, the dataset, the faithfulness summary, one sample's mask), a notice the page shows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import DcamError
from schemas.manifest import read_manifest
from schemas.storage import at_root

RUN_FILE = "run.json"
NOT_A_RUN = "not an explain run directory: run 'dcam explain STORE --score' first"
#: The per-map metrics captioned under a thumbnail, per target kind: (Obj-IoU, pointing hit).
CAPTION_METRICS = {"word": ("obj_iou_word", "pointing_hit_word"), "contrastive": ("obj_iou", "pointing_hit"),
                   "response": ("response_obj_iou", "response_pointing_hit")}


@dataclass
class PresetResults:
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
    from schemas.run import RunRecord

    RunRecord.parse(run, str(path))  # the declared schema: a malformed entry is one line here, not a crash later
    return run


def locate(run_dir: Path, recorded: str, marker: str) -> Path | None:
    """A directory ``run.json`` names, holding ``marker``: as recorded, relative to the run, else at the
    run's own layout (:func:`schemas.storage.at_root`); None when none of them holds it."""
    p = Path(recorded)
    for candidate in (p, run_dir / p, Path(at_root(run_dir, p))):
        if (candidate / marker).is_file():
            return candidate
    return None


def artifact_path(run_dir: Path, recorded: str | None) -> Path | None:
    """The artifact directory ``run.json`` names (None when it names none); a DcamError when it is missing."""
    if not recorded:
        return None
    found = locate(run_dir, recorded, "manifest.json")
    if found is None:
        raise DcamError(f"artifact {recorded} named in {run_dir / RUN_FILE} is missing; rerun 'dcam explain'")
    return found


def read_scores(preset: PresetResults, columns: Sequence[str]) -> None:
    """Fill a preset's summary, bootstrap intervals (of ``columns``) and thumbnail captions from its scores."""
    import pandas as pd

    from stages.score.aggregate import summary_intervals

    read_manifest(preset.scores_path, "scores")
    try:
        summary = pd.read_csv(preset.scores_path / "summary.csv")
        metrics = pd.read_parquet(preset.scores_path / "metrics.parquet")
    except (OSError, ValueError) as e:
        raise DcamError(f"scores of {preset.name} at {preset.scores_path} unreadable: {e}") from None
    if "method" in summary.columns and (summary["method"] == preset.name).any():
        summary = summary[summary["method"] == preset.name]
    if not len(summary):
        return
    first = summary.iloc[0]
    preset.summary = {k: float(v) for k, v in first.items()
                      if k != "method" and isinstance(v, (int, float, np.number)) and not pd.isna(v)}
    if "layer" in summary.columns:  # a layer sweep: the table shows the first layer's row, so do the intervals
        metrics = metrics[metrics["layer"] == first["layer"]]
    preset.intervals = summary_intervals(metrics, [c for c in columns if c in preset.summary and c != "n_samples"])
    wanted = metrics[metrics["metric"].isin({m for pair in CAPTION_METRICS.values() for m in pair})]
    preset.captions = {(str(s), int(t), int(la), str(m)): float(v) for s, t, la, m, v in
                       wanted[["sample_id", "target", "layer", "metric", "value"]].itertuples(index=False)}


def open_presets(run_dir: Path, run: dict[str, Any], names: Sequence[str], *, with_maps: bool,
                 columns: Sequence[str]) -> list[PresetResults]:
    """The presets ``names`` of the run, their scores read (:func:`read_scores`), their maps opened if asked."""
    from schemas.maps import read_mapset

    out = []
    for name in names:
        entry = run["presets"][name]
        maps = read_mapset(artifact_path(run_dir, entry.get("maps"))) if with_maps else None
        preset = PresetResults(name, list(entry.get("chain", [])), str(entry.get("profile", "")), maps,
                               artifact_path(run_dir, entry.get("scores")))
        if preset.scores_path is not None:
            read_scores(preset, columns)
        out.append(preset)
    return out


def shown_names(run: dict[str, Any], methods: Sequence[str] | None) -> list[str]:
    """The presets to show, in the run's order; a DcamError naming an unknown one."""
    names = list(run["presets"])
    if methods is None:
        return names
    unknown = [m for m in methods if m not in run["presets"]]
    if unknown:
        raise DcamError(f"unknown method(s) {', '.join(unknown)}: this run has {', '.join(names)}")
    return [n for n in names if n in set(methods)]


def open_store(run: dict[str, Any]) -> tuple[Any, str | None]:
    """The run's capture store, or None and the reason it cannot be read (None, None: the run names none)."""
    from schemas.capture import CaptureStore

    if not run.get("store"):
        return None, None
    try:
        return CaptureStore.open(run["store"]), None
    except DcamError as e:
        return None, f"capture store unreadable, so no generated text or image paths from it: {e}"


def open_dataset(run: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The run's dataset samples by id, or {} and the reason it cannot be read (no reason: none named)."""
    from stages.ingest.loaders import load_dataset

    if not run.get("dataset"):
        return {}, None
    try:
        return {s.sample_id: s for s in load_dataset(run["dataset"]).samples}, None
    except (DcamError, OSError, ValueError) as e:
        return {}, f"dataset {run['dataset']} unreadable, so no ground-truth masks: {e}"


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
    found = locate(run_dir, str(recorded), "summary.json")
    if found is None:
        return None, f"faithfulness results named in {RUN_FILE} ({recorded}) are missing"
    try:
        summary = json.loads((found / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"faithfulness summary unreadable: {e}"
    records = summary.get("methods") if isinstance(summary, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("method"), str) for r in records):
        return None, "faithfulness summary.json has no 'methods' list of records with a 'method' name"
    return summary, None


@dataclass
class SampleView:
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
    problem: str | None = None  # why the sample cannot be drawn
    notices: list[str] = field(default_factory=list)  # what is drawn without


def read_image(path: str) -> np.ndarray:
    """An image file as uint8 RGB of shape (H, W, 3)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def sample_view(sid: str, store, dataset: dict[str, Any], contexts: dict[str, Any]) -> SampleView:
    """Text, image, ground-truth masks and names of one sample, from the store and the dataset."""
    from stages.ingest.loaders import load_instance_masks, load_mask

    view = SampleView(sid)
    attrs: dict[str, Any] = {}
    if store is not None:
        try:
            attrs = store.sample(sid).attrs
        except DcamError as e:
            view.notices.append(f"not read from the capture store: {e}")
    words = contexts.get("words") or attrs.get("words") or []
    view.text = str(attrs.get("generated_text") or " ".join(words))
    view.references = [str(c) for c in attrs.get("reference_captions", [])]
    sample = dataset.get(sid)
    image_path = attrs.get("image_path") or (sample.image_path if sample is not None else None)
    if image_path is None:
        view.problem = "no image path (sample not in the capture store or the dataset)"
        return view
    try:
        view.image = read_image(image_path)
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
            else:
                view.notices.append(f"ground-truth mask is {mask.shape[0]}x{mask.shape[1]}, the image "
                                    f"{view.image.shape[0]}x{view.image.shape[1]}: not drawn")
            for obj in sample.objects:
                view.names.setdefault(int(obj.label), obj.name)
            if not view.references:
                view.references = list(sample.captions)
        except (DcamError, OSError, ValueError) as e:
            view.mask = None
            view.notices.append(f"ground-truth mask unreadable: {e}")
    return view
