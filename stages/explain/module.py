"""Post-processing stage: one module (AKD, DACG, CBA, normalize, SICD, ...) over a maps artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from schemas.manifest import InputRef, StageManifest
from schemas.maps import read_mapset, write_mapset

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
        kind="maps", schema_version="", stage=stage, stage_version=STAGE_VERSION, config=config,
        inputs={"maps": InputRef(path=str(Path(maps_dir).resolve()), kind="maps", content_digest=ms.manifest.content_digest)},
        samples=list(ms.manifest.samples), timings={"wall": time.perf_counter() - t0},
    )
    return write_mapset(out_dir, index_rows=index_rows, maps=maps, contexts=ms.contexts, manifest=manifest)


def run_threshold(maps_dir: str | Path, out_dir: str | Path, *, threshold: float) -> StageManifest:
    """Zero every value below ``threshold`` (the official baseline's 0.4, LLaVA-CAM's 0.5)."""
    return _rewrite(maps_dir, out_dir, stage="threshold", config={"threshold": threshold},
                    fn=lambda stack, rows, ms: np.where(stack < threshold, 0.0, stack))


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
