"""The ``maps`` artifact: a stack of 2-D maps at token-grid resolution with an index.

Written by the Grad-CAM stage (raw, signed base maps) and by every
post-processing module (one artifact per module). Layout::

    DIR/manifest.json
    DIR/index.parquet      one row per map (columns: INDEX_COLUMNS)
    DIR/contexts.json      per-sample context for the modules: generated ids, words, steps
    DIR/maps.zarr/<h>x<w>  float32 (R, h, w): every map of that grid size, rows in index order

Maps of one grid size share one array (rows ``offset``), so an artifact of many
thousand maps is a handful of files, written once.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import DcamError
from schemas.manifest import ARTIFACT_SCHEMA_VERSIONS, StageManifest, digest_files, read_manifest, write_manifest

KIND = "maps"
SCHEMA_VERSION = ARTIFACT_SCHEMA_VERSIONS[KIND]

#: Columns of ``index.parquet``; ``array`` and ``offset`` locate the map in ``maps.zarr``.
INDEX_COLUMNS = (
    "sample_id", "target", "word", "target_kind", "method", "step", "layer", "weight_rows",
    "h", "w", "raw_max", "array", "offset",
)


@dataclass
class MapSet:
    """An opened maps artifact."""

    path: Path
    index: Any  # pandas.DataFrame
    contexts: dict[str, dict[str, Any]]
    manifest: StageManifest
    _arrays: dict[str, np.ndarray]

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            import zarr

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._arrays[name] = np.asarray(zarr.open_array(str(self.path / "maps.zarr" / name), mode="r")[...])
        return self._arrays[name]

    def maps_for(self, rows) -> np.ndarray:
        """Maps of the given index rows (a DataFrame slice of one grid size) as (n, h, w)."""
        if len(rows) == 0:
            return np.zeros((0, 0, 0), np.float32)
        names = rows["array"].unique()
        if len(names) != 1:
            raise ValueError("maps_for: rows span several grid sizes; group by 'array' first")
        return self.array(names[0])[rows["offset"].to_numpy()]

    def groups(self):
        """Yield (array name, index rows, maps (n, h, w)) per grid size."""
        for name, rows in self.index.groupby("array", sort=True):
            yield name, rows, self.array(name)[rows["offset"].to_numpy()]


def write_mapset(
    out_dir: str | Path,
    *,
    index_rows: list[dict[str, Any]],
    maps: list[np.ndarray],
    contexts: dict[str, dict[str, Any]],
    manifest: StageManifest,
) -> StageManifest:
    """Write a maps artifact; ``maps[i]`` (h, w) belongs to ``index_rows[i]``.

    The manifest is written last, so a directory without one is an interrupted write.
    """
    import pandas as pd
    import zarr

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(index_rows) != len(maps):
        raise ValueError(f"{len(index_rows)} index rows for {len(maps)} maps")
    by_shape: dict[str, list[int]] = {}
    rows = []
    for i, (row, m) in enumerate(zip(index_rows, maps)):
        h, w = m.shape
        name = f"{h}x{w}"
        by_shape.setdefault(name, []).append(i)
        rows.append({**row, "h": h, "w": w, "array": name, "offset": len(by_shape[name]) - 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = zarr.open_group(str(out / "maps.zarr"), mode="w", zarr_format=3)
        for name, idx in by_shape.items():
            stack = np.stack([maps[i] for i in idx]).astype(np.float32)
            chunk = (min(len(idx), 4096),) + stack.shape[1:]
            root.create_array(name, data=stack, chunks=chunk)
    df = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    df.to_parquet(out / "index.parquet", index=False)
    (out / "contexts.json").write_text(json.dumps(contexts, sort_keys=True))
    manifest = manifest.model_copy(update={"kind": KIND, "schema_version": SCHEMA_VERSION,
                                           "content_digest": digest_files(out)})
    write_manifest(out, manifest)
    return manifest


def read_mapset(path: str | Path) -> MapSet:
    """Open a maps artifact (checks kind and schema version)."""
    import pandas as pd

    path = Path(path)
    manifest = read_manifest(path, KIND)
    try:
        index = pd.read_parquet(path / "index.parquet")
        contexts = json.loads((path / "contexts.json").read_text())
    except (OSError, ValueError) as e:
        raise DcamError(f"{path}: unreadable maps artifact: {e}") from None
    return MapSet(path, index, contexts, manifest, {})
