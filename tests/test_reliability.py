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
