"""``dcam run``, ``dcam serve`` and ``dcam demo``: the pipeline as Prefect flows."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from flows.options import check_at_least, check_choice, check_slice_options, require
from schemas.errors import DcamError

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
#: The flows of ``dcam run --flow`` (``flows.prefect_flows.FLOWS``, named here so a typo fails before Prefect loads).
FLOW_NAMES = ("pipeline", "capture", "explain", "sweep")


def _fmt(v, ci=None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _print_table(run: dict, root=None) -> None:
    """The per-method metrics table, as plain text (readable in logs and narrow terminals): plausibility, then
    the faithfulness figures when the run has them."""
    from flows.pipeline import summary_table

    df = summary_table(run, root)
    if df.empty:
        return
    cols = [c for c in ("method", "n_samples", "n_maps", "obj_iou", "contrast", "concentration", "f3",
                        "pointing_accuracy", "obj_iou_word", "pointing_accuracy_word", "f1_iou") if c in df.columns]
    for c in ("n_samples", "n_maps"):  # counts stay integers beside the faithfulness-only rows
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    if len(cols) > 1:
        typer.echo("plausibility per method (agreement with the ground-truth masks; dataset-level means, F3 from the means):")
        typer.echo(df[df[cols[1:]].notna().any(axis=1)][cols].to_string(index=False, float_format=lambda v: f"{v:.4f}",
                                                                           na_rep="-"))
    if run.get("faithfulness"):
        from stages.faithfulness.run import load_summary

        print_faithfulness(load_summary(run))


def print_faithfulness(summary: dict | None) -> None:
    """The faithfulness table of a run's ``summary.json``, with 95% bootstrap intervals and sanity flags."""
    if not summary:
        return
    typer.echo(f"faithfulness per method (does the map show what the model used? baseline '{summary['baseline']}', "
               f"{summary['targets']}; 95% bootstrap intervals over samples):")
    typer.echo("  deletion AUC: lower is better; insertion AUC: higher is better; random-order floor in brackets;")
    typer.echo("  occl rho: rank agreement with the occlusion map (higher is better); norm rho: with the token-norm map;")
    typer.echo("  target rho: mean rank correlation between one response's word maps (lower = more word-specific)")
    header = f"  {'method':<26} {'maps':>4}  {'deletion AUC':<22} {'insertion AUC':<22} {'random del/ins':<13} " \
             f"{'occl rho':>8} {'norm rho':>8} {'target rho':>10}"
    typer.echo(header)
    for r in summary["methods"]:
        typer.echo(f"  {r['method']:<26} {r['n_maps']:>4}  {_fmt(r['deletion_auc'], r.get('deletion_auc_ci')):<22} "
                   f"{_fmt(r['insertion_auc'], r.get('insertion_auc_ci')):<22} "
                   f"{_fmt(r['random_deletion_auc'])}/{_fmt(r['random_insertion_auc']):<7} "
                   f"{_fmt(r['occlusion_spearman']):>8} {_fmt(r['norm_spearman']):>8} {_fmt(r['target_sensitivity']):>10}")
    flagged = [r for r in summary["methods"] if r.get("flags")]
    if flagged:
        typer.echo("sanity checks failed:")
        for r in flagged:
            for f in r["flags"]:
                typer.echo(f"  {r['method']}: {f}")


def run(
    config: Path = typer.Argument(..., help="Run configuration (YAML; see flows/configs/demo.yaml)."),
    flow: str = typer.Option("pipeline", "--flow", help="pipeline (capture + explain), capture, explain or sweep."),
    store: Path = typer.Option(None, "--store", help="explain flow: an existing capture store (default: the config's)."),
    runner: str = typer.Option(None, "--runner", help="Task runner: thread, sequential or dask (overrides the config)."),
    dask_address: str = typer.Option(None, "--dask-address", help="tcp://HOST:PORT of an existing Dask scheduler."),
    only: str = typer.Option(None, "--only", help="Recompute this explain stage alone in every chain (select, base, refine, threshold, score or a module name such as cba); the stages before it must exist. See 'dcam graph'."),
    start: str = typer.Option(None, "--from", help="Recompute this explain stage and every stage after it in every chain, even when cached; the stages before it must exist."),
    as_json: bool = typer.Option(False, "--json", help="Print per stage whether it was computed or cached and where its output is."),
) -> None:
    """Run a Prefect flow from a run configuration; stage outputs are cached by content.

    A second identical run reports every stage 'cached'; changing one module's parameter recomputes that module
    and the stages after it. Prefect's own log (tracebacks included) goes to ROOT/.logs/; an error is one line
    that names that file.

    Each run starts a temporary Prefect server (12 to 16 s) and stops it when the run ends or dies, unless
    PREFECT_API_URL names a running one. To pay that once: run 'prefect server start' in another terminal, then
    'export PREFECT_API_URL=http://127.0.0.1:4200/api'; every 'dcam run' reuses it (its UI at
    http://127.0.0.1:4200 lists the runs).
    """
    from flows.config import load_config

    check_choice(flow, FLOW_NAMES, "--flow")
    check_slice_options(only, start)
    require(flow != "capture" or (only is None and start is None), "--only/--from", "apply to the explain stages; "
            "the capture flow has none")
    cfg = load_config(config)
    if runner:
        check_choice(runner, ("thread", "sequential", "dask"), "--runner")
        cfg = cfg.model_copy(update={"runner": runner})
    if dask_address:
        cfg = cfg.model_copy(update={"runner": "dask", "dask_address": dask_address})
    from flows.pipeline import artifact_root

    root = artifact_root(cfg)
    root.check()  # a missing bucket, backend or endpoint fails here, in one line, before Prefect starts
    from flows.prefect_flows import FLOWS, logs_to_file, temporary_server, with_runner

    f = with_runner(FLOWS[flow], cfg)
    kwargs = {"config": cfg.model_dump()}
    if flow == "explain" and store is not None:
        kwargs["store"] = str(store)
    if flow != "capture":
        kwargs.update(only=only, start=start)
    log = root.local / ".logs" / f"run-{flow}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    try:
        with logs_to_file(log), temporary_server(log):
            result = f(**kwargs)
    except DcamError as e:  # the one line the user sees; Prefect's tracebacks are in the log
        e.args = (f"{e} (Prefect's log: {log})",)
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DcamError(f"the {flow} flow failed: {type(e).__name__}: {first} (tracebacks in {log})") from None
    stages = result.get("stage_results", result.get("stages", []))
    if root.remote:  # where each output is at the root; "path" stays the local mirror's
        stages = [{**s, "url": root.url_of(s["path"])} if s.get("path") else s for s in stages]
    if as_json:
        out = {"flow": flow, "root": cfg.root, "stages": stages, "report": result.get("report", {}).get("path")}
        if result.get("faithfulness"):
            from stages.faithfulness.run import load_summary

            out["faithfulness"] = {"path": result["faithfulness"], **load_summary(result)}
        if root.remote:
            out.update({"mirror": str(root.local), "report_url": result.get("report", {}).get("url")})
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    n_c = sum(s.get("status") == "computed" for s in stages)
    typer.echo(f"{flow}: {len(stages)} stage outputs, {n_c} computed, {len(stages) - n_c} cached; root {cfg.root}"
               + (f" (local mirror {root.local})" if root.remote else ""))
    if "presets" in result:
        _print_table(result, root)
    if result.get("report"):
        typer.echo(f"report: {result['report'].get('url') or result['report']['path']}")


def serve(
    config: Path = typer.Argument(..., help="Run configuration (YAML)."),
    cron: str = typer.Option(None, "--cron", help='Cron schedule, e.g. "0 2 * * *" (nightly at 02:00).'),
    interval: int = typer.Option(None, "--interval", help="Run every N seconds."),
    name: str = typer.Option(None, "--name", help="Deployment name (default: the config's name)."),
    max_concurrent: int = typer.Option(1, "--max-concurrent", help="Most runs at once (default 1: a run that outlasts the interval delays the next)."),
) -> None:
    """Serve the pipeline as a scheduled Prefect deployment (long-running; Ctrl-C stops it).

    Needs a Prefect server (schedules do not run on the temporary one): start 'prefect server start' and set
    PREFECT_API_URL=http://127.0.0.1:4200/api. See the README for Postgres in production.
    """
    from flows.config import load_config

    require((cron is None) != (interval is None), "--cron, --interval", "give exactly one of them")
    check_at_least(interval, 1, "--interval")
    check_at_least(max_concurrent, 1, "--max-concurrent")
    if not os.environ.get("PREFECT_API_URL"):
        raise DcamError("scheduled runs need a Prefect server: run 'prefect server start' and set "
                        "PREFECT_API_URL=http://127.0.0.1:4200/api (the temporary server does not run schedules)")
    cfg = load_config(config)
    from flows.pipeline import artifact_root

    root = artifact_root(cfg)
    root.check()
    if not root.remote:
        cfg = cfg.model_copy(update={"root": str(root.local)})
    from flows.prefect_flows import pipeline_flow, with_runner

    f = with_runner(pipeline_flow, cfg)
    kw = {"cron": cron} if cron else {"interval": interval}
    f.serve(name=name or cfg.name, parameters={"config": cfg.model_dump()}, limit=max_concurrent, **kw)


def demo(
    out: str = typer.Option(None, "--out", help="Artifact root: a directory or a URL such as s3://bucket/prefix "
                                                "(default: artifacts/demo)."),
    count: int = typer.Option(None, "--count", help="Number of synthetic images (default 16)."),
) -> None:
    """The whole chain on the embedded default: synthesise data, capture with the bundled toy dMLLM, explain
    with the presets, score, report. Prints the metrics table and the report's path. No Prefect server needed;
    'dcam run flows/configs/demo.yaml' runs the same stages as Prefect flows.
    """
    from flows.config import load_config
    from flows.pipeline import run_pipeline_plain
    from flows.progress import progress_bar

    cfg = load_config(DEMO_CONFIG)
    upd = {}
    if out is not None:
        upd["root"] = str(out)
    if count is not None:
        check_at_least(count, 1, "--count")
        upd["dataset"] = cfg.dataset.model_copy(update={"synth": cfg.dataset.synth.model_copy(update={"count": count})})
    cfg = cfg.model_copy(update=upd)
    n = cfg.dataset.synth.count
    f = cfg.faithfulness
    n_faith = 0 if f is None else 2 * min(n, f.limit or n)  # occlusion and faithfulness, one tick per sample
    with progress_bar("demo", 2 * n + n_faith) as advance:
        result = run_pipeline_plain(cfg, progress=lambda stage, k: advance(k, stage))
    _print_table(result)
    typer.echo(f"capture store: {result['store']}")
    if result.get("report"):
        typer.echo(f"report: {result['report']['path']}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("serve")(serve)
    app.command("demo")(demo)
