"""No artifact that lies (issue 13): each numbered case of the issue reproduced on a tiny toy capture.

Case numbers refer to the issue's list; every test here fails on the code before the fix.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.capture import CaptureStore, finished_manifest
from schemas.errors import DcamError
from schemas.verify import IntegrityError, verified_manifest, verify_artifact
from stages.capture.core import CaptureConfig
from stages.capture.run import capture_dataset
from stages.capture.toy_adapter import ToyAdapter
from stages.synth.write import write_dataset

GEN, STEPS = 8, 4
CONFIG = CaptureConfig(layers=(1,), steps=STEPS, block_length=GEN, temperature=0.5)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from stages.toy.model import ToyConfig, ToyDMLLM

    torch.manual_seed(0)
    model = ToyDMLLM(ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3,
                               num_heads=2, gen_length=GEN))
    return ToyAdapter.load(str(model.save_pretrained(tmp_path_factory.mktemp("rel") / "model")))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "synth"
    write_dataset(out, count=3, seed=3)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory, adapter, dataset):
    out = tmp_path_factory.mktemp("rel") / "store"
    manifest = capture_dataset(dataset, out, adapter=adapter, model_spec="toy", config=CONFIG)
    assert manifest.n_ok >= 2
    return out


def copy_store(store, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(store, dst)
    return dst


def ok_ids(path) -> list[str]:
    return [s.sample_id for s in finished_manifest(path).samples if s.status == "ok"]


def chunk(path, sample_id, key) -> Path:
    (only,) = [p for p in (path / "samples" / sample_id / key / "c").rglob("*") if p.is_file()]
    return only


def dcam(argv, capsys) -> tuple[int, str]:
    from flows.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out + out.err


# ------------------------------------------------------------------ 4. corruption is detected on read
def test_case4_swapped_chunk_fails_that_sample_and_inspect_verify_finds_it(store, tmp_path, capsys):
    from stages.explain.basemap import run_basemap
    from stages.explain.select import run_select

    bad = copy_store(store, tmp_path)
    a, b = ok_ids(bad)[:2]
    shutil.copyfile(chunk(bad, a, "L1/alpha"), chunk(bad, b, "L1/alpha"))
    problems = verify_artifact(bad)
    assert len(problems) == 1 and f"sample {b}: array 'L1/alpha' does not match its recorded digest" in problems[0]
    run_select(bad, tmp_path / "sel")
    maps = run_basemap(bad, tmp_path / "sel", tmp_path / "maps", method="gradcam")
    status = {s.sample_id: s for s in maps.samples}
    assert status[a].status == "ok"
    assert status[b].status == "failed" and "L1/alpha' does not match its recorded digest" in status[b].reason
    rc, out = dcam(["inspect", str(bad), "--verify"], capsys)
    assert rc == 1 and out.count("problem:") == 1 and "Traceback" not in out
    assert dcam(["inspect", str(store), "--verify"], capsys)[0] == 0


def test_case4_wrong_manifest_digest_refused_and_found(store, tmp_path, capsys):
    bad = copy_store(store, tmp_path)
    m = json.loads((bad / "manifest.json").read_text())
    m["content_digest"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match="manifest of capture store"):
        finished_manifest(bad)
    rc, out = dcam(["inspect", str(bad), "--verify"], capsys)
    assert rc == 1 and "content digest mismatch: the manifest records 000000000000" in out


def test_case4_sample_listed_with_another_digest_is_not_used(store, tmp_path):
    bad = copy_store(store, tmp_path)
    a, b = ok_ids(bad)[:2]
    m = json.loads((bad / "manifest.json").read_text())
    digests = {s["sample_id"]: s["digest"] for s in m["samples"]}
    for s in m["samples"]:  # swap two samples' listed digests: the content digest stays consistent
        s["digest"] = digests[b] if s["sample_id"] == a else digests[a] if s["sample_id"] == b else s["digest"]
    (bad / "manifest.json").write_text(json.dumps(m))
    reader = CaptureStore.open(bad)
    with pytest.raises(IntegrityError, match=f"sample {a} \\(as the manifest lists it\\)"):
        reader.sample(a)


def test_truncated_chunk_is_one_problem_line(store, tmp_path):
    bad = copy_store(store, tmp_path)
    sid = ok_ids(bad)[0]
    path = chunk(bad, sid, "tokens")
    path.write_bytes(path.read_bytes()[:10])
    problems = verify_artifact(bad)
    assert len(problems) == 1 and f"sample {sid}: array 'tokens' is damaged" in problems[0]


def test_tampered_maps_artifact_refused_and_deep_verify_names_it(store, tmp_path, capsys):
    from stages.explain.runner import chain_from_preset, explain_chain

    root = tmp_path / "root"
    results = explain_chain(store, root, chain_from_preset("gradcam"))
    maps = Path(results[1].path)
    data = next(p for p in maps.rglob("*") if p.is_file() and p.name != "manifest.json")
    data.write_bytes(data.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="maps artifact .* does not match its recorded digest"):
        verified_manifest(maps)
    rc, out = dcam(["inspect", results[-1].path, "--verify"], capsys)
    assert rc == 0  # the last artifact itself is intact ...
    rc, out = dcam(["inspect", results[-1].path, "--verify", "--deep"], capsys)
    assert rc == 1 and f"{maps}: content digest mismatch" in out  # ... the maps it was computed from are not
    with pytest.raises(IntegrityError):  # and a rerun refuses to reuse it
        explain_chain(store, root, chain_from_preset("gradcam"))


# ------------------------------------------------------------------ 1. resume against a changed dataset
def capture(data, out, adapter, **kw) -> dict[str, str]:
    """Capture ``data`` into ``out``; returns each sample's status (ok / failed / skipped)."""
    seen = {}
    capture_dataset(data, out, adapter=adapter, model_spec="toy", config=CONFIG,
                    on_sample=lambda sid, status: seen.__setitem__(sid, status), **kw)
    return seen


def test_case1_resume_recaptures_samples_whose_inputs_changed(adapter, tmp_path):
    data, out = tmp_path / "data", tmp_path / "store"
    write_dataset(data, count=2, seed=3)
    first = capture(data, out, adapter)
    assert set(first.values()) <= {"ok", "failed"} and len(first) == 2
    assert set(capture(data, out, adapter).values()) == {"skipped"}  # same inputs: nothing redone
    old = {s.sample_id: s.digest for s in finished_manifest(out).samples}
    shutil.rmtree(data)
    write_dataset(data, count=2, seed=4)  # same path and ids, other images
    again = capture(data, out, adapter)
    assert "skipped" not in again.values() and set(again) == set(first)
    new = {s.sample_id: s.digest for s in finished_manifest(out).samples}
    assert all(new[sid] != old[sid] for sid in old)
    reader = CaptureStore.open(out)
    for sid in reader.sample_ids():
        assert reader.sample(sid).attrs["image_path"] == str((data / "image" / f"{sid}.jpg").resolve())


def test_damaged_sample_group_is_recaptured_not_fatal(store, adapter, dataset, tmp_path):
    out = copy_store(store, tmp_path)
    sid = ok_ids(out)[0]
    (out / "samples" / sid / "zarr.json").write_text("{not json")
    statuses = capture(dataset, out, adapter)
    assert statuses[sid] == "ok" and list(statuses.values()).count("skipped") == len(statuses) - 1
    assert verify_artifact(out) == []


# ------------------------------------------------------------------ 2. duplicate sample ids
def instances_file(data: Path) -> Path:
    return data / "annotations" / "instances_minival2014.json"


@pytest.mark.parametrize("other_id", [1.0, "1", " 1"])
def test_case2_ids_that_mean_one_image_are_duplicates_naming_both(tmp_path, other_id):
    from stages.ingest.loaders import load_dataset

    data = tmp_path / "data"
    write_dataset(data, count=2, seed=3)
    inst = json.loads(instances_file(data).read_text())
    ids = [im["id"] for im in inst["images"]]
    assert ids[:2] == [1, 2]
    inst["images"][1]["id"] = other_id  # the second image now claims the first one's id
    instances_file(data).write_text(json.dumps(inst))
    with pytest.raises(DcamError, match=r"duplicate sample id 000000000001: instances_minival2014.json: images\[0\] "
                                        r"and images\[1\] both map to it"):
        load_dataset(data)


# ------------------------------------------------------------------ 3. --overwrite deletes only a capture store
def test_case3_overwrite_refuses_a_users_own_zarr_group(adapter, dataset, tmp_path):
    import zarr

    mine = tmp_path / "mine"
    zarr.open_group(str(mine), mode="w", zarr_format=3).attrs["owner"] = "me"
    with pytest.raises(DcamError, match="not a capture store diffusion-cam wrote; refusing to delete it"):
        capture_dataset(dataset, mine, adapter=adapter, model_spec="toy", config=CONFIG, overwrite=True)
    assert json.loads((mine / "zarr.json").read_text())["attributes"] == {"owner": "me"}


# ------------------------------------------------------------------ 5. bad annotations change no ground truth
def test_case5_annotation_image_id_as_string_is_used_and_unknown_one_refused(tmp_path):
    from stages.ingest.loaders import load_dataset

    data = tmp_path / "data"
    write_dataset(data, count=1, seed=3)
    inst = json.loads(instances_file(data).read_text())
    n_objects = len(load_dataset(data).samples[0].objects)
    for ann in inst["annotations"]:
        ann["image_id"] = str(ann["image_id"])
    instances_file(data).write_text(json.dumps(inst))
    assert len(load_dataset(data).samples[0].objects) == n_objects > 0  # not dropped
    inst["annotations"][0]["image_id"] = "one"
    instances_file(data).write_text(json.dumps(inst))
    with pytest.raises(DcamError, match=r"annotations\[0\] has image_id 'one', not an image id"):
        load_dataset(data)


def test_case5_duplicate_category_id_refused(tmp_path):
    from stages.ingest.loaders import load_dataset

    data = tmp_path / "data"
    write_dataset(data, count=1, seed=3)
    inst = json.loads(instances_file(data).read_text())
    first = inst["categories"][0]
    inst["categories"].append({"id": first["id"], "name": "dupe"})
    instances_file(data).write_text(json.dumps(inst))
    with pytest.raises(DcamError, match=f"category id {first['id']} is given twice \\('{first['name']}' and 'dupe'\\)"):
        load_dataset(data)
