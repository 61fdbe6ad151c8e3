"""The occlusion and faithfulness stages: does a map show what the model used?

Both need the model (like capture) and read the capture store; everything they compute is written as an
artifact with a manifest (``schemas/LAYOUT.md``, ``faithfulness``).

``occlusion`` (a ``maps`` artifact, method ``occlusion``)
    Per word, the drop of its attribution score (same token state, same score as its attribution row) when
    each window of grid cells is replaced by the baseline image (:mod:`stages.faithfulness.perturb`): the
    model's own answer to "where did it look", stored like any base map so that it is scored and shown as a
    method.
``faithfulness``
    For every method's final maps (and ``occlusion`` and a seeded random-noise map, ``random``): deletion and
    insertion curves (RISE) in the map's cell order, their areas normalised by the unperturbed word probability,
    the same for a random order (the floor); the Spearman agreement with the occlusion map and with the map of
    token activation norms at the hooked block; target sensitivity; and cascading model randomisation on a
    small subset (Adebayo et al. 2018). ``summary.json`` holds one record per method with 95% bootstrap
    intervals over samples and the sanity flags (:func:`stages.faithfulness.checks.summarise`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from schemas.errors import DcamError
from schemas.manifest import (ARTIFACT_SCHEMA_VERSIONS, InputRef, SampleStatus, StageManifest, digest_files,
                              read_manifest, write_manifest)
from stages.faithfulness import checks, perturb

OCCLUSION_VERSION = "1.0"
FAITHFULNESS_VERSION = "1.0"
KIND = "faithfulness"
SCHEMA_VERSION = ARTIFACT_SCHEMA_VERSIONS[KIND]
TARGETS = ("objects", "words")


@dataclass(frozen=True)
class FaithfulnessConfig:
    """What determines the occlusion and faithfulness artifacts (recorded in their manifests).

    Attributes
    ----------
    baseline : {"mean", "blur"}
        What a removed cell shows (:func:`stages.faithfulness.perturb.baseline_image`).
    points : int
        Points on each deletion / insertion curve (``points - 1`` equal chunks of cells).
    window : int or None
        Occlusion window side in cells; None: one cell up to 256 cells, else the smallest window giving at
        most 256 half-overlapping windows (:func:`~stages.faithfulness.perturb.default_window`).
    targets : {"objects", "words"}
        ``objects``: the words that name an object present in the image (the words plausibility is scored
        on; needs the dataset); ``words``: every generated word.
    randomisation_samples : int
        Samples of the model-randomisation check (0 skips it).
    batch_size : int
        Perturbed images per forward.
    seed : int
        Seed of the random orders, the random-noise maps and the re-initialised weights.
    limit : int or None
        Only the first ``limit`` samples (in sample-id order).
    random_orders : int
        Random cell orders averaged into each word's floor, and seeded noise maps averaged into the ``random``
        method's curves (the random-order AUC varies a lot with where the object's cells happen to fall).
    """

    baseline: str = "mean"
    points: int = 13
    window: int | None = None
    targets: str = "objects"
    randomisation_samples: int = 4
    batch_size: int = 16
    seed: int = 0
    limit: int | None = None
    random_orders: int = 3

    def __post_init__(self) -> None:
        if self.baseline not in perturb.BASELINES:
            raise DcamError(f"baseline: must be one of {', '.join(perturb.BASELINES)}, got {self.baseline!r}")
        if self.targets not in TARGETS:
            raise DcamError(f"targets: must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        for name, low in (("points", 3), ("batch_size", 1), ("random_orders", 1), ("randomisation_samples", 0), ("window", 1), ("limit", 1)):
            v = getattr(self, name)
            if v is not None and v < low:
                raise DcamError(f"{name}: must be >= {low}, got {v}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> dict[str, Any]:
        """The part of the config the results depend on (the batch size only changes speed)."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}

    def occlusion_key(self) -> dict[str, Any]:
        """The part of the config the occlusion maps depend on."""
        return {"baseline": self.baseline, "window": self.window, "targets": self.targets, "limit": self.limit}


# --------------------------------------------------------------------------------------------- helpers
def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def _read_image(path: str) -> np.ndarray:
    """The sample's image, read as capture reads it (same pixel limit, one-line errors)."""
    from stages.capture.run import decode_image

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DcamError(f"image {path}: {e.strerror or e}") from None
    return decode_image(data, path)


def _targets(sample) -> dict[int, Any]:
    from stages.capture.targets import Target

    return {int(t["index"]): Target(int(t["index"]), t["kind"], t["text"], tuple(t["positions"]),
                                    tuple(t["token_ids"]), int(t["unmask_step"])) for t in sample.targets}


def evaluated_targets(sample, dataset_sample, targets: str) -> set[int]:
    """Indices of the word targets the stages evaluate (see :class:`FaithfulnessConfig`)."""
    all_targets = _targets(sample)
    words = {i for i, t in all_targets.items() if t.kind == "word"}
    if targets == "words":
        return words
    if dataset_sample is None:
        raise DcamError("targets 'objects' needs the dataset (to know which words name an object); "
                        "give the dataset or use targets 'words'")
    from stages.ingest.loaders import load_mask
    from stages.ingest.words import classify_word

    present = set(np.unique(load_mask(dataset_sample)).tolist()) - {0}
    phrases = dataset_sample.source in ("grandf", "tam-anno")
    out = set()
    for i in words:
        kind, label = classify_word(all_targets[i].text, dataset_sample.categories, phrases=phrases)
        if kind == "object" and label in present:
            out.add(i)
    return out


def _dataset_index(dataset: str | Path | None) -> dict[str, Any]:
    if dataset is None:
        return {}
    from stages.ingest.loaders import load_dataset

    return {s.sample_id: s for s in load_dataset(dataset).samples}


def _state_step(row: Mapping[str, Any], target) -> int:
    """The token state a map explains: its selected step, or the word's unmask step for averaged maps."""
    step = int(row["step"])
    return step if step >= 0 else int(target.unmask_step)


def _sample_ids(store, selection, limit: int | None) -> list[str]:
    stored = set(store.sample_ids())
    ok = [sid for sid in sorted(set(selection["sample_id"])) if sid in stored and store.sample(sid).ok]
    return ok[:limit] if limit else ok


class _Perturber:
    """One sample's image, baseline and cell layout; scores sets of removed cells in batches."""

    def __init__(self, scorer, image: np.ndarray, grid: tuple[int, int], baseline: str):
        self.scorer = scorer
        self.image = image
        self.grid = grid
        self.cells = perturb.cell_index_image(image.shape[:2], grid)
        self.base = perturb.baseline_image(image, baseline, grid=grid)

    def __call__(self, removed: np.ndarray, state: np.ndarray, targets) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {"score": [], "prob": []}
        step = self.scorer.batch
        for i in range(0, len(removed), step):
            imgs = perturb.compose(self.image, self.base, removed[i : i + step], self.cells)
            res = self.scorer(imgs, state, targets)
            for k in out:
                out[k].append(res[k])
        return {k: np.concatenate(v) if v else np.zeros((0, len(targets)), np.float32) for k, v in out.items()}


def _setup(sample, selection, dataset_sample, adapter, config: FaithfulnessConfig):
    """A sample's targets, its selection rows of evaluated targets, a perturber of its image, its token states."""
    from stages.faithfulness.model import PerturbationScorer

    keep = evaluated_targets(sample, dataset_sample, config.targets)
    rows = selection[(selection["sample_id"] == sample.sample_id) & selection["target"].isin(sorted(keep))]
    scorer = PerturbationScorer(adapter, mode=sample.attrs.get("mode", "full"), prompt=sample.attrs.get("prompt"),
                                batch_size=config.batch_size)
    pert = _Perturber(scorer, _read_image(sample.attrs["image_path"]), sample.grid, config.baseline)
    return _targets(sample), rows, pert, sample.array("tokens")


def _for_each_sample(store, ids: Sequence[str], work: Callable[[Any], int],
                     progress: Callable[[str], None] | None) -> tuple[list[SampleStatus], int]:
    """``work(sample)`` (returning its perturbed forwards) for each sample; a sample that fails is recorded with
    its reason and the run goes on."""
    statuses, forwards = [], 0
    for sid in ids:
        try:
            forwards += work(store.sample(sid))
            statuses.append(SampleStatus(sample_id=sid, status="ok"))
        except (DcamError, ValueError, OSError) as e:
            statuses.append(SampleStatus(sample_id=sid, status="failed", reason=str(e)))
        if progress:
            progress(sid)
    return statuses, forwards


def _context(sample) -> dict[str, Any]:
    from stages.explain.basemap import sample_context

    return sample_context(sample)


# --------------------------------------------------------------------------------------------- occlusion
def run_occlusion(store_path: str | Path, selection, out_dir: str | Path, *, adapter, config: FaithfulnessConfig,
                  dataset: str | Path | None = None, progress: Callable[[str], None] | None = None) -> StageManifest:
    """Write the ``occlusion`` maps artifact for the selected word targets of every sample.

    Parameters
    ----------
    store_path : path
        The capture store.
    selection : DataFrame
        Selection rows (``stages.explain.select``) of the explain run: which step each target's maps explain.
    adapter : ModelAdapter
        The captured model.
    config : FaithfulnessConfig
    dataset : path, optional
        Needed for ``targets='objects'``.
    """
    from schemas.capture import CaptureStore
    from schemas.maps import SCHEMA_VERSION as MAPS_SCHEMA_VERSION, write_mapset

    from stages.faithfulness.model import refuse_self_conditioned

    refuse_self_conditioned(adapter)
    t0 = time.perf_counter()
    store = CaptureStore.open(store_path)
    by_id = _dataset_index(dataset)
    index_rows, maps, contexts = [], [], {}

    def work(sample) -> int:
        sid, grid = sample.sample_id, sample.grid
        targets, rows, pert, tokens = _setup(sample, selection, by_id.get(sid), adapter, config)
        windows = perturb.occlusion_windows(grid, config.window or perturb.default_window(grid))
        steps: dict[int, list[int]] = {}
        for rec in rows.drop_duplicates(["target"]).to_dict(orient="records"):
            steps.setdefault(_state_step(rec, targets[int(rec["target"])]), []).append(int(rec["target"]))
        occ: dict[int, np.ndarray] = {}
        for step, tids in sorted(steps.items()):
            ts = [targets[t] for t in tids]
            ref = pert(np.zeros((1, windows.shape[1]), bool), tokens[step], ts)["score"][0]
            drops = ref[None, :] - pert(windows, tokens[step], ts)["score"]
            for t, m in zip(tids, perturb.occlusion_map(drops, windows, grid)):
                occ[t] = m
        for rec in rows.drop_duplicates(["target", "layer"]).to_dict(orient="records"):
            m = occ[int(rec["target"])]
            index_rows.append({"sample_id": sid, "target": int(rec["target"]), "word": rec["word"],
                               "target_kind": rec["target_kind"], "method": "occlusion", "step": int(rec["step"]),
                               "layer": int(rec["layer"]), "weight_rows": 1, "raw_max": float(m.max())})
            maps.append(m)
        contexts[sid] = _context(sample)
        return pert.scorer.forwards

    statuses, forwards = _for_each_sample(store, _sample_ids(store, selection, config.limit), work, progress)
    wall = time.perf_counter() - t0
    cap = store.manifest()
    manifest = StageManifest(
        kind="maps", schema_version=MAPS_SCHEMA_VERSION, stage="occlusion", stage_version=OCCLUSION_VERSION,
        config={**config.occlusion_key(), "score": "attribution score drop"},
        inputs={"capture": InputRef(path=str(Path(store_path).resolve()), kind="capture",
                                    content_digest=cap.content_digest if cap else store.content_digest())},
        samples=statuses, timings={"wall": wall, "forwards": float(forwards),
                                   "forwards_per_second": forwards / wall if wall > 0 else 0.0},
    )
    return write_mapset(out_dir, index_rows=index_rows, maps=maps, contexts=contexts, manifest=manifest)


# --------------------------------------------------------------------------------------------- faithfulness
def _maps_by_key(path: str | Path, ids: set[str]) -> dict[tuple[str, int, int], np.ndarray]:
    from schemas.maps import read_mapset

    ms = read_mapset(path)
    out = {}
    for _name, rows, stack in ms.groups():
        for rec, m in zip(rows[["sample_id", "target", "layer"]].itertuples(index=False), stack):
            if rec.sample_id in ids:
                out[(rec.sample_id, int(rec.target), int(rec.layer))] = np.asarray(m, dtype=np.float32)
    return out


def _curves(pert: _Perturber, state, ts, col: int, order: np.ndarray, points: int,
            ends: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (word probability) of one cell order; ``ends`` = (unperturbed, all removed)."""
    masks = perturb.curve_masks(order, points)[1:-1]
    probs = pert(np.concatenate([masks, ~masks]), state, ts)["prob"][:, col]
    k = len(masks)
    deletion = np.concatenate([[ends[0]], probs[:k], [ends[1]]])
    insertion = np.concatenate([[ends[1]], probs[k:], [ends[0]]])
    return deletion, insertion


def run_faithfulness(store_path: str | Path, methods: Mapping[str, str | Path], selection, out_dir: str | Path, *,
                     adapter, config: FaithfulnessConfig, chains: Mapping[str, Any] | None = None,
                     dataset: str | Path | None = None,
                     progress: Callable[[str], None] | None = None) -> StageManifest:
    """Write the ``faithfulness`` artifact.

    Parameters
    ----------
    store_path : path
        The capture store.
    methods : mapping of str to path
        Method name -> its final maps artifact; must include ``occlusion`` (from :func:`run_occlusion`).
    selection : DataFrame
        The explain run's selection rows.
    adapter : ModelAdapter
    config : FaithfulnessConfig
    chains : mapping of str to Chain, optional
        The chains of the methods to put through model randomisation (default: none).
    dataset : path, optional
        Needed for ``targets='objects'``.
    """
    import pandas as pd

    from schemas.capture import CaptureStore

    from stages.faithfulness.model import refuse_self_conditioned

    if "occlusion" not in methods:
        raise DcamError("faithfulness: the occlusion maps are missing (run the occlusion stage first)")
    refuse_self_conditioned(adapter)
    t0 = time.perf_counter()
    store = CaptureStore.open(store_path)
    by_id = _dataset_index(dataset)
    ids = _sample_ids(store, selection, config.limit)
    names = [m for m in methods if m != "occlusion"] + ["occlusion", "random"]
    maps = {m: _maps_by_key(p, set(ids)) for m, p in methods.items()}
    per_map, curves, sens = [], [], []

    def work(sample) -> int:
        sid, grid = sample.sample_id, sample.grid
        targets, rows, pert, tokens = _setup(sample, selection, by_id.get(sid), adapter, config)
        rows = rows.drop_duplicates(["target", "layer"]).to_dict(orient="records")
        act_row = sample.array("act_row")
        n_cells = grid[0] * grid[1]
        by_layer: dict[tuple[int, str], list[np.ndarray]] = {}
        for rec in rows:
            t, layer = int(rec["target"]), int(rec["layer"])
            step = _state_step(rec, targets[t])
            ts = [targets[t]]
            state = tokens[step]
            ends = pert(np.stack([np.zeros(n_cells, bool), np.ones(n_cells, bool)]), state, ts)["prob"][:, 0]
            occ = maps["occlusion"].get((sid, t, layer))
            if occ is None:
                raise DcamError(f"no occlusion map for target {t} layer {layer}")
            norm = checks.token_norm_map(sample.array("acts", layer)[act_row[int(rec["attr_row"])]], grid)
            ident = {"sample_id": sid, "target": t, "word": rec["word"], "layer": layer, "step": step}

            def aucs(orders, method: str, kinds: tuple[str, str]) -> tuple[float, float]:
                """Mean deletion and insertion AUC over cell orders (their curves recorded)."""
                out = []
                for order in orders:
                    dele, ins = _curves(pert, state, ts, 0, order, config.points, ends)
                    curves.extend({**ident, "method": method, "curve": c, "values": v.tolist()}
                                  for c, v in zip(kinds, (dele, ins)))
                    out.append((perturb.normalised_auc(dele, ends[0]), perturb.normalised_auc(ins, ends[0])))
                return tuple(float(np.mean(v)) for v in zip(*out))

            draws = range(config.random_orders)
            floor = aucs([np.random.default_rng(_seed(config.seed, sid, t, "order", k)).permutation(n_cells)
                          for k in draws], "", ("random_deletion", "random_insertion"))
            for m in names:
                if m == "random":  # seeded noise maps, scored like a method: they must land on the floor
                    noise = [np.random.default_rng(_seed(config.seed, sid, t, "noise", k)).random(grid).astype(np.float32)
                             for k in draws]
                    mp, orders = noise[0], [perturb.cell_order(n, seed=_seed(config.seed, sid, t, m, k))
                                            for k, n in enumerate(noise)]
                else:
                    mp = maps[m].get((sid, t, layer))
                    if mp is None:
                        continue
                    orders = [perturb.cell_order(mp, seed=_seed(config.seed, sid, t, m))]
                deletion, insertion = aucs(orders, m, ("deletion", "insertion"))
                per_map.append({
                    **ident, "method": m, "prob": float(ends[0]), "prob_removed": float(ends[1]),
                    "deletion_auc": deletion, "insertion_auc": insertion,
                    "random_deletion_auc": floor[0], "random_insertion_auc": floor[1],
                    "occlusion_spearman": checks.spearman(mp, occ), "norm_spearman": checks.spearman(mp, norm),
                })
                by_layer.setdefault((layer, m), []).append(mp)
        for (layer, m), ms in by_layer.items():
            if len(ms) >= 2:
                sens.append({"sample_id": sid, "layer": layer, "method": m,
                             "target_sensitivity": checks.mean_pairwise_spearman(ms)})
        return pert.scorer.forwards

    statuses, forwards = _for_each_sample(store, ids, work, progress)
    per_map_df = pd.DataFrame(per_map, columns=["sample_id", "target", "word", "layer", "step", "method", "prob",
                                                "prob_removed", *checks.PER_MAP])
    sens_df = pd.DataFrame(sens, columns=["sample_id", "layer", "method", "target_sensitivity"])
    ok = [s.sample_id for s in statuses if s.status == "ok"]
    rand_df, above = randomisation_check(store, ok[: config.randomisation_samples], selection, chains or {},
                                         adapter=adapter, config=config, dataset_index=by_id)
    summary = checks.summarise(per_map_df, sens_df, rand_df, above_hook_level=above, order=names)
    wall = time.perf_counter() - t0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_map_df.to_parquet(out / "per_map.parquet", index=False)
    sens_df.to_parquet(out / "sensitivity.parquet", index=False)
    rand_df.to_parquet(out / "randomisation.parquet", index=False)
    pd.DataFrame(curves, columns=["sample_id", "target", "word", "layer", "step", "method", "curve", "values"]) \
        .to_parquet(out / "curves.parquet", index=False)
    doc = {"baseline": config.baseline, "points": config.points, "targets": config.targets,
           "randomisation_level_above_hook": above, "thresholds": {
               "energy_rho": checks.ENERGY_RHO, "target_rho": checks.TARGET_RHO,
               "randomised_rho": checks.RANDOMISED_RHO},
           "forwards": forwards, "seconds": wall, "methods": summary}
    (out / "summary.json").write_text(json.dumps(_jsonable(doc), indent=2, sort_keys=False))
    cap = store.manifest()
    inputs = {"capture": InputRef(path=str(Path(store_path).resolve()), kind="capture",
                                  content_digest=cap.content_digest if cap else store.content_digest())}
    for m, p in methods.items():
        inputs[f"maps:{m}"] = InputRef(path=str(Path(p).resolve()), kind="maps", content_digest=read_manifest(p).content_digest)
    manifest = StageManifest(
        kind=KIND, schema_version=SCHEMA_VERSION, stage="faithfulness", stage_version=FAITHFULNESS_VERSION,
        config=config.to_dict(), inputs=inputs, content_digest=digest_files(out), samples=statuses,
        timings={"wall": wall, "forwards": float(forwards), "forwards_per_second": forwards / wall if wall > 0 else 0.0},
    )
    write_manifest(out, manifest)
    return manifest


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o


# --------------------------------------------------------------------------------------------- randomisation
def randomisation_check(store, sample_ids: Sequence[str], selection, chains: Mapping[str, Any], *, adapter,
                        config: FaithfulnessConfig, dataset_index: Mapping[str, Any]):
    """Cascading model randomisation (Adebayo et al. 2018) on ``sample_ids``.

    The output head, then each block from the top, is re-initialised cumulatively
    (:func:`stages.faithfulness.model.cascade_modules`); at every level each chain's maps are recomputed at the
    same token states and targets and compared (Spearman) with the trained model's, recomputed the same way.
    The weights are restored afterwards.

    Returns
    -------
    (DataFrame, str or None)
        Rows (sample_id, target, layer, method, level_index, level, spearman), and the level at which every
        weight above the (first) hooked block is randomised.
    """
    import pandas as pd
    import torch

    from stages.faithfulness.model import attribution_arrays, cascade_modules, reinitialise
    from stages.refine import MapContext

    cols = ["sample_id", "target", "layer", "method", "level_index", "level", "spearman"]
    if not sample_ids or not chains:
        return pd.DataFrame([], columns=cols), None
    levels = cascade_modules(adapter)
    work = []  # (sid, image, state, targets at the state, layer, evaluated target ids, context)
    for sid in sample_ids:
        sample = store.sample(sid)
        keep = evaluated_targets(sample, dataset_index.get(sid), config.targets)
        targets = _targets(sample)
        rows = selection[(selection["sample_id"] == sid) & selection["target"].isin(sorted(keep))]
        image = _read_image(sample.attrs["image_path"])
        tokens = sample.array("tokens")
        ctx = _context(sample)
        for layer, lrows in rows.groupby("layer", sort=True):
            steps: dict[int, list[int]] = {}
            for rec in lrows.drop_duplicates(["target"]).to_dict(orient="records"):
                steps.setdefault(_state_step(rec, targets[int(rec["target"])]), []).append(int(rec["target"]))
            for step, tids in sorted(steps.items()):
                work.append((sid, image, tokens[step], [targets[t] for t in tids], int(layer), sample.grid,
                             sample.attrs.get("mode", "full"), sample.attrs.get("prompt"), ctx))
    hooked = min(w[4] for w in work) if work else 0
    n_blocks = len(adapter.blocks())
    above = "head" if hooked + 1 >= n_blocks else f"block{hooked + 1}"

    def all_maps() -> dict[tuple, np.ndarray]:
        out = {}
        for sid, image, state, ts, layer, grid, mode, prompt, ctx in work:
            arrays = attribution_arrays(adapter, image, state, ts, layer=layer, mode=mode, prompt=prompt)
            contexts = [MapContext(generated_ids=ctx["generated_ids"], words=ctx["words"], num_steps=ctx["num_steps"],
                                   seed=ctx["seed"]) for _ in ts]
            for name, chain in chains.items():
                for t, m in zip(ts, chain.maps(arrays, grid, contexts=contexts)):
                    out[(sid, t.index, layer, name)] = m
        return out

    params = [p for mod in levels[-1][1] for p in mod.parameters()]  # the last level holds every module
    backup = [p.detach().to("cpu", copy=True) for p in params]
    rows_out = []
    try:
        trained = all_maps()
        for k, (level, mods) in enumerate(levels):
            reinitialise(mods[-1:], seed=_seed(config.seed, "randomise", level))  # cumulative: earlier ones stay
            for key, m in all_maps().items():
                sid, t, layer, name = key
                rows_out.append({"sample_id": sid, "target": t, "layer": layer, "method": name, "level_index": k + 1,
                                 "level": level, "spearman": checks.spearman(trained[key], m)})
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b.to(p.device))
    return pd.DataFrame(rows_out, columns=cols), above
