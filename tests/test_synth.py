"""The synthetic grounded dataset: scene rendering, caption grammar, the COCO writer and ``dcam data synth``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from schemas.errors import DcamError
from schemas.manifest import digest_files, read_manifest
from stages.synth import CATEGORIES, COLOURS, SHAPES, caption_for, parse_caption, render_scene, write_dataset
from stages.synth.render import _RGB

SEED, COUNT = 7, 12


def _scene(i: int, seed: int = SEED, **kw):
    return render_scene(np.random.default_rng(np.random.SeedSequence([seed, i])), **kw)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    write_dataset(out, count=COUNT, seed=SEED)
    return out


# --- caption grammar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pairs, caption",
    [
        ([("red", "circle")], "a red circle"),
        ([("red", "circle"), ("blue", "square")], "a red circle and a blue square"),
        ([("red", "circle"), ("blue", "square"), ("green", "triangle")], "a red circle , a blue square and a green triangle"),
    ],
)
def test_caption_grammar_known_answers(pairs, caption):
    assert caption_for(pairs) == caption
    assert parse_caption(caption) == pairs


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a red circle.",
        "the red circle",
        "a pink circle",
        "a red hexagon",
        "a red circle , a blue square",
        "a red circle and a blue square and a green cross",
        "a red circle  and a blue square",
        "A red circle",
    ],
)
def test_parse_caption_rejects_other_grammars(bad):
    with pytest.raises(ValueError, match="caption"):
        parse_caption(bad)


def test_caption_for_rejects_unknown_words():
    with pytest.raises(ValueError, match="colour"):
        caption_for([("pink", "circle")])
    with pytest.raises(ValueError, match="objects"):
        caption_for([])


# --- render_scene ------------------------------------------------------------------------------------------


def test_scene_is_deterministic_in_the_generator():
    a, b = _scene(3), _scene(3)
    assert np.array_equal(a.image, b.image)
    assert a.caption == b.caption
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.objects, b.objects))


def test_scene_geometry_over_many_samples():
    counts = set()
    for i in range(60):
        scene = _scene(i)
        counts.add(len(scene.objects))
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        assert parse_caption(scene.caption) == [(o.colour, o.shape) for o in scene.objects]
        centres = [o.centre_x for o in scene.objects]
        assert all(b - a >= 6.0 for a, b in zip(centres, centres[1:])), centres
        for o in scene.objects:
            rows, cols = np.nonzero(o.mask)
            assert o.bbox == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
            assert 15 <= max(o.bbox[2], o.bbox[3]) <= 31, o.bbox
        for j, a in enumerate(scene.objects):
            # chessboard distance from a's pixels: every pixel of another object lies more than 2 px away
            dist = ndimage.distance_transform_cdt(~a.mask, metric="chessboard")
            for b in scene.objects[j + 1 :]:
                assert dist[b.mask].min() > 2
    assert counts == {1, 2, 3}


def _classify_shape(mask: np.ndarray) -> str:
    """A crude shape reader: squares fill their box, circles ~pi/4, triangles widen downwards, crosses don't."""
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    fill = box.mean()
    if fill > 0.9:
        return "square"
    if fill > 0.7:
        return "circle"
    return "triangle" if box[-1].sum() > 3 * box[0].sum() else "cross"


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: np.linalg.norm(rgb - np.asarray(_RGB[c], dtype=float)))


def test_shapes_and_colours_are_readable_from_the_pixels():
    seen = set()
    for i in range(40):
        scene = _scene(i)
        union = np.zeros(scene.image.shape[:2], dtype=bool)
        for o in scene.objects:
            assert _classify_shape(o.mask) == o.shape
            assert _nearest_colour(scene.image[o.mask].astype(float).mean(axis=0)) == o.colour
            seen.add((o.shape, o.colour))
            union |= o.mask
        background = scene.image[~union].astype(int)
        # low saturation: a background pixel's channels stay close together, unlike any object colour
        assert np.median(background.max(axis=1) - background.min(axis=1)) < 40
    assert {s for s, _ in seen} == set(SHAPES) and {c for _, c in seen} == set(COLOURS)


def test_clutter_stays_off_the_objects():
    for i in range(10):
        plain = _scene(i, clutter_prob=0.0)
        cluttered = _scene(i, clutter_prob=1.0)
        assert [o.shape for o in plain.objects] == [o.shape for o in cluttered.objects]
        near = np.zeros(plain.image.shape[:2], dtype=bool)
        for a, b in zip(plain.objects, cluttered.objects):
            assert np.array_equal(a.mask, b.mask)
            near |= a.mask
        near = ndimage.binary_dilation(near, iterations=2, structure=np.ones((3, 3)))
        changed = (plain.image != cluttered.image).any(axis=2)
        assert changed[~near].any()  # some clutter was drawn ...
        outside = changed & ~near
        # ... and apart from the objects' own colour noise, nothing changed next to an object
        assert not (changed & near & ~np.logical_or.reduce([o.mask for o in plain.objects])).any()
        assert outside.sum() < 0.05 * outside.size


def test_size_scales_objects():
    scene = _scene(0, size=192)
    assert scene.image.shape == (192, 192, 3)
    assert all(30 <= max(o.bbox[2:]) <= 61 for o in scene.objects)


def test_render_scene_validates_its_options():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="size"):
        render_scene(rng, size=16)
    with pytest.raises(ValueError, match="max_objects"):
        render_scene(rng, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="clutter_prob"):
        render_scene(rng, clutter_prob=1.5)


# --- write_dataset -----------------------------------------------------------------------------------------


def test_same_seed_writes_identical_files_and_other_seeds_differ(dataset, tmp_path):
    again = write_dataset(tmp_path / "again", count=COUNT, seed=SEED)
    assert _files(tmp_path / "again") == _files(dataset)
    assert again.content_digest == read_manifest(dataset, kind="dataset").content_digest
    other = write_dataset(tmp_path / "other", count=COUNT, seed=SEED + 1)
    assert other.content_digest != again.content_digest
    assert (tmp_path / "other/image/000000000001.jpg").read_bytes() != (dataset / "image/000000000001.jpg").read_bytes()


def test_a_prefix_of_a_larger_set_equals_a_smaller_set(dataset, tmp_path):
    write_dataset(tmp_path / "small", count=5, seed=SEED)
    small, large = _files(tmp_path / "small"), _files(dataset)
    names = [f"{d}/{i:012d}.{e}" for i in range(1, 6) for d, e in (("image", "jpg"), ("seg_label", "png"))]
    assert all(small[n] == large[n] for n in names)
    for name in ("annotations/instances_minival2014.json", "annotations/captions_val2014.json"):
        s, l = json.loads(small[name]), json.loads(large[name])
        assert s["images"] == l["images"][:5]
        assert s["annotations"] == [a for a in l["annotations"] if a["image_id"] <= 5]


def test_layout_and_manifest(dataset):
    manifest = read_manifest(dataset, kind="dataset")
    assert manifest.stage == "synth" and manifest.schema_version == "1.0"
    assert manifest.config["count"] == COUNT and manifest.config["seed"] == SEED and manifest.config["size"] == 96
    assert [s.sample_id for s in manifest.samples] == [f"{i:012d}" for i in range(1, COUNT + 1)]
    assert manifest.n_ok == COUNT and manifest.n_failed == 0
    assert manifest.content_digest == digest_files(dataset)
    assert sorted(p.name for p in (dataset / "image").iterdir()) == [f"{i:012d}.jpg" for i in range(1, COUNT + 1)]
    assert sorted(p.name for p in (dataset / "seg_label").iterdir()) == [f"{i:012d}.png" for i in range(1, COUNT + 1)]
    instances = json.loads((dataset / "annotations/instances_minival2014.json").read_text())
    assert instances["categories"] == [
        {"id": 1, "name": "circle", "supercategory": "shape"},
        {"id": 2, "name": "square", "supercategory": "shape"},
        {"id": 3, "name": "triangle", "supercategory": "shape"},
        {"id": 4, "name": "cross", "supercategory": "shape"},
    ]
    assert instances["images"][0] == {"id": 1, "file_name": "000000000001.jpg", "height": 96, "width": 96}


def test_pycocotools_round_trip(dataset):
    from PIL import Image
    from pycocotools.coco import COCO

    coco = COCO(str(dataset / "annotations/instances_minival2014.json"))
    captions = {a["image_id"]: a["caption"] for a in json.loads((dataset / "annotations/captions_val2014.json").read_text())["annotations"]}
    assert sorted(coco.getImgIds()) == list(range(1, COUNT + 1))
    for image_id in range(1, COUNT + 1):
        scene = _scene(image_id - 1)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image_id])), key=lambda a: a["bbox"][0] + a["bbox"][2] / 2)
        assert len(anns) == len(scene.objects)
        seg_label = np.asarray(Image.open(dataset / f"seg_label/{image_id:012d}.png"))
        assert seg_label.dtype == np.uint8 and seg_label.shape == (96, 96)
        union = np.zeros_like(seg_label)
        for ann, obj in zip(anns, scene.objects):
            mask = coco.annToMask(ann).astype(bool)
            assert np.array_equal(mask, obj.mask)
            assert ann["category_id"] == CATEGORIES[obj.shape] and ann["colour"] == obj.colour
            assert ann["area"] == mask.sum() and ann["bbox"] == list(obj.bbox) and ann["iscrowd"] == 0
            union[mask] = ann["category_id"]
        assert np.array_equal(union, seg_label)
        shapes = [coco.loadCats(a["category_id"])[0]["name"] for a in anns]
        assert parse_caption(captions[image_id]) == [(a["colour"], s) for a, s in zip(anns, shapes)]
        assert set(np.unique(seg_label)) - {0} == {CATEGORIES[s] for s in shapes}
        jpeg = np.asarray(Image.open(dataset / f"image/{image_id:012d}.jpg").convert("RGB")).astype(int)
        assert np.abs(jpeg - scene.image).mean() < 3.0


def test_non_empty_directory_is_refused_and_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DcamError, match=str(tmp_path)):
        write_dataset(tmp_path, count=2, seed=0)
    with pytest.raises(DcamError, match="notes.txt"):
        write_dataset(tmp_path, count=2, seed=0, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_an_earlier_dataset_entirely(tmp_path):
    write_dataset(tmp_path, count=4, seed=0)
    manifest = write_dataset(tmp_path, count=2, seed=1, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "image").iterdir()) == ["000000000001.jpg", "000000000002.jpg"]
    fresh = write_dataset(tmp_path / "fresh", count=2, seed=1)
    assert manifest.content_digest == fresh.content_digest


# --- dcam data synth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, option",
    [
        (["--count", "0", "--seed", "1"], "--count"),
        (["--count", "2", "--seed", "-1"], "--seed"),
        (["--count", "2", "--seed", "1", "--size", "40"], "--size"),
    ],
)
def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys, args, option):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth", "--out", str(tmp_path / "ds"), *args])
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dcam: error:") and option in err
    assert not (tmp_path / "ds").exists()


def test_cli_writes_then_refuses_a_non_empty_directory(tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "ds"
    main(["data", "synth", "--out", str(out), "--count", "3", "--seed", "5"])
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = read_manifest(out, kind="dataset")
    assert str(out) in summary and "3 images" in summary and manifest.content_digest[:12] in summary
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth", "--out", str(out), "--count", "3", "--seed", "6"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "--overwrite" in err
    assert read_manifest(out).content_digest == manifest.content_digest
