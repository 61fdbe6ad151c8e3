"""Post-processing nodes: one refine module (AKD, DACG, CBA, normalize, SICD, ...) or the threshold over a maps
artifact (the ``refine`` and ``threshold`` nodes of :mod:`stages.graph`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from schemas.manifest import InputRef, StageManifest
from schemas.maps import SCHEMA_VERSION as MAPS_SCHEMA_VERSION, read_mapset, write_mapset

STAGE_VERSION = "1.0"


def _rewrite(maps_dir, out_dir, *, stage: str, config: dict[str, Any], fn) -> StageManifest:
    """Apply ``fn(stack (n, h, w), rows) -> stack`` per grid size and write a new maps artifact."""
    t0 = time.perf_counter()
    ms = read_mapset(maps_dir)
    index_rows, maps = [], []
    for _name, rows, stack in ms.groups():
        out = fn(stack, rows, ms)
        for rec, m in zip(rows.to_dict(orient="records"), out):
            index_rows.append({k: v for k, v in rec.items() if k not in ("h", "w", "array", "offset")})
            maps.append(np.asarray(m, dtype=np.float32))
    manifest = StageManifest(
        kind="maps", schema_version=MAPS_SCHEMA_VERSION, stage=stage, stage_version=STAGE_VERSION, config=config,
        inputs={"maps": InputRef(path=str(Path(maps_dir).resolve()), kind="maps", content_digest=ms.manifest.content_digest)},
        samples=list(ms.manifest.samples), timings={"wall": time.perf_counter() - t0},
    )
    return write_mapset(out_dir, index_rows=index_rows, maps=maps, contexts=ms.contexts, manifest=manifest)


def run_threshold(maps_dir: str | Path, out_dir: str | Path, *, threshold: float) -> StageManifest:
    """Zero every value below ``threshold`` (the official baseline's 0.4, LLaVA-CAM's 0.5)."""
    from stages.chain import apply_threshold

    return _rewrite(maps_dir, out_dir, stage="threshold", config={"threshold": threshold},
                    fn=lambda stack, rows, ms: apply_threshold(stack, threshold))


def run_module(maps_dir: str | Path, out_dir: str | Path, *, module: str, profile: str,
               params: dict[str, Any] | None = None) -> StageManifest:
    """Apply one registered module to every map of ``maps_dir`` and write the result to ``out_dir``."""
    from stages.refine import MapContext
    from stages.refine.chain import apply_chain

    def apply(stack, rows, ms):
        contexts = []
        for sid, raw_max in zip(rows["sample_id"], rows["raw_max"]):
            c = ms.contexts.get(sid, {})
            contexts.append(MapContext(generated_ids=c.get("generated_ids"), words=c.get("words"),
                                       num_steps=c.get("num_steps"), seed=int(c.get("seed", 0)),
                                       raw_max=float(raw_max)))
        return apply_chain(stack, [module], profile=profile, params={module: dict(params)} if params else None,
                           contexts=contexts)

    return _rewrite(maps_dir, out_dir, stage=module,
                    config={"module": module, "profile": profile, "params": dict(params or {})}, fn=apply)
