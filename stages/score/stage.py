"""Scoring stage: every map of a maps artifact against the dataset's ground-truth masks.

Which maps are scored how:

* a word that names an object of the image (:func:`stages.ingest.words.classify_word`):
  the paper's protocol against the best-matching object (``obj_iou``, ``precision``,
  ``recall``, ``contrast``, ``concentration``, pointing games over all objects: the
  paper's Obj-IoU takes the best object, ``method.md`` §1.6) and against the object the
  word names (suffix ``_word``);
* the official contrastive target: the paper's protocol (it is the paper's one map);
* the whole-response target: the paper's protocol with prefix ``response_``;
* per sample and layer, TAM's protocol over all word maps (``tam_obj_iou`` for matched
  nouns whose category is in the image, ``func_iou`` for function words), with TAM's
  uint8 resize by default (``tam_resize``, :func:`stages.score.metrics.tam_binarize`).

Words that name no object in the image (colours, function words) get no paper-protocol
row: there is no ground truth for where they should look.

Maps are brought to [0, 1] before scoring by an explicit, recorded rule
(:func:`unit_map`): ReLU, then division by the maximum. Maps that presets already
normalise are unchanged by it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from schemas.errors import DcamError
from schemas.manifest import ARTIFACT_SCHEMA_VERSIONS, InputRef, SampleStatus, StageManifest, digest_files, read_manifest, write_manifest
from schemas.maps import read_mapset

STAGE_VERSION = "1.1"  # 1.1: TAM protocol as eval.py (absent categories skipped, uint8 resize)
KIND = "scores"


#: Paper-protocol metrics against the best-matching object (``method.md`` §1.6) plus the pointing games.
_PAPER_METRICS = ("obj_iou", "precision", "recall", "contrast", "concentration", "pointing_hit",
                  "energy_pointing_bbox", "energy_pointing_mask")
#: The same against the object the word names.
_WORD_METRICS = ("obj_iou", "pointing_hit", "energy_pointing_bbox", "energy_pointing_mask")


def summary_keys(df) -> tuple[str, ...]:
    """How a metrics table is summarised: per method, and per layer too when it holds several layers (a
    layer sweep). One rule for the score node and the merge of its shards."""
    return ("method", "layer") if not df.empty and df["layer"].nunique() > 1 else ("method",)


def unit_map(m: np.ndarray) -> np.ndarray:
    """ReLU, then divide by the maximum (an all-non-positive map becomes all zeros): float64, the one
    normalisation of :mod:`stages.refine.normalize` (:func:`~stages.refine.normalize.divide_by_max`)."""
    from stages.refine.normalize import divide_by_max

    m = np.maximum(np.asarray(m, dtype=np.float64), 0.0)
    return divide_by_max(m.reshape(1, -1)).reshape(m.shape) if m.size else m  # the peak of the whole map


def score_sample(sample, rows, maps, *, method: str, tam_resize: str = "uint8") -> list[dict]:
    """Long-format metric rows of one sample's maps (``rows``: index rows, ``maps``: (n, h, w))."""
    from stages.ingest.loaders import load_mask
    from stages.ingest.words import classify_word
    from stages.score.aggregate import long_rows
    from stages.score.metrics import score_map, tam_word_scores

    mask = load_mask(sample)
    present = set(np.unique(mask).tolist()) - {0}
    phrases = sample.source in ("grandf", "tam-anno")
    out = []
    word_maps, word_classes, word_rows = [], [], []
    for rec, m in zip(rows.to_dict(orient="records"), maps):
        u = unit_map(m)
        ident = dict(sample_id=sample.sample_id, target=rec["target"], word=rec["word"], method=method,
                     step=rec["step"], layer=rec["layer"])
        if rec["target_kind"] == "response":
            s = score_map(u, mask)
            out += long_rows({f"response_{k}": s[k] for k in _PAPER_METRICS}, **ident)
            continue
        if rec["target_kind"] == "contrastive":  # the official single map: best-matching object
            out += long_rows({k: score_map(u, mask)[k] for k in _PAPER_METRICS}, **ident)
            continue
        kind, label = classify_word(rec["word"], sample.categories, phrases=phrases)
        if kind == "object" and label in present:
            best = score_map(u, mask)
            own = score_map(u, mask, label=label)
            out += long_rows({k: best[k] for k in _PAPER_METRICS}, **ident)
            out += long_rows({f"{k}_word": own[k] for k in _WORD_METRICS}, **ident)
        word_maps.append(u)
        word_classes.append((kind, label))  # TAM: an absent category gets no Obj-IoU, its threshold counts
        word_rows.append(ident)
    # TAM protocol, per layer, over the word maps in order.
    by_layer: dict[int, list[int]] = {}
    for i, ident in enumerate(word_rows):
        by_layer.setdefault(ident["layer"], []).append(i)
    for idx in by_layer.values():
        for e in tam_word_scores([word_maps[i] for i in idx], [word_classes[i] for i in idx], mask,
                                 tam_resize=tam_resize):
            ident = word_rows[idx[e["index"]]]
            out += long_rows({e["metric"]: e["value"]}, **ident)
    return out


def run_score(maps_dir: str | Path, dataset: str | Path, out_dir: str | Path, *, method: str | None = None,
              tam_resize: str = "uint8") -> StageManifest:
    """Score a maps artifact against the dataset's masks; writes ``metrics.parquet``/``.csv`` and ``summary.csv``.

    ``tam_resize`` (``"uint8"``, TAM's, or ``"float"``) is how TAM's protocol resizes a map to the mask
    (:func:`stages.score.metrics.tam_binarize`); it is recorded in the manifest's config.
    """
    from stages.score.metrics import TAM_RESIZE_MODES

    from stages.ingest.loaders import load_dataset
    from stages.score.aggregate import frame, summarise, write_table

    if tam_resize not in TAM_RESIZE_MODES:
        raise DcamError(f"tam_resize: expected one of {', '.join(TAM_RESIZE_MODES)}, got {tam_resize!r}")
    t0 = time.perf_counter()
    ms = read_mapset(maps_dir)
    method = method or ms.manifest.stage
    loaded = load_dataset(dataset)
    by_id = {s.sample_id: s for s in loaded.samples}
    rows, statuses = [], []
    for sid, idx in ms.index.groupby("sample_id", sort=True):
        sample = by_id.get(sid)
        if sample is None:
            statuses.append(SampleStatus(sample_id=sid, status="failed", reason="sample not in the dataset (no mask)"))
            continue
        try:
            for name, sub in idx.groupby("array"):
                rows += score_sample(sample, sub, ms.maps_for(sub), method=method, tam_resize=tam_resize)
            statuses.append(SampleStatus(sample_id=sid, status="ok"))
        except (DcamError, ValueError, OSError) as e:
            statuses.append(SampleStatus(sample_id=sid, status="failed", reason=str(e)))
    statuses += [s for s in ms.manifest.samples if s.status == "failed"]
    df = frame(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_table(df, out, name="metrics")
    summarise(df, by=summary_keys(df)).to_csv(out / "summary.csv", index=False)
    ds = {}
    try:
        dm = read_manifest(dataset)
        ds = {"dataset": InputRef(path=str(Path(dataset).resolve()), kind=dm.kind, content_digest=dm.content_digest)}
    except DcamError:
        pass
    manifest = StageManifest(
        kind=KIND, schema_version=ARTIFACT_SCHEMA_VERSIONS[KIND], stage="score", stage_version=STAGE_VERSION,
        config={"method": method, "normalisation": "relu-then-max", "tam_resize": tam_resize},
        inputs={"maps": InputRef(path=str(Path(maps_dir).resolve()), kind="maps", content_digest=ms.manifest.content_digest), **ds},
        content_digest=digest_files(out), samples=statuses, timings={"wall": time.perf_counter() - t0},
    )
    write_manifest(out, manifest)
    return manifest
