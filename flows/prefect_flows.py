"""Prefect flows: ``capture_flow``, ``explain_flow``, ``pipeline_flow``, ``sweep_flow``.

Tasks are coarse: one per stage group per shard of samples, never one per sample.
They pass paths and small dicts, never arrays. Two layers of caching:

* every stage output is content-addressed on disk (:mod:`stages.catalog`): the
  path digests the stage, its config and its inputs' content, so a stage whose output
  exists is reported ``cached`` and not recomputed;
* the per-shard explain task has a Prefect cache key over the same ingredients (the
  capture manifest's digest, the chains, the shard, the dataset digest) with results
  persisted as JSON under ``ROOT/.prefect-results`` (the local mirror's, for a URL root); a
  cached result whose artifacts were deleted is recomputed (the flow checks their manifests, at
  the URL root for a URL root).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import pipeline as P
from flows.config import RunConfig
from stages.catalog import capture_digest, dataset_digest
from schemas.manifest import code_version, digest_json


def _cfg(config: dict[str, Any]) -> RunConfig:
    return RunConfig.model_validate(config)


@task(name="prepare-dataset", cache_policy=NO_CACHE)
def prepare_dataset_task(config: dict[str, Any]) -> dict[str, Any]:
    cfg = _cfg(config)
    ds = P.prepare_dataset(cfg)
    ds["ids"] = P.dataset_ids(ds["path"], cfg.dataset.limit)
    return ds


@task(name="capture-shard", cache_policy=NO_CACHE, tags=["gpu"])
def capture_shard_task(config: dict[str, Any], dataset: str, shard: list[str]) -> dict[str, Any]:
    return P.capture_shard(_cfg(config), dataset, shard)


@task(name="finalize-capture", cache_policy=NO_CACHE)
def finalize_capture_task(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    return P.finalize_capture(_cfg(config), dataset)


def _explain_key(context, parameters) -> str:
    cfg = _cfg(parameters["config"])
    chains = [c.key() for c in P.resolve_chains(cfg)]
    store = parameters["store"]
    cap = capture_digest(store, P.artifact_root(cfg))
    ds = dataset_digest(parameters["dataset"]) if parameters.get("dataset") else None
    return "explain-" + digest_json({
        "capture": cap, "chains": chains, "explain": cfg.explain.model_dump(), "score": cfg.score,
        "tam_resize": cfg.tam_resize, "only": parameters.get("only"), "start": parameters.get("start"),
        "shard": parameters["shard"], "dataset": ds, "code": code_version(),
    })[:32]


@task(name="explain-shard", cache_key_fn=_explain_key, persist_result=True, result_serializer="json")
def explain_shard_task(config: dict[str, Any], store: str, dataset: str | None, shard: list[str],
                       only: str | None = None, start: str | None = None) -> dict[str, Any]:
    cfg = _cfg(config)
    return P.explain_shard(cfg, store, dataset, P.resolve_chains(cfg), shard, only=only, start=start)


@task(name="write-run", cache_policy=NO_CACHE)
def write_run_task(config: dict[str, Any], store: str, dataset: str | None, shard_results: list[dict]) -> dict[str, Any]:
    cfg = _cfg(config)
    return P.write_run(cfg, store, dataset, P.resolve_chains(cfg), shard_results)


@task(name="faithfulness", cache_policy=NO_CACHE)
def faithfulness_task(config: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The config's faithfulness block (occlusion, its scores, faithfulness), content-addressed like every stage."""
    P.run_faithfulness_block(_cfg(config), run)
    return run


@task(name="report", cache_policy=NO_CACHE)
def report_task(config: dict[str, Any]) -> dict[str, Any]:
    return P.build_report(_cfg(config))


def _runner(cfg: RunConfig):
    from prefect.task_runners import ThreadPoolTaskRunner

    if cfg.runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            from schemas.errors import DcamError

            raise DcamError("runner 'dask' needs prefect-dask: pip install 'diffusion-cam[dask]'") from None
        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=1 if cfg.runner == "sequential" else 2)


def _artifacts_exist(cfg: RunConfig, result: dict[str, list[dict]]) -> bool:
    root = P.artifact_root(cfg)
    return all(root.done_manifest(r["path"]) is not None for stages in result.values() for r in stages)


def _explain_shards(cfg: RunConfig, store: str, dataset: str | None, ids: list[str], *, only: str | None = None,
                    start: str | None = None) -> list[dict]:
    config = cfg.model_dump()
    parts = P.shards(ids, cfg.shard_size)
    sliced = only is not None or start is not None  # --only / --from recompute: never a cached task result
    task = explain_shard_task.with_options(refresh_cache=True) if sliced else explain_shard_task
    futures = [task.submit(config, store, dataset, shard, only, start) for shard in parts]
    results = []
    for shard, fut in zip(parts, futures):
        fut.wait()
        state = fut.state
        res = state.result()
        if state.name == "Cached":
            if _artifacts_exist(cfg, res):
                res = {name: [{**r, "status": "cached"} for r in stages] for name, stages in res.items()}
            else:  # the cache outlived its artifacts: recompute
                res = explain_shard_task.with_options(refresh_cache=True)(config, store, dataset, shard)
        results.append(res)
    return results


def _capture(cfg: RunConfig) -> tuple[str, dict[str, Any], list[str]]:
    config = cfg.model_dump()
    ds = prepare_dataset_task(config)
    dataset = ds["path"]
    # The GPU stage: shards one after another (and a file lock per device across runs).
    caps = [capture_shard_task(config, dataset, shard) for shard in P.shards(ds["ids"], cfg.shard_size)]
    fin = finalize_capture_task(config, dataset)
    status = "cached" if all(c["status"] == "cached" for c in caps) and fin["status"] == "cached" else "computed"
    return dataset, {"stage": "capture", "path": fin["store"], "status": status}, ds["ids"]


def _publish(cfg: RunConfig, run: dict[str, Any]) -> None:
    """Prefect artifacts for auditing: a markdown summary, the metrics table, links to outputs."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    key = "".join(ch if ch.isalnum() else "-" for ch in cfg.name.lower()).strip("-") or "run"
    root = P.artifact_root(cfg)
    table = P.summary_table(run, root)
    store = root.url_of(run["store"])
    report = root.url_of(run["report"]["path"]) if "report" in run else None
    lines = [f"# diffusion-cam run `{cfg.name}`", "", f"- capture store: `{store}`",
             f"- dataset: `{root.url_of(run['dataset']) if run['dataset'] else None}`", f"- root: `{cfg.root}`"]
    if root.remote:
        lines.append(f"- local mirror: `{root.local}`")
    if report:
        lines.append(f"- report: `{report}`")
    lines += ["", "| chain | stages computed | stages cached |", "|---|---|---|"]
    for name, entry in run["presets"].items():
        n_c = sum(s["status"] == "computed" for s in entry["stages"])
        n_k = sum(s["status"] == "cached" for s in entry["stages"])
        lines.append(f"| {name} | {n_c} | {n_k} |")
    create_markdown_artifact(key=f"{key}-summary", markdown="\n".join(lines), description="diffusion-cam run summary")
    if not table.empty:
        cols = [c for c in ("method", "n_samples", "obj_iou", "contrast", "concentration", "f3", "pointing_accuracy",
                            "obj_iou_word", "f1_iou", "faith_deletion_auc", "faith_insertion_auc",
                            "faith_random_deletion_auc", "faith_random_insertion_auc", "faith_occlusion_spearman",
                            "faith_norm_spearman", "faith_target_sensitivity", "faith_flags") if c in table.columns]
        rows = table[cols].round(4).astype(object).where(table[cols].notna(), None).to_dict(orient="records")
        create_table_artifact(key=f"{key}-metrics", table=rows, description="dataset-level metrics per chain")

    def link(path: str) -> str:
        return root.url_of(path) if root.owns(path) else Path(path).resolve().as_uri()

    if "report" in run:
        create_link_artifact(key=f"{key}-report", link=link(run["report"]["path"]),
                             description="self-contained HTML report")
    create_link_artifact(key=f"{key}-capture", link=link(run["store"]), description="capture store")


@flow(name="capture_flow", log_prints=True)
def capture_flow(config: dict[str, Any]) -> dict[str, Any]:
    """The GPU stage: dataset -> capture store."""
    cfg = _cfg(config)
    dataset, cap, _ids = _capture(cfg)
    return {"stages": [cap], "store": cap["path"], "dataset": dataset}


def _explain(cfg: RunConfig, store: str, dataset: str, ids: list[str], stages: list[dict], *,
             only: str | None = None, start: str | None = None) -> dict[str, Any]:
    config = cfg.model_dump()
    results = _explain_shards(cfg, store, dataset if cfg.score else None, ids, only=only, start=start)
    run = faithfulness_task(config, write_run_task(config, store, dataset, results))
    if cfg.report and cfg.score:
        run["report"] = report_task(config)
    for name, entry in run["presets"].items():
        for s in entry["stages"]:
            stages.append({"chain": name, **s})
    stages += [{"chain": "faithfulness", **s} for s in run.get("faithfulness_stages", [])]
    if "report" in run:
        stages.append(run["report"])
    run["stage_results"] = stages
    _publish(cfg, run)
    return run


@flow(name="explain_flow", log_prints=True)
def explain_flow(config: dict[str, Any], store: str | None = None, only: str | None = None,
                 start: str | None = None) -> dict[str, Any]:
    """select -> base -> modules -> score -> report, from an existing capture store (CPU only)."""
    cfg = _cfg(config)
    ds = prepare_dataset_task(cfg.model_dump())
    if store is None:
        store = str(P.capture_path(cfg, ds["path"]))
    from schemas.capture import CaptureStore

    ids = CaptureStore.open(P.artifact_root(cfg).fetch(store)).sample_ids()
    return _explain(cfg, store, ds["path"], ids, [], only=only, start=start)


@flow(name="pipeline_flow", log_prints=True)
def pipeline_flow(config: dict[str, Any], only: str | None = None, start: str | None = None) -> dict[str, Any]:
    """capture_flow then explain_flow."""
    cfg = _cfg(config)
    dataset, cap, ids = _capture(cfg)
    return _explain(cfg, cap["path"], dataset, ids, [cap], only=only, start=start)


@flow(name="sweep_flow", log_prints=True)
def sweep_flow(config: dict[str, Any], only: str | None = None, start: str | None = None) -> dict[str, Any]:
    """A grid of presets or module parameters over one capture (e.g. the paper's ablation table)."""
    cfg = _cfg(config)
    if cfg.sweep is None and len(cfg.explain.presets) + len(cfg.explain.chains) < 2:
        from schemas.errors import DcamError

        raise DcamError("sweep_flow needs a 'sweep' grid or several presets/chains in the config")
    dataset, cap, ids = _capture(cfg)
    return _explain(cfg, cap["path"], dataset, ids, [cap], only=only, start=start)


FLOWS = {"pipeline": pipeline_flow, "capture": capture_flow, "explain": explain_flow, "sweep": sweep_flow}


def with_runner(flow_obj, cfg: RunConfig):
    """The flow with the config's task runner; its results (and its tasks') persisted as JSON, never pickles."""
    return flow_obj.with_options(task_runner=_runner(cfg), result_storage=P.artifact_root(cfg).local / ".prefect-results",
                                 result_serializer="json")


@contextlib.contextmanager
def logs_to_file(path: Path) -> Iterator[Path]:
    """Send what Prefect logs to the terminal (task failures with their tracebacks, server notices) to the
    file at ``path`` instead, while the context runs; the command's own one-line error names the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.root, *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    swapped = []
    for lg in loggers:
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
                lg.addHandler(to_file)
                swapped.append((lg, h))
    try:
        yield path
    finally:
        for lg, h in swapped:
            lg.removeHandler(to_file)
            lg.addHandler(h)
        to_file.close()


@contextlib.contextmanager
def temporary_server(log: Path) -> Iterator[None]:
    """A Prefect server for this command alone, unless ``PREFECT_API_URL`` names one.

    It is this process's child and is stopped when the command ends, and by the kernel when the command
    dies (SIGKILL included, :func:`flows.env.die_with_parent`), so a killed run leaves no server behind.
    Its output goes to ``log``.

    Raises
    ------
    DcamError
        If it does not answer within ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``.
    """
    import httpx
    import prefect
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    from flows.env import die_with_parent
    from schemas.errors import DcamError

    if PREFECT_API_URL.value():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
             "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        while True:
            if server.poll() is not None:
                raise DcamError(f"the temporary Prefect server exited with status {server.returncode} (its log: {log})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise DcamError(f"the temporary Prefect server did not answer at {url} (its log: {log})")
            time.sleep(0.2)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):  # send what is queued while the server still answers
            with contextlib.suppress(Exception):
                worker.drain_all(timeout=10)
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

