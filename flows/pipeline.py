"""The pipeline as plain functions, one per stage and shard (Kedro-style nodes).

The Prefect flows (:mod:`flows.prefect_flows`) wrap these as coarse tasks; ``dcam demo``
calls them directly. Every function takes paths and small configs and returns small
dicts (paths, digests, computed/cached), never arrays.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

from flows.config import RunConfig
from schemas.errors import DcamError
from schemas.lock import exclusive, store_lock_path
from schemas.storage import ArtifactRoot
from stages.catalog import artifact_dir, artifact_key, dataset_digest, is_done, materialize
from stages.capture import STAGE_VERSION as CAPTURE_VERSION
from stages.chain import Chain



# ------------------------------------------------------------------------------------------- root
def artifact_root(cfg: RunConfig) -> ArtifactRoot:
    """The run's artifact root: its local directory, or the local mirror of its URL (``s3://...``)."""
    return ArtifactRoot(cfg.root, cfg.storage_options, cfg.cache_dir)


# ------------------------------------------------------------------------------------------- chains
def resolve_chains(cfg: RunConfig) -> list[Chain]:
    """Presets, custom chains and the sweep grid of a config, as chains (unique names)."""
    from stages.chain import as_chain, sweep_chains
    from stages.graph import check_unique_names

    chains = [as_chain(n) for n in cfg.explain.presets] + list(cfg.explain.chains)
    if cfg.sweep is not None:
        chains += sweep_chains(cfg.sweep.base, cfg.sweep.grid)
    check_unique_names(chains)
    return chains


# ------------------------------------------------------------------------------------------- dataset
def prepare_dataset(cfg: RunConfig) -> dict[str, Any]:
    """The dataset directory: the configured path, or a synthetic set generated once under the root."""
    root = artifact_root(cfg)
    root.check()
    if cfg.dataset.path is not None:
        path = Path(cfg.dataset.path)
        if not path.exists():
            raise DcamError(f"dataset path {path} does not exist")
        return {"path": str(path), "status": "external"}
    from stages.synth.write import write_dataset

    s = cfg.dataset.synth
    conf = s.model_dump()
    res = materialize(root, "dataset", "1.0", conf, {},
                    lambda out: write_dataset(out, count=s.count, seed=s.seed, size=s.size), kind="dataset")
    root.fetch(res.path)  # every later stage reads it
    return {"path": res.path, "status": res.status}


def dataset_ids(dataset: str, limit: int | None = None) -> list[str]:
    from stages.ingest.loaders import load_dataset

    loaded = load_dataset(dataset, limit=limit)
    return sorted([s.sample_id for s in loaded.samples] + [sid for sid, _ in loaded.rejected])


def shards(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]


# ------------------------------------------------------------------------------------------- capture
def _lock_dir() -> Path:
    """``$DCAM_LOCK_DIR``, default ``<tmp>/dcam-locks`` (made sticky and world-writable like ``/tmp``, as the
    users of one host share its devices); never a symbolic link."""
    import tempfile

    shared = "DCAM_LOCK_DIR" not in os.environ
    locks = Path(os.environ.get("DCAM_LOCK_DIR", Path(tempfile.gettempdir()) / "dcam-locks"))
    try:
        locks.mkdir(parents=True)
        if shared:
            os.chmod(locks, 0o1777)
    except FileExistsError:
        pass
    if locks.is_symlink() or not locks.is_dir():
        raise DcamError(f"lock folder {locks} is not a plain folder (a symbolic link?); refusing to use it")
    return locks


def normalise_device(device: str) -> str:
    """``cuda`` and ``cuda:0`` name one device."""
    return "cuda:0" if device == "cuda" else device


@contextlib.contextmanager
def device_lock(device: str):
    """At most one capture at a time per device on this host, across processes and artifact roots
    (an exclusive file lock under :func:`_lock_dir`, opened without following symbolic links)."""
    path = _lock_dir() / f"capture-{normalise_device(device).replace(':', '_')}.lock"
    with exclusive(path, what=f"device {device}", wait=math.inf):
        yield


def capture_methods(cfg: RunConfig) -> list[str]:
    """The base methods of the run's chains, sorted: the capture stores the gradient reductions they declare."""
    return sorted({c.base for c in resolve_chains(cfg)})


def capture_config_dict(cfg: RunConfig, dataset: str) -> dict[str, Any]:
    from stages.capture.config import method_reductions
    from stages.capture.run import model_digest  # imports torch

    c = cfg.capture.model_dump()
    c.pop("device")  # results do not depend on the device (up to kernel numerics)
    return {"capture": c, "reductions": list(method_reductions(capture_methods(cfg))), "limit": cfg.dataset.limit,
            "dataset_digest": dataset_digest(dataset), "model_digest": model_digest(cfg.capture.model)}


def capture_path(cfg: RunConfig, dataset: str) -> Path:
    key = artifact_key("capture", CAPTURE_VERSION, capture_config_dict(cfg, dataset), {})
    return artifact_dir(artifact_root(cfg).local, "capture", key)


def capture_shard(cfg: RunConfig, dataset: str, shard: list[str]) -> dict[str, Any]:
    """Capture one shard of samples into the run's store (skips samples already complete)."""
    from schemas.capture import CaptureStore
    from stages.capture.config import family_config
    from stages.capture.registry import load_adapter
    from stages.capture.run import capture_dataset

    store = capture_path(cfg, dataset)
    if artifact_root(cfg).done_manifest(store, "capture") is not None:
        return {"store": str(store), "status": "cached", "shard": len(shard)}
    t0 = time.perf_counter()
    with device_lock(cfg.capture.device):
        if store.exists():
            done = set(CaptureStore.open(store).sample_ids())
            if all(s in done for s in shard):
                return {"store": str(store), "status": "cached", "shard": len(shard)}
        adapter = load_adapter(cfg.capture.model, device=cfg.capture.device)
        c = cfg.capture
        config = family_config(adapter, layers=c.layers, steps=c.steps, block_length=c.block_length, mode=c.mode,
                               # a temperature the run config does not set is the family's (LaViDa: 0.1)
                               temperature=c.temperature if "temperature" in c.model_fields_set else None,
                               seed=c.seed, score=c.score, store_grads=c.store_grads, record=c.record,
                               methods=capture_methods(cfg))
        capture_dataset(dataset, store, adapter=adapter, model_spec=c.model, config=config, limit=cfg.dataset.limit,
                        sample_ids=shard, finalize_store=False, lock_wait=math.inf)  # shards of one run take turns
    return {"store": str(store), "status": "computed", "shard": len(shard), "seconds": time.perf_counter() - t0}


def finalize_capture(cfg: RunConfig, dataset: str) -> dict[str, Any]:
    from schemas.capture import CaptureStore
    from stages.capture.run import finalize

    store = capture_path(cfg, dataset)
    root = artifact_root(cfg)
    done = root.done_manifest(store, "capture")
    if done is not None:
        return {"store": str(store), "status": "cached", "content_digest": done.content_digest}
    # a URL root: the store may be complete in the mirror (an interrupted upload); else finish it here
    m = CaptureStore.open(store).manifest() if is_done(store, "capture") else None
    if m is None:
        with exclusive(store_lock_path(store), what=f"capture store {store}", wait=math.inf):
            m = finalize(CaptureStore.open(store, mode="a"), data=dataset, seconds=0.0)
    root.publish(store)
    return {"store": str(store), "status": "computed", "content_digest": m.content_digest,
            "n_ok": m.n_ok, "n_failed": m.n_failed}


# ------------------------------------------------------------------------------------------- explain
def explain_shard(cfg: RunConfig, store: str, dataset: str | None, chains: list[Chain],
                  shard: list[str] | None, *, only: str | None = None, start: str | None = None
                  ) -> dict[str, list[dict]]:
    """All chains over one shard (:func:`stages.graph.explain_shard` with the config's explain settings)."""
    from stages.graph import explain_shard as walk

    return walk(artifact_root(cfg), store, chains, policy=cfg.explain.policy, layers=cfg.explain.layers,
                steps=cfg.explain.steps, dataset=dataset if cfg.score else None, sample_ids=shard,
                tam_resize=cfg.tam_resize, only=only, start=start)


def write_run(cfg: RunConfig, store: str, dataset: str | None, chains: list[Chain],
              shard_results: list[dict[str, list[dict]]]) -> dict[str, Any]:
    """Merge shards and write ``ROOT/run.json`` (:func:`stages.graph.finish_run`, what ``dcam explain`` runs)."""
    from stages.graph import finish_run

    return finish_run(artifact_root(cfg), store, chains, shard_results, dataset=dataset,
                      policy=cfg.explain.policy, layers=cfg.explain.layers, steps=cfg.explain.steps,
                      tam_resize=cfg.tam_resize, name=cfg.name)


def faithfulness_stage(root, run: dict[str, Any], *, config, methods=None, device: str = "cpu",
                       tam_resize: str = "uint8", progress=None) -> dict[str, Any]:
    """Occlusion, occlusion scores and faithfulness over an explain run (:mod:`stages.faithfulness.run`).

    Loads the captured model (under the device lock) only when a stage is not cached; updates ``run.json``
    and ``ROOT/summary.csv`` (plausibility and faithfulness per method). Returns ``{"summary": summary.json}``.
    """
    from schemas.run import RunRecord
    from schemas.storage import as_root
    from stages.capture.run import model_digest
    from stages.catalog import capture_manifest, write_run_record
    from stages.faithfulness.run import faithfulness_for_run, load_summary

    ar = as_root(root)
    spec = capture_manifest(run["store"], ar).config.get("model", "toy")  # the manifest, not the whole store
    lock = contextlib.ExitStack()

    def load():
        from stages.capture.registry import load_adapter

        lock.enter_context(device_lock(device))
        return load_adapter(spec, device=device)

    with lock:
        faithfulness_for_run(ar, run, config=config, methods=methods, load_adapter=load, model_key=model_digest(spec),
                             tam_resize=tam_resize, progress=progress)
    write_run_record(ar, RunRecord.parse(run))
    write_summary_csv(run, ar)
    return {"summary": load_summary(run)}


def write_summary_csv(run: dict[str, Any], root: ArtifactRoot) -> Path | None:
    """``ROOT/summary.csv``: one row per method, plausibility and faithfulness side by side."""
    table = summary_table(run, root)
    if table.empty:
        return None
    path = root.local / "summary.csv"
    table.to_csv(path, index=False)
    if root.remote:
        root.put_text("summary.csv", path.read_text())
    return path


def build_report(cfg: RunConfig) -> dict[str, Any]:
    """The HTML report under ``ROOT/report`` (built in the mirror and uploaded at a URL root)."""
    from stages.report.build import build_report as build

    t0 = time.perf_counter()
    root = artifact_root(cfg)
    if root.remote:  # the report reads every chain's maps and scores, the store and the dataset
        import json

        run = json.loads((root.local / "run.json").read_text())
        for entry in run["presets"].values():
            for p in (entry.get("maps"), entry.get("scores")):
                if p:
                    root.fetch(p)
        for p in (run.get("store"), run.get("dataset")):
            if p:
                root.fetch(p)
    path = build(root.local, max_samples=cfg.report_max_samples, methods=cfg.report_methods)
    root.publish(path.parent, replace=True)
    out = {"stage": "report", "path": str(path), "status": "computed", "seconds": time.perf_counter() - t0}
    if root.remote:
        out["url"] = root.url_of(path)
    return out


def summary_table(run: dict[str, Any], root: ArtifactRoot | None = None):
    """The per-method metrics table of a run (one row per chain): plausibility from each chain's scores
    (downloaded at a URL ``root``) and, when the run has them, the faithfulness figures and sanity flags
    (``faith_`` columns; ``faith_flags`` joined with '; ')."""
    import pandas as pd

    frames = []
    for name, entry in run["presets"].items():
        if entry.get("scores"):
            path = root.fetch(entry["scores"]) if root is not None else Path(entry["scores"])
            df = pd.read_csv(path / "summary.csv")
            df["method"] = name
            frames.append(df)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"method": []})
    if run.get("faithfulness"):
        from stages.faithfulness.run import load_summary

        if root is not None:
            root.fetch(run["faithfulness"])
        recs = load_summary(run)["methods"]
        faith = pd.DataFrame([faithfulness_row(r) for r in recs])
        table = table.merge(faith, on="method", how="outer") if len(table) else faith
        order = {m: i for i, m in enumerate([*run["presets"], *(r["method"] for r in recs)])}
        table = table.sort_values("method", key=lambda col: col.map(order), kind="stable").reset_index(drop=True)
    return table


#: Faithfulness figures of the metrics table, in order (``faith_`` + the summary.json field).
FAITH_COLUMNS = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc",
                 "occlusion_spearman", "norm_spearman", "target_sensitivity")


def faithfulness_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One method's faithfulness record as flat table columns, with interval bounds."""
    row: dict[str, Any] = {"method": rec["method"], "faith_n_maps": rec["n_maps"]}
    for name in FAITH_COLUMNS:
        row[f"faith_{name}"] = rec.get(name)
        ci = rec.get(f"{name}_ci") or [None, None]
        row[f"faith_{name}_lo"], row[f"faith_{name}_hi"] = ci
    row["faith_randomisation_above_hook"] = rec.get("randomisation_above_hook")
    row["faith_flags"] = "; ".join(rec.get("flags") or [])
    return row


def run_pipeline_plain(cfg: RunConfig, *, progress=None) -> dict[str, Any]:
    """The whole pipeline without Prefect (``dcam demo``): same stages, same artifacts."""
    ds = prepare_dataset(cfg)
    dataset = ds["path"]
    ids = dataset_ids(dataset, cfg.dataset.limit)
    parts = shards(ids, cfg.shard_size)
    for shard in parts:
        capture_shard(cfg, dataset, shard)
        if progress:
            progress("capture", len(shard))
    cap = finalize_capture(cfg, dataset)
    chains = resolve_chains(cfg)
    results = []
    for shard in parts:
        results.append(explain_shard(cfg, cap["store"], dataset, chains, shard))
        if progress:
            progress("explain", len(shard))
    run = write_run(cfg, cap["store"], dataset, chains, results)
    run_faithfulness_block(cfg, run, progress=progress)
    if cfg.report and cfg.score:
        run["report"] = build_report(cfg)
    return run


def run_faithfulness_block(cfg: RunConfig, run: dict[str, Any], *, progress=None) -> dict[str, Any] | None:
    """The config's ``faithfulness:`` block over a written run (None when the config has none)."""
    if cfg.faithfulness is None:
        write_summary_csv(run, artifact_root(cfg))
        return None
    f = cfg.faithfulness
    tick = (lambda stage, sid: progress(stage, 1)) if progress else None
    return faithfulness_stage(artifact_root(cfg), run, config=f.stage_config(), methods=f.methods,
                              device=f.device or cfg.capture.device, tam_resize=cfg.tam_resize, progress=tick)
