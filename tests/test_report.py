"""Report stage: overlay/outline on hand-made images, and the HTML report of a real (tiny) explain run."""

import io
import json
import re

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from schemas.manifest import read_manifest
from stages.capture.core import CaptureConfig
from stages.capture.run import capture_dataset
from stages.capture.toy_adapter import ToyAdapter
from stages.graph import run_explain
from stages.presets import get_preset
from schemas.errors import DcamError
from stages.report.build import ablation_figure, build_report, display_map, overlay_name, safe_name
from stages.report.data import PresetResults
from stages.report.overlay import contours, heatmap_rgba, instance_outlines, mark_peak, outline, overlay, peak, save_png
from stages.score.metrics import resize_bilinear
from stages.synth.write import write_dataset
from stages.toy.model import ToyConfig, ToyDMLLM

PRESETS = ("gradcam", "ablation-baseline", "ablation-full")
N_SAMPLES, SIZE = 2, 96
#: A hand-written faithfulness summary (the contract of the faithfulness stage): one method flagged.
FAITHFULNESS = {"baseline": "mean", "methods": [
    {"method": "gradcam", "n_maps": 12, "deletion_auc": 0.41, "deletion_auc_ci": [0.35, 0.47],
     "insertion_auc": 0.52, "insertion_auc_ci": [0.46, 0.58], "random_deletion_auc": 0.45,
     "random_deletion_auc_ci": None, "random_insertion_auc": 0.44, "random_insertion_auc_ci": None,
     "occlusion_spearman": 0.12, "occlusion_spearman_ci": [-0.05, 0.3], "target_sensitivity": 0.97,
     "target_sensitivity_ci": [0.95, 0.99], "norm_spearman": 0.91, "norm_spearman_ci": [0.88, 0.94],
     "randomisation": {"1": 0.98, "2": 0.95}, "flags": ["maps survive model randomisation (rho 0.95 at depth 2)",
                                                        "target-insensitive (rho 0.97)"]},
    {"method": "ablation-full", "n_maps": 12, "deletion_auc": 0.30, "deletion_auc_ci": [0.25, 0.36],
     "insertion_auc": 0.61, "insertion_auc_ci": [0.55, 0.66], "random_deletion_auc": 0.45,
     "random_deletion_auc_ci": None, "random_insertion_auc": 0.44, "random_insertion_auc_ci": None,
     "occlusion_spearman": 0.55, "occlusion_spearman_ci": [0.41, 0.66], "target_sensitivity": 0.42,
     "target_sensitivity_ci": None, "norm_spearman": None, "norm_spearman_ci": None,
     "randomisation": None, "flags": []},
]}


def _jet(v: float) -> np.ndarray:
    return np.asarray(matplotlib.colormaps["jet"](v, bytes=True)[:3], dtype=np.float64)


# ------------------------------------------------------------------ pure functions


def test_overlay_colours_the_quadrant_where_the_map_is_one():
    image = np.full((8, 8, 3), 100, np.uint8)
    heat = np.zeros((8, 8))
    heat[:4, :4] = 1.0  # same size as the image: the resize is the identity
    out = overlay(image, heat, alpha=0.5)
    hot = np.rint(0.5 * 100 + 0.5 * _jet(1.0)).astype(np.uint8)
    cold = np.rint(0.5 * 100 + 0.5 * _jet(0.0)).astype(np.uint8)
    assert (out[:4, :4] == hot).all()
    assert (out[4:, :] == cold).all() and (out[:, 4:] == cold).all()
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: 1 is red, 0 is blue
    assert (image == 100).all()  # input not mutated


def test_overlay_upsamples_bilinearly_like_the_scores():
    image = np.zeros((8, 8, 3), np.uint8)
    heat = np.array([[1.0, 0.0], [0.0, 0.0]])
    out = overlay(image, heat, alpha=1.0)
    up = resize_bilinear(heat, (8, 8))
    expected = np.asarray(matplotlib.colormaps["jet"](up, bytes=True))[..., :3]
    assert np.array_equal(out, expected)
    assert out[0, 0, 0] > out[0, 0, 2] and out[7, 7, 2] > out[7, 7, 0]  # red corner, blue opposite corner


def test_overlay_and_heatmap_validate_their_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.full((2, 2), 2.0))
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay(np.zeros((4, 4, 3), np.float32), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="cmap"):
        heatmap_rgba(np.zeros((2, 2)), cmap="no-such-map")
    rgba = heatmap_rgba(np.array([[0.0, 1.0]]))
    assert rgba.shape == (1, 2, 4) and rgba.dtype == np.uint8 and (rgba[..., 3] == 255).all()


def test_outline_draws_each_object_border_in_its_own_colour():
    image = np.full((10, 10, 3), 100, np.uint8)
    mask = np.zeros((10, 10), np.int32)
    mask[2:6, 2:6] = 3
    mask[7:10, 7:10] = 5
    colours = {3: (255, 0, 0), 5: (0, 255, 0)}
    out = outline(image, mask, colors=colours, thickness=1)
    red = (out == (255, 0, 0)).all(axis=2)
    green = (out == (0, 255, 0)).all(axis=2)
    ring = np.zeros((10, 10), bool)
    ring[2:6, 2:6] = True
    ring[3:5, 3:5] = False
    assert np.array_equal(red, ring)  # the inner border of label 3
    assert (out[3:5, 3:5] == 0).all()  # then a black rim just inside it (the 2x2 interior here)
    corner = np.ones((3, 3), bool)
    corner[1, 1] = False
    assert np.array_equal(green[7:, 7:], corner) and green.sum() == 8  # closed along the image border too
    assert (out[mask == 0] == 100).all()  # background untouched
    with pytest.raises(ValueError, match="semantic_mask"):
        outline(image, mask[:5])


def test_contours_outline_each_instance_solid_or_dashed_with_a_dark_rim():
    image = np.full((8, 12, 3), 100, np.uint8)
    a = np.zeros((8, 12), bool)
    a[1:5, 1:5] = True  # the target's instance
    b = np.zeros((8, 12), bool)
    b[1:7, 6:12] = True  # another object, cut by the right border
    lines = instance_outlines(np.stack([a, b]), thickness=1)
    out = contours(image, lines, solid=[True, False], color=(255, 255, 255), dash=2)
    white = (out == 255).all(axis=2)
    black = (out == 0).all(axis=2)
    ring_a = a & ~np.pad(a[1:-1, 1:-1] & a[:-2, 1:-1] & a[2:, 1:-1] & a[1:-1, :-2] & a[1:-1, 2:], 1)
    assert np.array_equal(white & a, ring_a)  # the whole 1-px inner border of a, nothing else of a
    assert black[2:4, 2:4].all()  # the rim just inside it
    # b is dashed: drawn where (row + col) // 2 is even, so some of its border is white, some is not.
    border_b = b & ~np.pad(b[1:-1, 1:-1] & b[:-2, 1:-1] & b[2:, 1:-1] & b[1:-1, :-2] & b[1:-1, 2:], 1)
    border_b[:, -1] = b[:, -1]  # closed along the image border too
    rows, cols = np.indices(b.shape)
    assert np.array_equal(white & b, border_b & (((rows + cols) // 2) % 2 == 0))
    assert (out[~(a | b)] == 100).all() and (image == 100).all()
    with pytest.raises(ValueError, match="solid: 1 flags for 2 instances"):
        contours(image, lines, solid=[True], color=(255, 255, 255))


def test_peak_marker_is_a_bordered_cross_at_the_maximum():
    heat = np.zeros((9, 9))
    heat[2, 6] = 1.0
    heat[7, 1] = 1.0  # a tie: the first in row-major order is the pointing game's point drawn
    assert peak(heat) == (2, 6)
    out = mark_peak(np.full((9, 9, 3), 100, np.uint8), 2, 6, color=(255, 0, 255), arm=2)
    magenta = (out == (255, 0, 255)).all(axis=2)
    assert sorted(map(tuple, np.argwhere(magenta))) == [(0, 6), (1, 6), (2, 4), (2, 5), (2, 6), (2, 7), (2, 8),
                                                        (3, 6), (4, 6)]
    assert (out[1, 5] == 0).all() and (out[5, 6] == 0).all()  # black border beside and beyond the arms
    with pytest.raises(ValueError, match="outside the image"):
        mark_peak(out, 9, 0, color=(255, 0, 255))


def test_display_map_for_each_colour_map():
    raw = np.array([[-2.0, 0.0], [1.0, 4.0]])
    np.testing.assert_allclose(display_map(raw, "jet"), [[0.0, 0.0], [0.25, 1.0]])  # ReLU, / max: as scored
    np.testing.assert_allclose(display_map(raw, "diverging"), [[0.25, 0.5], [0.625, 1.0]])  # (raw / 4 + 1) / 2
    np.testing.assert_allclose(display_map(np.zeros((2, 2)), "diverging"), np.full((2, 2), 0.5))


def test_ablation_axis_spans_zero_to_one_whatever_the_values():
    presets = [PresetResults(f"ablation-{k}", [], "", None, None, summary={"f3": 0.003, "obj_iou": 0.002},
                       intervals={"f3": (0.001, 0.0035)}) for k in ("baseline", "full")]
    fig = ablation_figure(presets)
    assert fig.axes[0].get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Baseline", "Full"]
    assert ablation_figure([PresetResults("gradcam", [], "", None, None, summary={"f3": 0.3})]) is None
    # three rows, one without intervals: the error bars are (2, rows), lower and upper extent of each bar
    rows = [PresetResults(f"ablation-{k}", [], "", None, None, summary={"f3": 0.5, "obj_iou": 0.4},
                    intervals={"f3": (0.4, 0.7), "obj_iou": (0.3, 0.45)} if k != "akd" else {})
            for k in ("baseline", "akd", "full")]
    ax = ablation_figure(rows).axes[0]
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    spans = sorted(round(float(abs(seg[1][1] - seg[0][1])), 6) for seg in segments)
    assert spans == sorted([0.3, 0.0, 0.3, 0.15, 0.0, 0.15])  # F3 0.4..0.7, Obj-IoU 0.3..0.45, none for +AKD


def test_save_png_round_trips(tmp_path):
    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    path = save_png(arr, tmp_path / "a" / "b.png")
    assert np.array_equal(np.asarray(Image.open(path)), arr)


def test_overlay_file_names_are_safe():
    assert safe_name("a/b c?") == "a-b-c"
    assert safe_name("???") == "word"
    assert overlay_name("000001", 3, "dog's", "word") == "000001_03_dog-s.png"
    assert overlay_name("000001", 12, "a dog runs", "response") == "000001_12_response.png"
    assert overlay_name("000001", 2, "dog", "word", layer=4) == "000001_02_dog_L4.png"


# ------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    write_dataset(data, count=N_SAMPLES, seed=2, size=SIZE)
    torch.manual_seed(0)
    model = ToyDMLLM(ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3,
                               num_heads=2, gen_length=8))
    model_dir = model.save_pretrained(root / "model")
    store = root / "store"
    capture_dataset(data, store, adapter=ToyAdapter.load(str(model_dir)), model_spec="toy",
                    config=CaptureConfig(layers=(1,), steps=4, block_length=8, score="contrastive"))  # always scored
    explain = root / "explain"
    run_explain(explain, store, [get_preset(n) for n in PRESETS], dataset=data)
    faith = explain / "faithfulness"
    faith.mkdir()
    (faith / "summary.json").write_text(json.dumps(FAITHFULNESS))
    run = json.loads((explain / "run.json").read_text())
    run["faithfulness"] = "faithfulness"  # relative to the run directory
    run["presets"]["occlusion"] = {**run["presets"]["gradcam"], "chain": ["occlusion"]}  # a reference map
    (explain / "run.json").write_text(json.dumps(run))
    return explain


@pytest.fixture(scope="module")
def report(run_dir):
    return build_report(run_dir)


def _pngs(page: str) -> list[bytes]:
    import base64

    return [base64.b64decode(u) for u in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_is_self_contained_and_complete(run_dir, report):
    from schemas.maps import read_mapset

    assert report == run_dir / "report" / "report.html"
    page = report.read_text()
    assert "http://" not in page and "https://" not in page and 'src="file' not in page and "src='file" not in page
    assert "<link" not in page and "<script src" not in page and page.count("<script>") == 1  # the sort script
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
    assert str(run_dir.resolve()) not in page and str(run_dir.parent.resolve()) not in page  # relative paths only
    assert "<tr><td>run</td><td>..</td></tr>" in page  # the run directory, seen from report/
    run = json.loads((run_dir / "run.json").read_text())
    ids = sorted(read_mapset(run["presets"][PRESETS[0]]["maps"]).index["sample_id"].unique())
    assert len(ids) == N_SAMPLES
    for sid in ids:
        assert f"id='s-{sid}'" in page
    for name in (*PRESETS, "occlusion"):  # a reference map is shown like any method
        assert f"<th scope='col' class='method'>{name.replace('-', '-<wbr>')}</th>" in page
    assert "<td class='best' data-v=" in page  # the metrics table marks its best values
    assert page.count("class='cbar'") == N_SAMPLES  # a colour bar per overlay grid
    for png in _pngs(page):
        Image.open(io.BytesIO(png)).verify()  # every inlined image decodes


def test_metrics_table_defines_each_column_and_shows_bootstrap_intervals(run_dir, report):
    import pandas as pd

    from stages.score.aggregate import summary_intervals

    page = report.read_text()
    assert "Higher is better." in page and "<dt>F3</dt>" in page and "<dt>Obj-IoU</dt>" in page
    assert "<span class='dir'> ↑</span>" in page and "table class='metrics sortable'" in page
    run = json.loads((run_dir / "run.json").read_text())
    metrics = pd.read_parquet(run_dir / run["presets"]["gradcam"]["scores"].split("explain/")[-1] / "metrics.parquet")
    lo, hi = summary_intervals(metrics, ["obj_iou"])["obj_iou"]  # resampling samples, seeded
    assert lo < hi
    assert f"[{lo:.3f}, {hi:.3f}]</span>" in page


def test_faithfulness_table_beside_plausibility_flags_failed_sanity_checks(report):
    page = report.read_text()
    faith = page[page.index("<h2>Faithfulness</h2>"):page.index("<h2>Ablation</h2>")]
    assert page.index("<h2>Plausibility</h2>") < page.index("<h2>Faithfulness</h2>")
    assert "mean baseline" in faith and "1 method(s) fail a sanity check" in faith
    rows = {re.search(r"data-v='([^']+)'", r).group(1): r for r in faith.split("<tr>")[2:]}
    assert set(rows) == {"gradcam", "ablation-full"}
    assert "flagged" in rows["gradcam"] and "target-insensitive (rho 0.97)" in rows["gradcam"]
    assert "flagged" not in rows["ablation-full"]
    assert "0.410<span class='ci'" in rows["gradcam"] and "[0.350, 0.470]" in rows["gradcam"]
    assert "1: 0.98, 2: 0.95" in rows["gradcam"]
    assert "<dt>Deletion AUC</dt><dd>" in faith and "Lower is better." in faith
    assert "<dt>Target sensitivity</dt>" in faith and "low means the map depends on the word (target-sensitive)" in faith


def test_thumbnails_link_their_full_size_overlay_and_say_what_they_show(run_dir, report):
    page = report.read_text()
    cells = re.findall(r"<a href='(overlays/[^']+)'><img alt='([^']+)' title='([^']+)'", page)
    assert len(cells) > N_SAMPLES * len(PRESETS)
    for href, alt, title in cells:
        assert (report.parent / href).is_file()
        assert alt == title and alt.startswith("sample ")
    sid = cells[0][0].split("/")[-1].split("_")[0]
    assert any(alt.startswith(f"sample {sid}, ") and alt.endswith(("hit", "miss")) and ", gradcam: IoU " in alt
               for _, alt, _ in cells)


def test_overlays_carry_the_ground_truth_and_the_peak(run_dir, report):
    from stages.ingest.loaders import load_dataset, load_instance_masks
    from stages.report.overlay import _inner_edges, upscale_nearest

    run = json.loads((run_dir / "run.json").read_text())
    sample = load_dataset(run["dataset"]).samples[0]
    files = sorted((report.parent / "overlays" / "gradcam").glob(f"{sample.sample_id}_*_contrastive.png"))
    assert len(files) == 1
    img = np.asarray(Image.open(files[0]))
    white = (img == 255).all(axis=2)  # jet has no white: only outlines and the cross are white
    edges = np.zeros(white.shape, bool)
    for m in load_instance_masks(sample):  # the contrastive row is scored against every object: all solid
        edges |= _inner_edges(upscale_nearest(m, 3), 3)
    assert white[edges].mean() > 0.9  # the cross may cover a few outline pixels with its black border
    assert (white & ~edges).sum() > 0  # the cross


def test_overwrite_is_explicit_and_colour_maps_are_options(run_dir, tmp_path):
    first = build_report(run_dir, tmp_path / "r", methods=["gradcam"], max_samples=1, cmap="viridis")
    assert read_manifest(first.parent, "report").config["cmap"] == "viridis"
    with pytest.raises(DcamError, match="holds a report already; pass --overwrite"):
        build_report(run_dir, tmp_path / "r", methods=["gradcam"], max_samples=1, overwrite=False)
    second = build_report(run_dir, tmp_path / "r", methods=["gradcam"], max_samples=1, cmap="diverging")
    page = second.read_text()
    assert "raw and signed" in page and "RdBu_r" in page
    with pytest.raises(DcamError, match="cmap: expected one of jet, viridis, diverging"):
        build_report(run_dir, tmp_path / "x", cmap="hot")
    assert not (tmp_path / "x").exists()


def test_overlay_files_exist_at_publication_size(run_dir, report):
    from schemas.maps import read_mapset

    run = json.loads((run_dir / "run.json").read_text())
    for name in PRESETS:
        index = read_mapset(run["presets"][name]["maps"]).index
        files = sorted((report.parent / "overlays" / name).glob("*.png"))
        assert len(files) == len(index)  # one file per map: one layer, so no _L suffix collisions
        for rec in index.to_dict(orient="records"):
            path = report.parent / "overlays" / name / overlay_name(rec["sample_id"], rec["target"], rec["word"],
                                                                    rec["target_kind"])
            with Image.open(path) as im:
                assert im.size == (3 * SIZE, 3 * SIZE) and im.mode == "RGB"  # 96 px enlarged x3 to 288 px


def test_ablation_chart_and_manifest(run_dir, report):
    out = report.parent
    with Image.open(out / "ablation.png") as im:
        assert im.format == "PNG" and im.width > 300
    assert "alt='Ablation chart: F3 and Obj-IoU of 2 ablation-* presets on a 0 to 1 axis'" in report.read_text()
    m = read_manifest(out, "report")
    assert m.stage == "report"
    assert {f"maps:{n}" for n in PRESETS} | {f"scores:{n}" for n in PRESETS} <= set(m.inputs)
    assert all(len(ref.content_digest) == 64 for ref in m.inputs.values())
    assert len(m.samples) == N_SAMPLES and all(s.status == "ok" for s in m.samples)


def test_limits_and_method_selection(run_dir, tmp_path):
    path = build_report(run_dir, tmp_path / "one", max_samples=1, methods=["gradcam"])
    page = path.read_text()
    assert page.count("<section id=") == 1
    assert f"{N_SAMPLES - 1} more sample(s) omitted" in page
    assert sorted(p.name for p in (path.parent / "overlays").iterdir()) == ["gradcam"]
    # The chart uses every scored ablation preset of the run, shown or not, and says so.
    assert (path.parent / "ablation.png").is_file() and "2 of the run's 2 ablation-* presets" in page
    build_report(run_dir, tmp_path / "one", max_samples=1, methods=["gradcam"])  # an earlier report is replaced


def test_ablation_messages_say_what_the_run_has(run_dir, tmp_path):
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("report"))
    run = json.loads((moved / "run.json").read_text())
    for name in PRESETS[1:]:
        run["presets"][name]["scores"] = None
    (moved / "run.json").write_text(json.dumps(run))
    page = build_report(moved, methods=["gradcam"], max_samples=1).read_text()
    assert "This run has 2 ablation-* preset(s), but none has scores" in page
    run["presets"] = {"gradcam": run["presets"]["gradcam"]}
    (moved / "run.json").write_text(json.dumps(run))
    page = build_report(moved, max_samples=1).read_text()
    assert "This run has no ablation-* presets" in page


def test_run_paths_relative_to_another_directory_still_resolve(run_dir, tmp_path):
    # dcam explain records the paths it was given, e.g. relative to where it ran.
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("report"))
    run = json.loads((moved / "run.json").read_text())
    for entry in run["presets"].values():
        for key in ("maps", "scores"):
            entry[key] = "elsewhere/explain/" + "/".join(entry[key].split("/")[-2:])
    (moved / "run.json").write_text(json.dumps(run))
    path = build_report(moved, methods=["ablation-full"], max_samples=1)
    assert path.is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path)])
    assert e.value.code == 2  # a wrong command line: the usage status
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.endswith("not an explain run directory: run 'dcam explain STORE --score' first")


def test_cli_writes_the_report(run_dir, tmp_path, capsys):
    from flows.cli import main

    main(["report", str(run_dir), "--out", str(tmp_path / "cli"), "--limit", "1", "--preset", "gradcam"])
    assert f"report: {tmp_path / 'cli' / 'report.html'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["report", str(run_dir), "--out", str(tmp_path / "new"), "--preset", "gradcam,nope"])
    assert e.value.code == 2 and "unknown preset(s) nope: this run has gradcam" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_sample_without_its_image_is_reported_as_failed(run_dir, tmp_path):
    import shutil

    run = json.loads((run_dir / "run.json").read_text())
    data = tmp_path / "data"
    shutil.copytree(run["dataset"], data)
    images = sorted((data / "image").glob("*.jpg"))
    images[0].unlink()
    moved = tmp_path / "run"
    moved.mkdir()
    run.update(store=str(tmp_path / "gone"), dataset=str(data))  # no store: image paths come from the dataset
    (moved / "run.json").write_text(json.dumps(run))
    path = build_report(moved, methods=["gradcam"])
    statuses = {s.sample_id: s for s in read_manifest(path.parent, "report").samples}
    assert statuses[images[0].stem].status == "failed" and "image" in statuses[images[0].stem].reason
    assert all(s.status == "ok" for sid, s in statuses.items() if sid != images[0].stem)
    page = path.read_text()
    assert "not rendered" in page and "(not readable now)" in page


def test_unreadable_inputs_are_named_on_the_page_or_refused(run_dir, tmp_path):
    run = json.loads((run_dir / "run.json").read_text())
    moved = tmp_path / "run"
    moved.mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    run.update(store=str(tmp_path / "gone"), dataset=str(bad))
    (moved / "run.json").write_text(json.dumps(run))
    page = build_report(moved, methods=["gradcam"]).read_text()
    assert page.count("<p class='note failed'>capture store unreadable, so no generated text or image paths") == 1
    assert f"<p class='note failed'>dataset {bad} unreadable, so no ground-truth masks: {bad} is malformed JSON" in page
    run["presets"]["gradcam"]["scores"] = str(tmp_path / "nowhere" / "scores" / "x")  # named, but gone
    (moved / "run.json").write_text(json.dumps(run))
    with pytest.raises(DcamError, match=r"^artifact \S+/nowhere/scores/x named in \S+run.json is missing; rerun"):
        build_report(moved, methods=["gradcam"])
