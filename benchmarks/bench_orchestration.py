"""The graph's own cost: how much of a run's wall time is spent outside its stages (not a test).

Prints side by side, in one run, against the goal of at most 5 % orchestration:

1. the ``dcam explain`` path (``stages.graph.run_explain``) on ``--explain-samples`` toy samples
   (default 24, real captures), every preset, with scoring, nothing cached, in a process that has already
   imported everything (one untimed run first; ``--repeat`` timed runs, the median reported);
2. ``dcam run --flow explain --store STORE`` (the Prefect flow, ``flows.prefect_flows.explain_flow``) on
   ``--samples`` samples (default 5000) with ``--run-presets``, after starting a Prefect server first (as
   ``dcam run`` reuses one when ``PREFECT_API_URL`` is set); the server's start-up, which a ``dcam run``
   without ``PREFECT_API_URL`` pays every time, is printed on its own line.

Stage compute is the sum of the stages' own times (``StageResult.seconds``: a stage's load, compute and
write, manifest included); orchestration is the rest of the wall time (keys, cache checks, locks, renames,
``run.json``, Prefect's task and flow runs). The large store is faked cheaply, as in
``bench_explain_flow.py``: a few real toy captures copied onto every sample id.

``--profile FILE`` also writes a cProfile of one explain-path run and prints the functions outside the
stages' compute that cost the most.

    python benchmarks/bench_orchestration.py [--samples 5000] [--explain-samples 24] [--repeat 3]
        [--run-presets diffusion-cam-reference] [--shard-size 500] [--workdir DIR] [--profile FILE] [--no-run]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

GOAL = 0.05
#: Functions of the graph itself (not a stage's compute) that ``--profile`` reports, by their qualified name.
GRAPH_FUNCTIONS = ("materialize", "lookup", "artifact_key", "artifact_dir", "done_manifest", "verified_manifest",
                   "is_done", "sweep_stale", "sweep_temporaries", "temporary_dir", "capture_digest", "dataset_digest",
                   "publish", "walk_chain", "explain_shard", "finish_run", "run_explain", "write_run_record",
                   "as_chain", "write_manifest",
                   "read_manifest", "digest_files", "code_version", "library_versions")


def _stage_seconds(stage_dicts) -> tuple[float, float, int]:
    """Of the computed stages: the sum of their own times, of their manifests' ``wall`` timings (load and
    compute, without writing the artifact), and their number."""
    from schemas.manifest import read_manifest

    computed = [s for s in stage_dicts if s.get("status") == "computed"]
    own = sum(float(s.get("seconds", 0.0)) for s in computed)
    inner = sum(float(read_manifest(s["path"]).timings.get("wall", 0.0)) for s in computed)
    return own, inner, len(computed)


def explain_path(store: Path, data: Path, root: Path, presets: list[str]) -> tuple[float, float, float, int]:
    """Wall time, then :func:`_stage_seconds` of one ``run_explain`` into an empty ``root``."""
    from stages.graph import run_explain
    from stages.presets import get_preset

    specs = [get_preset(p) for p in presets]
    t = time.perf_counter()
    run = run_explain(root, store, specs, dataset=data)
    wall = time.perf_counter() - t
    return (wall, *_stage_seconds([s for entry in run["presets"].values() for s in entry["stages"]]))


def prefect_run(work: Path, store: Path, data: Path, presets: list[str],
                shard_size: int) -> tuple[float, float, float, int]:
    """Wall time, then :func:`_stage_seconds` of the explain flow (``dcam run --flow explain``)."""
    from flows.config import RunConfig
    from flows.prefect_flows import explain_flow, with_runner

    cfg = RunConfig.model_validate({
        "name": "bench-orchestration", "root": str(work / "run-root"), "dataset": {"path": str(data)},
        "capture": {"model": "toy"}, "report": False, "shard_size": shard_size, "runner": "sequential",
        "explain": {"presets": presets}})
    t = time.perf_counter()
    res = with_runner(explain_flow, cfg)(config=cfg.model_dump(), store=str(store))
    wall = time.perf_counter() - t
    return (wall, *_stage_seconds(res["stage_results"]))


def profile_explain(store: Path, data: Path, root: Path, presets: list[str], out: Path) -> None:
    """cProfile one explain-path run; print the graph's own functions by cumulative time."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(explain_path, store, data, root, presets)
    prof.dump_stats(str(out))
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    rows = [(name, Path(file).name, nc, cum) for (file, _line, name), (_cc, nc, _tot, cum, _callers) in stats.items()
            if name in GRAPH_FUNCTIONS and str(Path(__file__).resolve().parent.parent) in str(Path(file).resolve())]
    print(f"\nprofile of one explain-path run ({out}); the graph's own functions, cumulative "
          "(write_manifest, read_manifest and digest_files are also called inside the stages):")
    print(f"  {'function':<22}{'file':<16}{'calls':>7}{'cum ms':>10}")
    for name, file, nc, cum in sorted(rows, key=lambda r: -r[3]):
        print(f"  {name:<22}{file:<16}{nc:>7}{cum * 1e3:>10.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5000, help="samples of the dcam run (Prefect) measurement")
    ap.add_argument("--explain-samples", type=int, default=24, help="samples of the dcam explain measurement")
    ap.add_argument("--repeat", type=int, default=3, help="timed explain-path runs (the median is reported)")
    ap.add_argument("--run-presets", default="diffusion-cam-reference",
                    help="comma-separated presets of the dcam run measurement ('all': every preset)")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--profile", default=None, help="write a cProfile of one explain-path run here")
    ap.add_argument("--no-run", action="store_true", help="measure the explain path only (no Prefect)")
    args = ap.parse_args()
    for name in ("samples", "explain_samples", "repeat", "shard_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-orchestration-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(work / ".prefect"))

    from bench_explain_flow import build_inputs
    from stages.presets import PRESETS

    every = list(PRESETS)
    run_presets = every if args.run_presets == "all" else [p for p in args.run_presets.split(",") if p]
    unknown = [p for p in run_presets if p not in PRESETS]
    if unknown:
        ap.error(f"--run-presets: unknown preset(s) {', '.join(unknown)}; known: {', '.join(every)}")

    t0 = time.perf_counter()
    n_small = args.explain_samples
    data_s, store_s = build_inputs(work / f"explain-{n_small}", n_small, templates=n_small)
    print(f"explain inputs: {n_small} samples ({n_small} real toy captures) in {time.perf_counter() - t0:.0f} s")
    explain_path(store_s, data_s, work / "explain-warm-up", every)  # imports and first-call caches, untimed
    runs = [explain_path(store_s, data_s, work / f"explain-root-{i}", every) for i in range(args.repeat)]
    shares = [(w - c) / w for w, c, _i, _n in runs]
    med = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    rows = [(f"dcam explain, {len(every)} presets, scored", n_small, *med,
             f"median of {args.repeat} (orchestration {min(shares):.1%}..{max(shares):.1%})")]
    if args.profile:
        profile_explain(store_s, data_s, work / "explain-profiled", every, Path(args.profile))

    server_s = None
    if not args.no_run:
        from flows.prefect_flows import temporary_server

        t0 = time.perf_counter()
        data_l, store_l = build_inputs(work / f"run-{args.samples}", args.samples)
        print(f"run inputs: {args.samples} samples in {time.perf_counter() - t0:.0f} s")
        (work / ".logs").mkdir(exist_ok=True)
        t0 = time.perf_counter()
        with temporary_server(work / ".logs" / "server.log"):
            server_s = time.perf_counter() - t0
            from prefect import flow

            @flow
            def warm_up() -> int:
                return 1

            warm_up()  # the first flow run's client set-up, untimed as a reused server's would be
            res = prefect_run(work, store_l, data_l, run_presets, args.shard_size)
        rows.append((f"dcam run --flow explain, {len(run_presets)} preset(s)", args.samples, *res,
                     "server reused"))

    print(f"\n{'path':<38}{'samples':>8}{'wall s':>8}{'stage s':>9}{'orchestration':>15}{'goal':>6}"
          f"{'compute s':>11}{'outside':>9}  note")
    for name, n, wall, own, inner, n_stages, note in rows:
        share, outside = (wall - own) / wall, (wall - inner) / wall
        print(f"{name:<38}{n:>8}{wall:>8.2f}{own:>9.2f}{share:>14.1%} {'ok' if share <= GOAL else 'over':>5}"
              f"{inner:>11.2f}{outside:>8.1%}  {note}, {n_stages} stages computed")
    print("stage s: the stages' own times (load, compute, write, manifest); orchestration: the rest of the wall "
          f"time (goal <= {GOAL:.0%});\ncompute s: the manifests' timings (load and compute, no writing); outside: "
          "the rest, a stricter figure")
    if server_s is not None:
        print(f"a temporary Prefect server (dcam run without PREFECT_API_URL) adds {server_s:.1f} s to every run")
    print(json.dumps({"explain": {"samples": n_small, "runs": runs},
                      "run": {"samples": args.samples, "presets": run_presets, "result": rows[1][2:6]
                              if len(rows) > 1 else None, "server_start_s": server_s}}))

if __name__ == "__main__":
    main()
