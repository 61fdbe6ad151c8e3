"""Base-map stage: the Grad-CAM family at token-grid resolution, from a capture and a selection.

Maps are stored raw and signed unless the method's options say otherwise
(ReLU, normalisation and thresholds are explicit options, as in Captum).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import DcamError
from schemas.manifest import InputRef, SampleStatus, StageManifest, read_manifest
from schemas.maps import SCHEMA_VERSION as MAPS_SCHEMA_VERSION, write_mapset

STAGE_VERSION = "1.0"


def sample_context(sample) -> dict[str, Any]:
    """What the post-processing modules may know about a sample's maps."""
    return {
        "generated_ids": [int(i) for i in sample.attrs.get("generated_ids", [])],
        "words": list(sample.attrs.get("words", [])),
        "num_steps": int(sample.attrs.get("steps", 0)) or None,
        "seed": int(sample.attrs.get("sample_seed", 0)),
    }


def sample_base_maps(sample, selection_rows, *, method: str, options: dict[str, Any] | None = None):
    """Base maps of one sample for its selection rows.

    Returns a list of (index row, map (h, w)), one per (target, layer), the maps of a
    target's selected steps averaged with their selection weights.
    """
    from stages.basemaps import get_base_method
    from stages.basemaps.inputs import SampleInputs

    base = get_base_method(method)
    options = dict(options or {})
    grid = sample.grid
    inputs = SampleInputs(sample)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def maps_at(r: int, layer: int) -> np.ndarray:
        if (r, layer) not in cache:
            cache[(r, layer)] = base(inputs.row(base, r, layer), grid, **options)
        return cache[(r, layer)]

    out = []
    for (target, layer), rows in selection_rows.groupby(["target", "layer"], sort=True):
        acc = None
        for r, w in zip(rows["attr_row"], rows["weight"]):
            m = maps_at(int(r), int(layer))[int(target)] * float(w)
            acc = m if acc is None else acc + m
        first = rows.iloc[0]
        out.append(({
            "sample_id": sample.sample_id, "target": int(target), "word": first["word"],
            "target_kind": first["target_kind"], "method": method,
            "step": int(first["step"]) if len(rows) == 1 else -1, "layer": int(layer),
            "weight_rows": len(rows), "raw_max": float(acc.max()),
        }, acc.astype(np.float32)))
    return out


def run_basemap(store_path: str | Path, selection_dir: str | Path, out_dir: str | Path, *, method: str,
                options: dict[str, Any] | None = None) -> StageManifest:
    """Write the maps artifact of ``method`` for every selected (sample, target, layer)."""
    import pandas as pd

    from schemas.capture import CaptureStore

    t0 = time.perf_counter()
    store = CaptureStore.open(store_path)
    sel_manifest = read_manifest(selection_dir, "selection")
    selection = pd.read_parquet(Path(selection_dir) / "selection.parquet")
    index_rows, maps, contexts, statuses = [], [], {}, []
    for s in sel_manifest.samples:
        if s.status != "ok":
            statuses.append(s)
            continue
        try:
            sample = store.sample(s.sample_id)
            for row, m in sample_base_maps(sample, selection[selection["sample_id"] == s.sample_id],
                                           method=method, options=options):
                index_rows.append(row)
                maps.append(m)
            contexts[s.sample_id] = sample_context(sample)
            statuses.append(SampleStatus(sample_id=s.sample_id, status="ok"))
        except (DcamError, ValueError) as e:
            statuses.append(SampleStatus(sample_id=s.sample_id, status="failed", reason=str(e)))
    cap_manifest = store.manifest()
    manifest = StageManifest(
        kind="maps", schema_version=MAPS_SCHEMA_VERSION, stage="base", stage_version=STAGE_VERSION,
        config={"method": method, "options": dict(options or {})},
        inputs={
            "capture": InputRef(path=str(Path(store_path).resolve()), kind="capture",
                                content_digest=cap_manifest.content_digest if cap_manifest else store.content_digest()),
            "selection": InputRef(path=str(Path(selection_dir).resolve()), kind="selection",
                                  content_digest=sel_manifest.content_digest),
        },
        samples=statuses, timings={"wall": time.perf_counter() - t0},
    )
    return write_mapset(out_dir, index_rows=index_rows, maps=maps, contexts=contexts, manifest=manifest)
