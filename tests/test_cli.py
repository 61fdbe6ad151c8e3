"""The ``dcam`` command line: one-line errors, one exit status per kind, validation before any output,
progress with a known total, one spelling per concept, ``--version``. Each defect of issue 14 is pinned here.
"""

import io
import json

import pytest

from flows.cli import main
from flows.options import EXIT_CODES, parse_int_list, split_list
from flows.progress import Progress, progress_bar
from test_report import run_dir  # noqa: F401  (a small real run: store, dataset, toy model, explain root)


def run(args, capsys):
    """(exit status, stdout, stderr) of ``dcam ARGS``."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcam: error: "), err
    return lines[0]


# ------------------------------------------------------------------ help, version, exit statuses


def test_help_documents_each_exit_status(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    for status, meaning in EXIT_CODES.items():
        assert f"{status} {' '.join(meaning.split())}" in text
    assert "usage error" in EXIT_CODES[2] and "samples failed" in EXIT_CODES[3]


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("dcam ") and len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["data", "synth", "--out", "{tmp}/ds", "--count", "0", "--seed", "0"], "--count: must be >= 1, got 0"),
    (["report", "{tmp}", "--limit", "0"], "--limit: must be >= 1, got 0"),
    (["refine", "--input", "{tmp}/x.npy", "--output", "{tmp}/y.npy", "--modules", "akd", "--modules", "blur"],
     "unknown module(s) blur"),
    (["toy", "eval", "--data", "{tmp}", "--mode", "nosuch"], "--mode: expected one of"),
    (["serve", "{tmp}/c.yaml", "--interval", "5", "--max-concurrent", "0"], "--max-concurrent: must be >= 1"),
    (["serve", "{tmp}/c.yaml", "--interval", "5", "--limit", "2"], "No such option: --limit"),
    (["run", "{tmp}/c.yaml", "--flow", "nosuch"], "--flow: expected one of pipeline, capture, explain, sweep"),
])
def test_usage_errors_exit_2_in_one_line(tmp_path, capsys, args, message):
    code, _, err = run([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "ds").exists()


def test_flow_names_are_the_flows():
    from flows.cli_run import FLOW_NAMES
    from flows.prefect_flows import FLOWS

    assert FLOW_NAMES == tuple(FLOWS)


def test_an_unexpected_exception_is_one_line_unless_asked(monkeypatch, capsys):
    monkeypatch.setattr("stages.presets.PRESETS", None)  # 'dcam presets' reads it: a bug deep inside
    code, _, err = run(["presets"], capsys)
    line = one_line_error(err)
    assert code == 1 and "internal error: AttributeError" in line and "DCAM_TRACEBACK=1" in line
    monkeypatch.setenv("DCAM_TRACEBACK", "1")
    with pytest.raises(AttributeError):
        main(["presets"])


def test_a_closed_pipe_ends_quietly(tmp_path, monkeypatch, capsys):
    class ClosedPipe(io.TextIOWrapper):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    sink = open(tmp_path / "sink", "wb")
    monkeypatch.setattr("sys.stdout", ClosedPipe(sink))
    with pytest.raises(SystemExit) as e:
        main(["presets"])  # as in 'dcam presets | head -1': the reader went away
    assert e.value.code == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ validate before creating anything


@pytest.fixture(scope="module")
def parts(run_dir):  # noqa: F811
    root = run_dir.parent
    return {"store": root / "store", "data": root / "data", "model": root / "model", "run": run_dir}


def test_capture_rejects_a_bad_device_and_a_file_as_out_before_writing(parts, tmp_path, capsys):
    base = ["capture", "--data", parts["data"], "--model", f"toy:{parts['model']}"]
    code, _, err = run([*base, "--out", tmp_path / "store", "--device", "tpu"], capsys)
    assert code == 2 and "--device: expected cpu, cuda or cuda:N, got 'tpu'" in one_line_error(err)
    assert not (tmp_path / "store").exists()
    afile = tmp_path / "file"
    afile.write_text("x")
    code, _, err = run([*base, "--out", afile], capsys)
    assert code == 2 and f"--out: {afile} exists and is not a directory" in one_line_error(err)


def test_explain_validates_before_making_any_directory(parts, tmp_path, capsys):
    out = tmp_path / "explain"
    code, _, err = run(["explain", parts["store"], "--out", out, "--policy", "nosuch"], capsys)
    assert code == 2 and "--policy: expected one of unmask-step" in one_line_error(err)
    code, _, err = run(["explain", parts["store"], "--out", out, "--step-indices", "1"], capsys)
    assert code == 2 and "--step-indices: only used with --policy explicit" in one_line_error(err)
    code, _, err = run(["explain", parts["store"], "--out", out, "--preset", "gradcam,nosuch"], capsys)
    assert code == 2 and "--preset:" in one_line_error(err)
    assert not out.exists()


def test_score_map_names_what_the_heatmap_really_is(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    mask = tmp_path / "m.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mask)
    code, _, err = run(["score-map", "--heatmap", tmp_path, "--mask", mask], capsys)
    assert code == 2 and f"--heatmap: {tmp_path} is a directory, not a .npy file" in one_line_error(err)
    png = tmp_path / "h.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    code, _, err = run(["score-map", "--heatmap", png, "--mask", mask], capsys)
    assert code == 1 and f"--heatmap: {png} is a PNG image; expected a 2-D array saved with numpy.save" in one_line_error(err)


def test_report_replaces_an_earlier_report_only_with_overwrite(parts, tmp_path, capsys):
    args = ["report", parts["run"], "--out", tmp_path / "r", "--limit", "1", "--preset", "gradcam"]
    assert run(args, capsys)[0] == 0
    code, _, err = run(args, capsys)
    assert code == 2 and "exists; pass --overwrite to replace the report there" in one_line_error(err)
    assert run([*args, "--overwrite"], capsys)[0] == 0


def test_toy_train_refuses_the_bundled_weights_without_overwrite(capsys):
    from stages.toy.model import BUNDLED_WEIGHTS

    before = {p.name: p.stat().st_mtime_ns for p in BUNDLED_WEIGHTS.iterdir()}
    code, _, err = run(["toy", "train"], capsys)  # the default --out is the bundled weights
    assert code == 2 and "(the bundled weights) is not empty; pass --overwrite" in one_line_error(err)
    assert {p.name: p.stat().st_mtime_ns for p in BUNDLED_WEIGHTS.iterdir()} == before


# ------------------------------------------------------------------ one spelling, lists


def test_list_options_take_repetition_and_commas():
    assert split_list(["a,b", " c ", ""]) == ["a", "b", "c"] and split_list("a, b") == ["a", "b"]
    assert split_list(None) is None
    assert parse_int_list(["0,3", "7"], "--layers") == [0, 3, 7] and parse_int_list(None, "--layers") is None
    with pytest.raises(Exception, match="--layers must be integers"):
        parse_int_list(["0,x"], "--layers")


def test_report_presets_by_repetition_equal_presets_by_comma(parts, tmp_path, capsys):
    from schemas.manifest import read_manifest

    a = ["report", parts["run"], "--limit", "1", "--out", tmp_path / "a", "--preset", "gradcam", "--preset", "ablation-full"]
    b = ["report", parts["run"], "--limit", "1", "--out", tmp_path / "b", "--preset", "gradcam,ablation-full"]
    assert run(a, capsys)[0] == 0 and run(b, capsys)[0] == 0
    methods = [read_manifest(tmp_path / x, "report").config["methods"] for x in "ab"]
    assert methods[0] == methods[1] == ["gradcam", "ablation-full"]


# ------------------------------------------------------------------ progress


def test_plain_progress_lines_have_the_total_and_an_eta():
    times = iter(range(0, 100, 2))  # a clock: every reading 2 s after the previous one
    stream = io.StringIO()
    progress = Progress("capture", 10, stream=stream, clock=lambda: next(times))
    for i in range(10):
        progress(1, f"ok {i + 1}")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # one per tenth of the work
    # 5 of 10 done after 5 readings (10 s): 10 s to go at that pace.
    assert lines[4] == "capture: 5/10 (50%) elapsed 0:00:10 ETA 0:00:10 ok 5"
    assert lines[-1].startswith("capture: 10/10 (100%) elapsed 0:00:20 ETA 0:00:00")


def test_progress_off_a_tty_prints_lines_and_sets_a_late_total():
    stream = io.StringIO()  # not a terminal
    with progress_bar("report", None, stream=stream) as progress:
        progress.update(0, 4)
        progress.update(4)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("report: 0/4 (0%)") and lines[-1].startswith("report: 4/4 (100%)")


def test_capture_progress_knows_the_total(parts, tmp_path, capsys):
    code, out, err = run(["capture", "--data", parts["data"], "--model", f"toy:{parts['model']}", "--out",
                          tmp_path / "store", "--steps", "4", "--block-length", "8", "--limit", "1"], capsys)
    assert code == 0, err
    assert "capture: 1/1 (100%)" in err and "captured 1 samples" in out
    info_code, info, _ = run(["inspect", tmp_path / "store", "--json"], capsys)
    assert info_code == 0 and json.loads(info)["n_ok"] == 1
