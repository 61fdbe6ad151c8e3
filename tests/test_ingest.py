"""Loaders on small fixtures written in each real format, the ingest stage, and word matching."""

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image
from pydantic import ValidationError

from schemas.errors import DcamError
from schemas.manifest import read_manifest
from stages.ingest import (
    Sample,
    classify_word,
    detect_format,
    ingest,
    load_coco,
    load_coco_tam,
    load_dataset,
    load_grandf,
    load_instance_masks,
    load_mask,
    load_tam_anno,
    normalise_word,
    read_ingested,
)
from stages.ingest.loaders import rle_counts
from stages.ingest.words import EXTENDED_FUNCTION_CLASSES, grounding_at

# ------------------------------------------------------------------------------------ fixture writers

H, W = 8, 10  # not square, so a transposed mask would show
#: Box polygon x 6..9, y 1..4: pycocotools fills rows 1-3, columns 6-8.
POLYGON = [[6.0, 1.0, 9.0, 1.0, 9.0, 4.0, 6.0, 4.0]]
#: Column-major runs: 18 background (2 columns + 2 rows), 3 fg (col 2 rows 2-4), 5 bg, 3 fg (col 3 rows 2-4).
CROWD_RLE = {"size": [H, W], "counts": [18, 3, 5, 3, 51]}


def _expected_polygon():
    m = np.zeros((H, W), bool)
    m[1:4, 6:9] = True
    return m


def _expected_crowd():
    m = np.zeros((H, W), bool)
    m[2:5, 2:4] = True
    return m


def _jpg(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _compressed(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_coco(root):
    """Raw COCO: image 1 (polygon + iscrowd RLE), image 2 (no image file), image 3 (empty caption)."""
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "height": H, "width": W} for i in (1, 2, 3)]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 18, "segmentation": POLYGON, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": CROWD_RLE, "iscrowd": 1},
        {"id": 12, "image_id": 3, "category_id": 1, "segmentation": POLYGON, "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    caps = [{"image_id": 1, "caption": "A man with a dog."}, {"image_id": 1, "caption": "Dog and person."},
            {"image_id": 2, "caption": "missing image"}, {"image_id": 3, "caption": "  "}]
    (root / "ann").mkdir(parents=True)
    (root / "ann/instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "ann/captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    for i in (1, 3):
        _jpg(root / "img" / f"COCO_val2014_{i:012d}.jpg")
    return root / "ann/instances.json", root / "ann/captions.json", root / "img"


def _write_coco_tam(root):
    """TAM layout: 1 good, 2 seg_label of the wrong size, 3 missing image, 4 RLE that fails to decode."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in (1, 2, 3, 4)]
    square = np.zeros((H, W), bool)
    square[0:3, 0:3] = True
    anns = [{"id": i, "image_id": i, "category_id": 2, "segmentation": _compressed(square), "iscrowd": 0} for i in (1, 2, 3)]
    anns.append({"id": 4, "image_id": 4, "category_id": 2, "segmentation": {"size": [H, W], "counts": "0?"}, "iscrowd": 0})
    cats = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    caps = [{"image_id": i, "caption": "a red square"} for i in (1, 2, 3, 4)]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/instances_minival2014.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "annotations/captions_val2014.json").write_text(json.dumps({"images": images, "annotations": caps}))
    seg = (square * 2).astype(np.uint8)
    (root / "seg_label").mkdir()
    for i in (1, 2, 3, 4):
        if i != 3:
            _jpg(root / "image" / f"{i:012d}.jpg")
        Image.fromarray(seg if i != 2 else seg[:, :5]).save(root / "seg_label" / f"{i:012d}.png")
    return root


def _write_grandf(root, *, wrapped=False):
    a = np.zeros((H, W), bool)
    a[0:2, 0:5] = True
    b1 = np.zeros((H, W), bool)
    b1[5:8, 0:2] = True
    b2 = np.zeros((H, W), bool)
    b2[5:8, 8:10] = True
    caption = "A man in a red shirt walks two dogs."
    records = [
        {"file_name": "g1.jpg", "height": H, "width": W, "image_id": 1, "caption": caption, "groundings": {
            "A man in a red shirt": {"token_positives": [0, 20], "rle_masks": [_compressed(a)]},
            "two dogs": {"token_positives": [27, 35], "rle_masks": [_compressed(b1), _compressed(b2)]},
        }},
        # The official code reads "image"; GLaMM writes "file_name": both are accepted.
        {"image": "g2.jpg", "height": H, "width": W, "caption": "A dog.", "groundings": {
            "A dog": {"token_positives": [0, 5], "rle_masks": [_compressed(a)]}}},
        {"file_name": "g3.jpg", "height": H, "width": W, "caption": "A dog.", "groundings": {
            "A dog": {"token_positives": [0, 5], "rle_masks": [{"size": [4, 4], "counts": "04"}]}}},
        {"file_name": "g4.jpg", "height": H, "width": W, "caption": "", "groundings": {}},
    ]
    root.mkdir(parents=True, exist_ok=True)
    for name in ("g1.jpg", "g2.jpg", "g3.jpg", "g4.jpg"):
        _jpg(root / "images" / name)
    path = root / "GranDf_HA_GCG_val.json"
    path.write_text(json.dumps({"annotations": records} if wrapped else records))
    return path, a, b1 | b2


def _write_tam_anno(root):
    seg = np.zeros((H, W), np.uint16)
    seg[0:2, :] = 300  # a label beyond 8 bits
    seg[4:6, 2:4] = 2
    root.mkdir(parents=True, exist_ok=True)
    (root / "seg").mkdir()
    for name in ("t1", "t2"):
        _jpg(root / f"images/{name}.jpg")
        Image.fromarray(seg).save(root / f"seg/{name}.png")
    anno = [
        ["images/t1.jpg", "the sky above a small box", "seg/t1.png", {"the sky": 300, "a small box": 2}],
        ["images/t2.jpg", "nothing", "seg/t2.png", {"a cat": 7}],  # label 7 is not in the PNG
        ["images/t3.jpg", "no image", "seg/t2.png", {"a box": 2}],
    ]
    (root / "anno.json").write_text(json.dumps(anno))
    return root, seg.astype(np.int32)


# --------------------------------------------------------------------------------------------- loaders


def test_rle_counts_matches_pycocotools():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 7)) > 0.6
    rle = _compressed(mask)
    runs = rle_counts(rle["counts"])
    flat = mask.ravel(order="F")
    assert sum(runs) == flat.size
    rebuilt = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
    np.testing.assert_array_equal(rebuilt, flat)
    with pytest.raises(ValueError, match="invalid character"):
        rle_counts("0 ")


def test_coco_polygon_and_crowd_rle_decode_to_the_right_pixels(tmp_path):
    inst, caps, imgs = _write_coco(tmp_path)
    samples, rejected = load_coco(inst, caps, imgs)
    assert [s.sample_id for s in samples] == ["000000000001"]
    reasons = dict(rejected)
    assert reasons.keys() == {"000000000002", "000000000003"}
    assert reasons["000000000002"].startswith("image file missing")
    assert reasons["000000000003"] == "caption 1 is empty"
    s = samples[0]
    assert s.captions == ["A man with a dog.", "Dog and person."] and s.source == "coco"
    assert s.categories == {"person": 1, "dog": 18} and s.mask_path is None
    inst_masks = load_instance_masks(s)
    assert inst_masks.shape == (2, H, W)
    np.testing.assert_array_equal(inst_masks[0], _expected_polygon())
    np.testing.assert_array_equal(inst_masks[1], _expected_crowd())
    sem = load_mask(s)
    assert sem.dtype == np.int32
    np.testing.assert_array_equal(sem, np.where(_expected_polygon(), 18, np.where(_expected_crowd(), 1, 0)))


def test_coco_tam_rejects_bad_records_and_keeps_the_good_one(tmp_path):
    root = _write_coco_tam(tmp_path / "coco")
    samples, rejected = load_coco_tam(root)
    assert [s.sample_id for s in samples] == ["000000000001"]
    reasons = dict(rejected)
    assert reasons["000000000002"] == "mask 000000000002.png is 8x5 but the annotation says 8x10"
    assert "image file missing" in reasons["000000000003"]
    assert "RLE fails to decode" in reasons["000000000004"]
    s = samples[0]
    assert s.mask_path.endswith("seg_label/000000000001.png")
    expected = np.zeros((H, W), np.int32)
    expected[0:3, 0:3] = 2
    np.testing.assert_array_equal(load_mask(s), expected)
    assert detect_format(root) == "coco-tam"
    assert len(load_coco_tam(root, limit=2).samples) == 1  # limit counts records, rejected ones too


def test_malformed_json_is_a_file_level_error_with_position(tmp_path):
    root = _write_coco_tam(tmp_path / "coco")
    (root / "annotations/captions_val2014.json").write_text('{"annotations": [\n  {"image_id": 1,, }]}')  # 2nd comma: line 2, column 18
    with pytest.raises(DcamError, match=r"captions_val2014.json is malformed JSON at line 2 column 18"):
        load_coco_tam(root)


def test_grandf_masks_labels_phrases(tmp_path):
    path, a, b = _write_grandf(tmp_path / "gf")
    samples, rejected = load_grandf(path, images=tmp_path / "gf/images")
    assert [s.sample_id for s in samples] == ["g1", "g2"]
    assert dict(rejected).keys() == {"g3", "g4"}
    assert "mask size 4x4 differs from the image size 8x10" in dict(rejected)["g3"]
    assert dict(rejected)["g4"] == "caption is empty"
    s = samples[0]
    assert [(o.label, o.phrase, o.token_positives) for o in s.objects] == [
        (1, "A man in a red shirt", (0, 20)), (2, "two dogs", (27, 35))]
    assert s.captions[0][27:35] == "two dogs"
    assert s.categories == {"A man in a red shirt": 1, "two dogs": 2}
    np.testing.assert_array_equal(load_mask(s), np.where(a, 1, 0) + np.where(b, 2, 0))  # two masks unioned
    assert detect_format(path) == "grandf"
    wrapped, _, _ = _write_grandf(tmp_path / "gf2", wrapped=True)
    assert [s.sample_id for s in load_dataset(wrapped, images=tmp_path / "gf2/images").samples] == ["g1", "g2"]


def test_tam_anno_labels_from_the_seg_png(tmp_path):
    root, seg = _write_tam_anno(tmp_path / "tam")
    samples, rejected = load_tam_anno(root)
    assert [s.sample_id for s in samples] == ["t1"]
    assert "label 7 of 'a cat' does not occur" in dict(rejected)["t2"]
    assert "image file missing" in dict(rejected)["t3"]
    s = samples[0]
    assert {o.name: o.label for o in s.objects} == {"the sky": 300, "a small box": 2}
    np.testing.assert_array_equal(load_mask(s), seg)
    np.testing.assert_array_equal(load_instance_masks(s)[0], seg == 300)
    assert detect_format(root) == "tam-anno" and detect_format(root / "anno.json") == "tam-anno"


def test_synthetic_dataset_loads(tmp_path):
    from stages.synth.write import write_dataset

    write_dataset(tmp_path / "syn", count=3, seed=0, size=48)
    assert detect_format(tmp_path / "syn") == "synthetic"
    samples, rejected = load_dataset(tmp_path / "syn")
    assert len(samples) == 3 and rejected == []
    s = samples[0]
    assert s.source == "synthetic" and s.categories == {"circle": 1, "square": 2, "triangle": 3, "cross": 4}
    sem = load_mask(s)
    assert sem.shape == (48, 48)
    # Every object's pixels carry its label in the seg_label PNG, except where a later object covers it.
    for obj, m in zip(s.objects, load_instance_masks(s)):
        assert (sem[m] == obj.label).mean() > 0.5


def test_detect_format_errors(tmp_path):
    with pytest.raises(DcamError, match="cannot tell the dataset format"):
        detect_format(tmp_path)
    with pytest.raises(DcamError, match="dataset not found"):
        detect_format(tmp_path / "nope")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(DcamError, match="cannot tell"):
        detect_format(tmp_path / "x.json")
    with pytest.raises(DcamError, match="raw COCO needs"):
        load_dataset(tmp_path / "x.json", fmt="coco")


def test_a_new_format_is_one_registration(tmp_path, monkeypatch):
    """A format registered from outside is detected, loaded and ingested through the normal entry points."""
    from stages.ingest import DatasetFormat, LoadResult, ObjectRecord, Sample, format_names, register_format
    from stages.ingest import registry

    monkeypatch.setattr(registry, "_FORMATS", dict(registry._registered()))  # the test's registration is undone

    def load(request):
        samples = []
        for line in (request.path / "boxes.txt").read_text().splitlines():
            sid, caption = line.split(":")
            box = np.zeros((H, W), bool)
            box[2:4, 5:8] = True
            samples.append(Sample(sample_id=sid, image_path=str(request.path / f"{sid}.jpg"), height=H, width=W,
                                  captions=[caption], source="boxes", categories={"box": 7},
                                  objects=[ObjectRecord(label=7, name="box", phrase=None, token_positives=None,
                                                        mask_rle=_compressed(box))]))
        return LoadResult(samples[:request.limit], [])

    fmt = DatasetFormat(name="boxes", detect=lambda probe: probe.has("boxes.txt"), load=load,
                        looks_like="a folder holding boxes.txt")
    register_format(fmt)
    with pytest.raises(ValueError, match="'boxes' is registered already"):
        register_format(fmt)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/boxes.txt").write_text("b1:a box\nb2:two boxes\nb3:no box\n")
    assert format_names()[-1] == "boxes" and detect_format(tmp_path / "data") == "boxes"
    assert [s.sample_id for s in load_dataset(tmp_path / "data", limit=2).samples] == ["b1", "b2"]
    manifest = ingest(tmp_path / "data", tmp_path / "out")
    assert (manifest.config["format"], manifest.n_ok, manifest.inputs) == ("boxes", 3, {})
    mask = np.asarray(Image.open(tmp_path / "out/masks/b2.png"))
    assert mask.dtype == np.uint16 and mask.sum() == 7 * 6 and (mask[2:4, 5:8] == 7).all()
    with pytest.raises(DcamError, match="boxes: a folder holding boxes.txt"):
        detect_format(tmp_path)


def test_samples_jsonl_line_is_the_documented_record(tmp_path):
    """One ``samples.jsonl`` line, field by field as the format has always been written, parses back."""
    rle = _compressed(_expected_polygon())
    line = ('{"sample_id":"s1","image_path":"/d/s1.jpg","height":8,"width":10,"captions":["a box"],'
            '"objects":[{"label":3,"name":"box","phrase":"a box","token_positives":[2,5],'
            f'"mask_rle":{{"size":[8,10],"counts":"{rle["counts"]}"}}}}],"source":"grandf",'
            '"categories":{"a box":3},"mask_path":"masks/s1.png"}')
    sample = Sample.model_validate_json(line)
    assert sample.objects[0].token_positives == (2, 5) and sample.objects[0].mask_rle == rle
    assert json.dumps(sample.model_dump(), separators=(",", ":")) == line
    np.testing.assert_array_equal(load_instance_masks(sample)[0], _expected_polygon())
    bad = line.replace('"height":8', '"height":"eight"')
    with pytest.raises(ValidationError, match="height"):
        Sample.model_validate_json(bad)


# ---------------------------------------------------------------------------------------------- ingest


def test_ingest_round_trip_with_16_bit_labels(tmp_path):
    root, seg = _write_tam_anno(tmp_path / "tam")
    manifest = ingest(root, tmp_path / "out")
    assert (manifest.kind, manifest.stage, manifest.n_ok, manifest.n_failed) == ("dataset", "ingest", 1, 2)
    assert {s.sample_id: s.status for s in manifest.samples} == {"t1": "ok", "t2": "failed", "t3": "failed"}
    assert all(s.reason for s in manifest.failed())
    assert read_manifest(tmp_path / "out").content_digest == manifest.content_digest
    back = read_ingested(tmp_path / "out")
    assert [s.sample_id for s in back] == ["t1"]
    assert back[0].mask_path == str((tmp_path / "out/masks/t1.png").resolve())
    np.testing.assert_array_equal(load_mask(back[0]), seg)  # 300 survives the PNG
    with pytest.raises(DcamError, match="not empty"):
        ingest(root, tmp_path / "out")
    assert detect_format(tmp_path / "out") == "ingested"
    assert [s.sample_id for s in load_dataset(tmp_path / "out").samples] == ["t1"]
    assert ingest(root, tmp_path / "out", overwrite=True, limit=1).n_ok == 1
    with pytest.raises(DcamError, match="not by ingest"):
        read_ingested(_synthetic(tmp_path))
    lines = (tmp_path / "out/samples.jsonl").read_text().splitlines()
    (tmp_path / "out/samples.jsonl").write_text(lines[0].replace('"height":8', '"height":"tall"') + "\n")
    with pytest.raises(DcamError, match=r"samples.jsonl line 1 is not a sample record: height: .*integer.*\(1 problem"):
        read_ingested(tmp_path / "out")
    (tmp_path / "out/samples.jsonl").write_text(lines[0][:-1] + "\n")
    with pytest.raises(DcamError, match=r"samples.jsonl line 1 is malformed JSON: "):
        read_ingested(tmp_path / "out")


def _synthetic(tmp_path):
    from stages.synth.write import write_dataset

    write_dataset(tmp_path / "syn", count=2, seed=1, size=48)
    return tmp_path / "syn"


def test_ingest_raw_coco_composes_masks(tmp_path):
    inst, caps, imgs = _write_coco(tmp_path / "coco")
    manifest = ingest(None, tmp_path / "out", instances=inst, captions=caps, images=imgs)
    assert manifest.config["format"] == "coco" and manifest.n_ok == 1 and manifest.n_failed == 2
    mask = np.asarray(Image.open(tmp_path / "out/masks/000000000001.png"))
    assert mask.dtype == np.uint16 and set(np.unique(mask)) == {0, 1, 18}


def test_cli_ingest_prints_counts_and_reasons(tmp_path, capsys):
    from flows.cli import main

    root = _write_coco_tam(tmp_path / "coco")
    main(["ingest", str(root), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "loaded 1 samples, rejected 3" in out
    assert "rejected 000000000003: image file missing" in out
    with pytest.raises(SystemExit) as e:
        main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")])
    assert e.value.code != 0
    assert capsys.readouterr().err.strip().startswith("dcam: error: dataset not found")


# ----------------------------------------------------------------------------------------------- words

COCO = {"person": 1, "bicycle": 2, "car": 3, "bus": 6, "dog": 18, "bear": 23, "sports ball": 37,
        "wine glass": 46, "hot dog": 58, "dining table": 67, "tv": 72, "cell phone": 77, "teddy bear": 88}


@pytest.mark.parametrize("word, label", [
    ("man", 1), ("Women", 1), ("people", 1), ("kids", 1), ("girl's", 1), ("players", 1),
    ("cars", 3), ("buses", 6), ("dogs", 18), ("puppies", 18), ("Dog.", 18),
    ("table", 67), ("tables", 67), ("television", 72), ("TVs", 72), ("ball", 37), ("glass", 46),
    ("glasses", 46), ("hotdog", 58), ("hot-dog", 58), ("phone", 77), ("bike", 2),
    ("bear", 23),  # exact name beats teddy bear's head noun
])
def test_coco_words(word, label):
    assert classify_word(word, COCO) == ("object", label)


def test_tam_category_names_and_function_words():
    tam = {"person": 1, "ball": 37, "glass": 46}
    assert classify_word("football", tam) == ("object", 37)  # synonyms of sports ball reach TAM's "ball"
    assert classify_word("wineglass", tam) == ("object", 46)
    for w in ("the", "a", "and", "it", "their", "which", "there", "could", "'s"):
        assert classify_word(w, COCO) == ("function", None), w
    assert classify_word("in", COCO) == ("other", None)  # IN is not one of TAM's classes
    assert classify_word("in", COCO, function_classes=EXTENDED_FUNCTION_CLASSES) == ("function", None)
    assert classify_word("is", COCO, function_classes=EXTENDED_FUNCTION_CLASSES) == ("function", None)
    for w in ("red", "dining", "hot", "sitting"):
        assert classify_word(w, COCO) == ("other", None), w


def test_synthetic_categories_and_plurals():
    shapes = {"circle": 1, "square": 2, "triangle": 3, "cross": 4}
    assert [classify_word(w, shapes)[1] for w in ("circles", "Square", "triangles", "crosses")] == [1, 2, 3, 4]
    assert classify_word("blue", shapes) == ("other", None)
    assert [normalise_word(w) for w in ("ponies", "benches", "boxes", "knives", "T-shirts", "scissors", "tennis")] == [
        "pony", "bench", "box", "knife", "tshirt", "scissors", "tennis"]


def test_grandf_phrases_head_noun_then_any_word():
    groundings = {"A man in a red shirt": 1, "two brown dogs": 2, "a shirt": 3}
    # Head noun (last word) first: "shirt" is the head of grounding 1 and 3 -> the smaller label, 1.
    assert classify_word("shirt", groundings, phrases=True) == ("object", 1)
    assert classify_word("dog", groundings, phrases=True) == ("object", 2)
    # Otherwise any content word of the phrase.
    assert classify_word("man", groundings, phrases=True) == ("object", 1)
    assert classify_word("brown", groundings, phrases=True) == ("object", 2)
    assert classify_word("a", groundings, phrases=True) == ("function", None)
    # Without phrases=True only whole names, synonyms and head nouns match.
    assert classify_word("man", groundings) == ("other", None)


def test_grounding_at_uses_token_positives():
    caption = "A man in a red shirt walks two dogs."
    spans = [(0, 20, 1), (27, 35, 2)]
    assert grounding_at(caption.index("shirt"), caption.index("shirt") + 5, spans) == 1
    assert grounding_at(caption.index("dogs"), caption.index("dogs") + 4, spans) == 2
    assert grounding_at(caption.index("walks"), caption.index("walks") + 5, spans) is None
    with pytest.raises(ValueError, match="start, end"):
        grounding_at(5, 5, spans)
