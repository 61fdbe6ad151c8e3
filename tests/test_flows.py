"""Prefect flows: caching and invalidation, config-driven chains, kill-and-resume, concurrency,
Dask runner, scheduled serving (issue 6). One Prefect test harness for the whole session."""

import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flows.config import RunConfig

pytestmark = pytest.mark.prefect

ROOT = Path(__file__).resolve().parent.parent
DCAM = [sys.executable, "-m", "flows.cli"]


@pytest.fixture(scope="session")
def harness():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from stages.toy.model import ToyConfig, ToyDMLLM

    torch.manual_seed(0)
    model = ToyDMLLM(ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3,
                               num_heads=2, gen_length=8))
    return model.save_pretrained(tmp_path_factory.mktemp("flows") / "model")


def make_config(tmp_path, tiny_model, **over):
    cfg = {
        "name": "t", "root": str(tmp_path / "root"),
        "dataset": {"synth": {"count": 4, "seed": 5}},
        "capture": {"model": f"toy:{tiny_model}", "steps": 4},
        "explain": {"presets": ["gradcam"], "chains": [{"name": "dc", "preset": "diffusion-cam-reference"}]},
        "report": False, "shard_size": 2,
    }
    for k, v in over.items():
        cfg[k] = v
    return RunConfig.model_validate(cfg)


def statuses(result):
    return [(s.get("chain"), s["stage"], s.get("shard"), s["status"]) for s in result["stage_results"]]


def test_cached_rerun_and_one_parameter_invalidation(harness, tmp_path, tiny_model):
    from flows.prefect_flows import pipeline_flow, with_runner

    cfg = make_config(tmp_path, tiny_model)
    first = with_runner(pipeline_flow, cfg)(config=cfg.model_dump())
    assert all(st == "computed" for c, stage, sh, st in statuses(first) if stage != "select" or c == "gradcam")
    second = with_runner(pipeline_flow, cfg)(config=cfg.model_dump())
    assert {st for *_, st in statuses(second)} == {"cached"}
    assert len(statuses(second)) == len(statuses(first))
    # change one parameter of the 'dc' chain (the paper-profile DACG smoothing width): exactly DACG and
    # what follows it recompute
    over = dict(cfg.explain.model_dump())
    over["chains"] = [{"name": "dc", "preset": "diffusion-cam", "params": {"dacg": {"sigma": 2.0}}}]
    base = make_config(tmp_path, tiny_model, explain={**over, "chains": [{"name": "dc", "preset": "diffusion-cam"}]})
    with_runner(pipeline_flow, base)(config=base.model_dump())
    cfg3 = make_config(tmp_path, tiny_model, explain=over)
    third = with_runner(pipeline_flow, cfg3)(config=cfg3.model_dump())
    computed = {(c, stage) for c, stage, sh, st in statuses(third) if st == "computed"}
    assert computed == {("dc", "dacg"), ("dc", "cba"), ("dc", "normalize"), ("dc", "sicd"), ("dc", "score"),
                        ("dc", "merge-maps"), ("dc", "merge-scores")}
    # the reference DACG is inert (method.md 1.5(b)): a new threshold recomputes DACG, whose output is
    # byte-identical, so content addressing finds everything after it already computed
    ref = [{"name": "dc", "preset": "diffusion-cam-reference", "params": {"dacg": {"delta_sigma": 0.05}}}]
    cfg4 = make_config(tmp_path, tiny_model, explain={**over, "chains": ref})
    fourth = with_runner(pipeline_flow, cfg4)(config=cfg4.model_dump())
    assert {(c, stage) for c, stage, sh, st in statuses(fourth) if st == "computed"} == {("dc", "dacg")}
    run = json.loads((Path(cfg.root) / "run.json").read_text())
    assert set(run["presets"]) == {"gradcam", "dc"}


def test_modules_removed_and_reordered_from_config(harness, tmp_path, tiny_model):
    from flows.prefect_flows import explain_flow, pipeline_flow, with_runner

    explain = {"presets": [], "chains": [
        {"name": "reordered", "preset": "diffusion-cam-reference", "modules": ["cba", "akd"]},
        {"name": "bare", "preset": "diffusion-cam-reference", "modules": []},
    ]}
    cfg = make_config(tmp_path, tiny_model, explain=explain, shard_size=4)
    res = with_runner(pipeline_flow, cfg)(config=cfg.model_dump())
    order = {c: [stage for cc, stage, sh, st in statuses(res) if cc == c] for c in ("reordered", "bare")}
    assert order["reordered"] == ["select", "base", "cba", "akd", "score"]
    assert order["bare"] == ["select", "base", "score"]
    # the explain flow alone, from the existing capture: everything cached
    again = with_runner(explain_flow, cfg)(config=cfg.model_dump())
    assert {st for *_, st in statuses(again)} == {"cached"}


def test_dask_runner(harness, tmp_path, tiny_model):
    pytest.importorskip("prefect_dask")
    from flows.prefect_flows import pipeline_flow, with_runner

    cfg = make_config(tmp_path, tiny_model, runner="dask")
    res = with_runner(pipeline_flow, cfg)(config=cfg.model_dump())
    assert {st for *_, st in statuses(res)} == {"computed", "cached"} or {st for *_, st in statuses(res)} == {"computed"}
    run = json.loads((Path(cfg.root) / "run.json").read_text())
    assert run["presets"]["gradcam"]["scores"]


def _env(api_url):
    env = dict(os.environ)
    env.update({"PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    return env


def _write(tmp_path, cfg):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    return p


def _partials(root: Path):
    return [p for p in root.rglob(".*tmp-*")]


def test_kill_and_resume(harness, tmp_path, tiny_model):
    from schemas.capture import CaptureStore

    cfg = make_config(tmp_path, tiny_model, dataset={"synth": {"count": 6, "seed": 7}}, shard_size=1)
    path = _write(tmp_path, cfg)
    proc = subprocess.Popen(DCAM + ["run", str(path), "--json"], env=_env(harness), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = Path(cfg.root)
    deadline = time.time() + 240
    captured_at_kill = None
    while time.time() < deadline:  # kill once some, not all, samples are captured
        # the store's folder, not its lock file beside it (.<key>.lock), whichever the folder lists first
        stores = [p for p in (root / "capture").glob("*") if p.is_dir() and not p.name.startswith(".")] \
            if (root / "capture").exists() else []
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # the run must not die by itself
        if stores and (stores[0] / "zarr.json").exists():
            n = len(CaptureStore.open(stores[0]).sample_ids())
            if 1 <= n < 6:
                captured_at_kill = n
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    assert captured_at_kill is not None, "the run was not caught mid-capture"
    proc.wait()
    rerun = subprocess.run(DCAM + ["run", str(path), "--json"], env=_env(harness), cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    store = CaptureStore.open(next(p for p in (root / "capture").glob("*") if p.is_dir() and not p.name.startswith(".")))
    ids = store.sample_ids()
    assert len(ids) == 6 == len(set(ids)) and store.incomplete_ids() == []
    assert store.manifest().n_ok + store.manifest().n_failed == 6
    assert _partials(root) == []


def test_concurrent_runs_same_root(harness, tmp_path, tiny_model):
    cfg = make_config(tmp_path, tiny_model)
    path = _write(tmp_path, cfg)
    procs = [subprocess.Popen(DCAM + ["run", str(path), "--json"], env=_env(harness), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    results = [json.loads(o[0]) for o in outs]
    paths = [{s["path"] for s in r["stages"]} for r in results]
    assert paths[0] == paths[1]
    root = Path(cfg.root)
    assert _partials(root) == []
    for stage_dir in root.iterdir():
        if stage_dir.name.startswith(".") or not stage_dir.is_dir():
            continue
        for art in stage_dir.iterdir():
            if art.name.startswith("."):  # store locks; temporaries are _partials
                continue
            assert (art / "manifest.json").exists() or art.suffix == ".json", art


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_deployment_runs_on_interval(tmp_path, tiny_model):
    port = _free_port()
    home = tmp_path / "prefect-home"
    env = dict(os.environ, PREFECT_HOME=str(home), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_RUNNER_POLL_FREQUENCY="2")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    served = None
    try:
        import urllib.request

        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        cfg = make_config(tmp_path, tiny_model, report=False, explain={"presets": ["gradcam"]},
                          dataset={"synth": {"count": 2, "seed": 5}})
        path = _write(tmp_path, cfg)
        log = open(tmp_path / "serve.log", "w+")
        served = subprocess.Popen(DCAM + ["serve", str(path), "--interval", "5", "--name", "every5s"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True, text=True)
        served.stderr = log
        run_json = Path(cfg.root) / "run.json"
        deadline = time.time() + 240
        while time.time() < deadline and not run_json.exists() and served.poll() is None:
            time.sleep(2)
        if not run_json.exists():
            os.killpg(served.pid, signal.SIGKILL)
            log.seek(0)
            pytest.fail(f"the served deployment did not run within 240 s: {log.read()[-3000:]}")
        assert json.loads(run_json.read_text())["presets"]["gradcam"]["scores"]
    finally:
        for p in (served, server):
            if p is not None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------- URL roots
@pytest.fixture
def s3(monkeypatch):
    """A local S3-compatible server (moto) on loopback with one bucket, ``dcam``."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import urllib.request

    import s3fs

    endpoint = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))  # state is per process
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    fs.mkdir("dcam")
    try:
        yield {"endpoint": endpoint, "fs": fs, "options": {"client_kwargs": {"endpoint_url": endpoint}}}
    finally:
        server.stop()


def test_s3_root_cached_lazy_interrupted_upload_and_invalidation(harness, s3, tmp_path, tiny_model, monkeypatch, capsys):
    from flows.cli import main
    from flows.pipeline import artifact_root, run_pipeline_plain
    from flows.prefect_flows import pipeline_flow, with_runner

    fs = s3["fs"]
    explain = {"presets": [], "chains": [{"name": "dc", "preset": "diffusion-cam"}]}

    def s3_config(cache, **over):
        over.setdefault("explain", explain)
        return make_config(tmp_path, tiny_model, root="s3://dcam/run", storage_options=s3["options"],
                           cache_dir=str(tmp_path / cache), **over)

    cfg = s3_config("cache-a", report=True, report_max_samples=1)
    first = with_runner(pipeline_flow, cfg)(config=cfg.model_dump())
    assert {st for *_, st in statuses(first)} == {"computed"}
    root = artifact_root(cfg)
    fs.invalidate_cache()
    assert root.remote and str(root.local).startswith(str(tmp_path / "cache-a"))
    for s in first["stage_results"][:-1]:  # every artifact; the last one is the report, checked below
        assert fs.exists(f"{root.url_of(s['path'])}/manifest.json"), s
    run = json.loads(fs.cat_file("dcam/run/run.json"))
    assert run["root"] == "s3://dcam/run" and run["presets"]["dc"]["scores"].startswith("s3://dcam/run/merge-scores/")
    assert fs.exists("dcam/run/report/report.html") and fs.exists("dcam/run/report/manifest.json")

    # dcam inspect on the URL: the manifest chain back to the dataset
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])
    capsys.readouterr()
    main(["inspect", run["presets"]["dc"]["scores"], "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "scores" and {"capture", "dataset", "maps", "selection"} <= {s.get("kind") for s in info["lineage"]}
    monkeypatch.delenv("AWS_ENDPOINT_URL")

    # an upload interrupted before its manifest: the data is there, the commit marker is not. Another
    # machine (a fresh mirror) sees the artifact as absent and computes it; nothing else is downloaded.
    cba = next(s for s in first["stage_results"] if s["stage"] == "cba" and s["shard"] == 0)
    fs.rm(f"{root.url_of(cba['path'])}/manifest.json")
    assert fs.find(root.url_of(cba["path"]))  # the data files are still there
    cfg_b = s3_config("cache-b")
    second = with_runner(pipeline_flow, cfg_b)(config=cfg_b.model_dump())
    assert [(c, stage, sh) for c, stage, sh, st in statuses(second) if st == "computed"] == [("dc", "cba", 0)]
    fs.invalidate_cache()
    assert fs.exists(f"{root.url_of(cba['path'])}/manifest.json")
    mirror = artifact_root(cfg_b).local
    assert not (mirror / "capture").exists() and not (mirror / "gradcam").exists()  # downloaded only when read
    assert len(list((mirror / "dacg").iterdir())) == 1  # the one input the recomputed stage read

    # a second identical run (Dask workers when prefect-dask is installed, a third mirror): every stage cached
    runner = "dask" if importlib.util.find_spec("prefect_dask") else "thread"
    cfg_c = s3_config("cache-c", runner=runner)
    third = with_runner(pipeline_flow, cfg_c)(config=cfg_c.model_dump())
    assert {st for *_, st in statuses(third)} == {"cached"} and len(statuses(third)) == len(statuses(second))

    # the plain pipeline (dcam demo's) decides the same way
    plain = run_pipeline_plain(cfg_b)
    assert {s["status"] for entry in plain["presets"].values() for s in entry["stages"]} == {"cached"}, [(n, s["stage"], s["status"]) for n, entry in plain["presets"].items() for s in entry["stages"]]

    # one changed parameter (paper DACG smoothing width): DACG and what follows it recompute
    changed = {"presets": [], "chains": [{"name": "dc", "preset": "diffusion-cam", "params": {"dacg": {"sigma": 2.0}}}]}
    cfg_d = s3_config("cache-b", explain=changed)
    fourth = with_runner(pipeline_flow, cfg_d)(config=cfg_d.model_dump())
    computed = {(c, stage) for c, stage, sh, st in statuses(fourth) if st == "computed"}
    assert computed == {("dc", "dacg"), ("dc", "cba"), ("dc", "normalize"), ("dc", "sicd"), ("dc", "score"),
                        ("dc", "merge-maps"), ("dc", "merge-scores")}
    fs.invalidate_cache()
    assert not [p for p in fs.find("dcam/run") if ".tmp-" in p]


def test_s3_root_errors_are_one_line(s3, tmp_path, tiny_model, monkeypatch, capsys):
    from flows.cli import main

    fsspec_registry = importlib.import_module("fsspec.registry")._registry

    def run_cli(**over):
        cfg = make_config(tmp_path, tiny_model, **over)
        with pytest.raises(SystemExit) as e:
            main(["run", str(_write(tmp_path, cfg))])
        # stderr may also hold the Prefect harness's background log noise: one error line is what counts
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dcam: error:")]
        assert e.value.code == 1 and len(errors) == 1, errors
        return errors[0]

    err = run_cli(root="s3://no-such-bucket/run", storage_options=s3["options"])
    assert err.startswith("dcam: error: artifact root s3://no-such-bucket/run: bucket 'no-such-bucket' does not exist")
    closed = _free_port()
    err = run_cli(root="s3://dcam/run", storage_options={"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{closed}"},
                                                        "config_kwargs": {"retries": {"max_attempts": 1}}})
    assert "artifact root s3://dcam/run" in err and f"127.0.0.1:{closed}" in err and "AWS_ENDPOINT_URL" in err
    monkeypatch.setitem(sys.modules, "s3fs", None)  # s3fs not installed
    monkeypatch.delitem(fsspec_registry, "s3", raising=False)
    err = run_cli(root="s3://dcam/run")
    assert "artifact root s3://dcam/run" in err and 'pip install -e ".[s3]"' in err
    cfg = {"name": "t", "root": str(tmp_path / "local"), "storage_options": {"endpoint_url": "http://x"},
           "dataset": {"synth": {"count": 1}}}
    with pytest.raises(Exception, match="storage_options apply to a URL root"):
        RunConfig.model_validate(cfg)


def test_run_error_is_one_line_naming_the_log_of_tracebacks(harness, tmp_path, tiny_model, capsys):
    """Issue 13: Prefect's task tracebacks go to ROOT/.logs, not before the one-line error; results are JSON,
    not pickles (the failed state's exception included)."""
    from flows.cli import main

    cfg = make_config(tmp_path, tiny_model, capture={"model": f"toy:{tmp_path / 'no-model'}", "steps": 4})
    with pytest.raises(SystemExit) as e:
        main(["run", str(_write(tmp_path, cfg))])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("dcam: error: toy model: ") and "(Prefect's log: " in line
    log = Path(line.rsplit("(Prefect's log: ", 1)[1].rstrip(")"))
    assert log.parent == Path(cfg.root) / ".logs" and "Traceback" in log.read_text()
    results = [json.loads(p.read_text()) for p in (Path(cfg.root) / ".prefect-results").iterdir()]  # JSON, all
    assert results and all(r.get("metadata", {}).get("serializer", {}).get("type", "json") == "json" for r in results)

