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
from stages.explain.runner import chain_from_preset, explain_run
from stages.report.build import build_report, overlay_name, safe_name
from stages.report.overlay import heatmap_rgba, outline, overlay, save_png
from stages.score.metrics import resize_bilinear
from stages.synth.write import write_dataset
from stages.toy.model import ToyConfig, ToyDMLLM

PRESETS = ("gradcam", "ablation-baseline", "ablation-full")
N_SAMPLES, SIZE = 2, 96


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
    image = np.zeros((10, 10, 3), np.uint8)
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
    assert np.array_equal(red, ring)  # the inner border of label 3, interior and background untouched
    corner = np.ones((3, 3), bool)
    corner[1, 1] = False
    assert np.array_equal(green[7:, 7:], corner) and green.sum() == 8  # closed along the image border too
    assert not out[mask == 0].any()
    with pytest.raises(ValueError, match="semantic_mask"):
        outline(image, mask[:5])


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
    explain_run(store, explain, [chain_from_preset(n) for n in PRESETS], dataset=data)
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
    assert "<link" not in page and "<script" not in page
    run = json.loads((run_dir / "run.json").read_text())
    ids = sorted(read_mapset(run["presets"][PRESETS[0]]["maps"]).index["sample_id"].unique())
    assert len(ids) == N_SAMPLES
    for sid in ids:
        assert f"id='s-{sid}'" in page
    for name in PRESETS:
        assert f"<th class='method'>{name}</th>" in page
    assert "<td class='best'>" in page  # the metrics table marks its best values
    for png in _pngs(page):
        Image.open(io.BytesIO(png)).verify()  # every inlined image decodes


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
    assert "alt='ablation chart'" in report.read_text()
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
    assert not (path.parent / "ablation.png").exists() and "No ablation-* presets" in page
    build_report(run_dir, tmp_path / "one", max_samples=1, methods=["gradcam"])  # an earlier report is replaced


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
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.endswith("not an explain run directory: run 'dcam explain STORE --score' first")


def test_cli_writes_the_report(run_dir, tmp_path, capsys):
    from flows.cli import main

    main(["report", str(run_dir), "--out", str(tmp_path / "cli"), "--max-samples", "1", "--methods", "gradcam"])
    assert f"report: {tmp_path / 'cli' / 'report.html'}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["report", str(run_dir), "--out", str(tmp_path / "cli"), "--methods", "nope"])
    assert "unknown method(s) nope" in capsys.readouterr().err


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
