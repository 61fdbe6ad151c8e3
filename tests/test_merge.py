"""Merging per-shard artifacts (``stages.explain.merge``) on hand-made maps and scores artifacts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from schemas.manifest import SampleStatus, StageManifest, digest_files, read_manifest, write_manifest
from schemas.maps import read_mapset, write_mapset
from stages.explain.merge import merge_maps, merge_scores
from stages.score.aggregate import frame, summarise, write_table


def _row(sample_id, target, word, layer=1):
    return {"sample_id": sample_id, "target": target, "word": word, "target_kind": "word", "method": "gradcam",
            "step": 3, "layer": layer, "weight_rows": 1, "raw_max": float(target + 1)}


def _maps_artifact(path, rows, maps, contexts, statuses, stage="base"):
    manifest = StageManifest(kind="maps", schema_version="", stage=stage, stage_version="1.0", samples=statuses)
    return write_mapset(path, index_rows=rows, maps=maps, contexts=contexts, manifest=manifest)


def _grid(h, w, start):
    return np.arange(start, start + h * w, dtype=np.float32).reshape(h, w)


# Shard 0: sample "a", two 2x3 maps and one 4x4 map; shard 1: sample "b", one 3x3 and one 2x3 map (written in
# that order), and a failed sample "c". Merged: shard by shard, each shard's maps grid by grid (its arrays in
# name order), in their order within a grid.
SHARDS = [
    ([_row("a", 0, "red"), _row("a", 1, "circle"), _row("a", 2, "the")],
     [_grid(2, 3, 0), _grid(4, 4, 100), _grid(2, 3, 10)],
     {"a": {"words": ["red", "circle", "the"]}},
     [SampleStatus(sample_id="a", status="ok")]),
    ([_row("b", 0, "square"), _row("b", 1, "blue")],
     [_grid(3, 3, 200), _grid(2, 3, 300)],
     {"b": {"words": ["square", "blue"]}},
     [SampleStatus(sample_id="b", status="ok"), SampleStatus(sample_id="c", status="failed", reason="capture failed")]),
]
EXPECTED_ORDER = [  # (sample, target, map)
    ("a", 0, _grid(2, 3, 0)), ("a", 2, _grid(2, 3, 10)), ("a", 1, _grid(4, 4, 100)),
    ("b", 1, _grid(2, 3, 300)), ("b", 0, _grid(3, 3, 200)),
]


@pytest.fixture
def shard_dirs(tmp_path):
    dirs = []
    for i, (rows, maps, contexts, statuses) in enumerate(SHARDS):
        _maps_artifact(tmp_path / f"shard{i}", rows, maps, contexts, statuses)
        dirs.append(tmp_path / f"shard{i}")
    return dirs


def test_merge_maps_concatenates_disjoint_shards(shard_dirs, tmp_path):
    manifest = merge_maps(shard_dirs, tmp_path / "merged")
    ms = read_mapset(tmp_path / "merged")
    got = [(rec["sample_id"], rec["target"], m) for _, rows, stack in ms.groups()
           for rec, m in zip(rows.to_dict(orient="records"), stack)]
    by_key = {(s, t): m for s, t, m in got}
    assert list(zip(ms.index["sample_id"], ms.index["target"])) == [(s, t) for s, t, _ in EXPECTED_ORDER]
    for s, t, m in EXPECTED_ORDER:
        np.testing.assert_array_equal(by_key[(s, t)], m)
    # rows keep their order within a grid size: a0, a2, b1 share the 2x3 array at offsets 0, 1, 2
    two_by_three = ms.index[ms.index["array"] == "2x3"].sort_values("offset")
    assert list(zip(two_by_three["sample_id"], two_by_three["target"])) == [("a", 0), ("a", 2), ("b", 1)]
    assert list(two_by_three["offset"]) == [0, 1, 2]
    # every other index column is carried over unchanged
    merged = ms.index.set_index(["sample_id", "target"])
    for rows, *_ in SHARDS:
        for r in rows:
            for col in ("word", "target_kind", "method", "step", "layer", "weight_rows", "raw_max"):
                assert merged.loc[(r["sample_id"], r["target"]), col] == r[col]
    assert ms.contexts == {"a": {"words": ["red", "circle", "the"]}, "b": {"words": ["square", "blue"]}}
    assert [(s.sample_id, s.status) for s in manifest.samples] == [("a", "ok"), ("b", "ok"), ("c", "failed")]
    assert manifest.stage == "base" and manifest.config == {"merge": 2}
    assert {k: v.content_digest for k, v in manifest.inputs.items()} == {
        f"shard{i}": read_manifest(d).content_digest for i, d in enumerate(shard_dirs)}
    assert manifest.content_digest == digest_files(tmp_path / "merged")
    assert read_manifest(tmp_path / "merged", "maps").content_digest == manifest.content_digest


def test_merge_maps_of_the_same_shards_twice_is_the_same_content(shard_dirs, tmp_path):
    one = merge_maps(shard_dirs, tmp_path / "m1")
    two = merge_maps(shard_dirs, tmp_path / "m2")
    assert one.content_digest == two.content_digest


def _scores_artifact(path, rows, method="diffusion-cam"):
    df = frame(rows)
    write_table(df, path, name="metrics")
    summarise(df).to_csv(path / "summary.csv", index=False)
    samples = [SampleStatus(sample_id=s, status="ok") for s in sorted(df["sample_id"].unique())]
    write_manifest(path, StageManifest(kind="scores", schema_version="1.0", stage="score", stage_version="1.1",
                                       config={"method": method, "normalisation": "relu-then-max"},
                                       content_digest=digest_files(path), samples=samples))


def _metric_rows(sample_id, values, *, target=0, layer=1, method="diffusion-cam"):
    return [{"sample_id": sample_id, "target": target, "word": "circle", "method": method, "step": 3,
             "layer": layer, "metric": k, "value": v} for k, v in values.items()]


def test_merge_scores_recomputes_the_summary_from_the_concatenated_metrics(tmp_path):
    """Means over both shards: obj_iou 0.3, contrast 4 (contrast score 0.2), concentration 0.6, so
    F3 = 3 / (1/0.3 + 1/0.2 + 1/0.6) = 0.3 (the mean of the shards' own F3s, 0.1765 and 0.4131, is not)."""
    a = _metric_rows("a", {"obj_iou": 0.2, "contrast": 2.0, "concentration": 0.5, "pointing_hit": 1.0})
    b = _metric_rows("b", {"obj_iou": 0.4, "contrast": 6.0, "concentration": 0.7, "pointing_hit": 0.0})
    _scores_artifact(tmp_path / "s0", a)
    _scores_artifact(tmp_path / "s1", b)
    manifest = merge_scores([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    metrics = pd.read_parquet(tmp_path / "merged" / "metrics.parquet")
    pd.testing.assert_frame_equal(metrics, frame(a + b))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "merged" / "metrics.csv"), frame(a + b), check_dtype=False)
    summary = pd.read_csv(tmp_path / "merged" / "summary.csv")
    assert summary["method"].tolist() == ["diffusion-cam"]
    got = summary.iloc[0]
    expected = {"n_samples": 2, "n_maps": 2, "obj_iou": 0.3, "contrast": 4.0, "concentration": 0.6,
                "pointing_accuracy": 0.5, "f3": 0.3}
    assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert manifest.config == {"method": "diffusion-cam", "normalisation": "relu-then-max", "merge": 2}
    assert [s.sample_id for s in manifest.samples] == ["a", "b"]
    assert set(manifest.inputs) == {"shard0", "shard1"}
    assert manifest.content_digest == digest_files(tmp_path / "merged")


def test_merged_summary_of_a_layer_sweep_is_the_unsharded_one(tmp_path):
    rows = {s: _metric_rows(s, {"obj_iou": v}, layer=layer)
            for s, v, layer in (("a", 0.2, 1), ("b", 0.6, 2))}
    _scores_artifact(tmp_path / "s0", rows["a"])
    _scores_artifact(tmp_path / "s1", rows["b"])
    merge_scores([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    summary = pd.read_csv(tmp_path / "merged" / "summary.csv")
    # run_score's rule (stages/score/stage.py): one summary row per layer when there are several
    assert summary["layer"].tolist() == [1, 2]
    assert summary["obj_iou"].tolist() == pytest.approx([0.2, 0.6])
