"""Merge per-shard artifacts of one chain into one (maps, scores)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from schemas.manifest import ARTIFACT_SCHEMA_VERSIONS, InputRef, StageManifest, digest_files, read_manifest, write_manifest
from schemas.maps import SCHEMA_VERSION as MAPS_SCHEMA_VERSION, read_mapset, write_mapset

STAGE_VERSION = "1.1"  # 1.1: a merged layer sweep is summarised per (method, layer)


def merge_maps(dirs: Sequence[str | Path], out_dir: str | Path) -> StageManifest:
    """Concatenate maps artifacts (disjoint samples) into one."""
    t0 = time.perf_counter()
    index_rows, maps, contexts, samples, inputs = [], [], {}, [], {}
    stage = None
    for i, d in enumerate(dirs):
        ms = read_mapset(d)
        stage = stage or ms.manifest.stage
        for _name, rows, stack in ms.groups():
            for rec, m in zip(rows.to_dict(orient="records"), stack):
                index_rows.append({k: v for k, v in rec.items() if k not in ("h", "w", "array", "offset")})
                maps.append(np.asarray(m, dtype=np.float32))
        contexts.update(ms.contexts)
        samples += ms.manifest.samples
        inputs[f"shard{i}"] = InputRef(path=str(Path(d).resolve()), kind="maps", content_digest=ms.manifest.content_digest)
    manifest = StageManifest(kind="maps", schema_version=MAPS_SCHEMA_VERSION, stage=stage or "merge", stage_version=STAGE_VERSION,
                             config={"merge": len(dirs)}, inputs=inputs, samples=samples,
                             timings={"wall": time.perf_counter() - t0})
    return write_mapset(out_dir, index_rows=index_rows, maps=maps, contexts=contexts, manifest=manifest)


def merge_scores(dirs: Sequence[str | Path], out_dir: str | Path) -> StageManifest:
    """Concatenate per-shard metrics tables and recompute the dataset-level summary."""
    import pandas as pd

    from stages.score.aggregate import summarise, write_table
    from stages.score.stage import summary_keys

    t0 = time.perf_counter()
    frames, samples, inputs, config = [], [], {}, {}
    for i, d in enumerate(dirs):
        m = read_manifest(d, "scores")
        config = config or dict(m.config)
        frames.append(pd.read_parquet(Path(d) / "metrics.parquet"))
        samples += m.samples
        inputs[f"shard{i}"] = InputRef(path=str(Path(d).resolve()), kind="scores", content_digest=m.content_digest)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_table(df, out, name="metrics")
    summarise(df, by=summary_keys(df)).to_csv(out / "summary.csv", index=False)
    manifest = StageManifest(kind="scores", schema_version=ARTIFACT_SCHEMA_VERSIONS["scores"], stage="score",
                             stage_version=STAGE_VERSION, config={**config, "merge": len(dirs)}, inputs=inputs,
                             content_digest=digest_files(out), samples=samples,
                             timings={"wall": time.perf_counter() - t0})
    write_manifest(out, manifest)
    return manifest
