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


# ------------------------------------------------------------------ 9. one writer per capture store
HOLD_LOCK = """
import sys, time
from schemas.lock import exclusive
with exclusive(sys.argv[1], what="test"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_case9_concurrent_capture_on_one_store_refused_in_one_line(adapter, dataset, tmp_path):
    import subprocess
    import sys

    from schemas.lock import LockedError, store_lock_path

    out = tmp_path / "store"
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store_lock_path(out))], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert other.stdout.readline().strip() == "locked"  # another process is writing the store
        with pytest.raises(LockedError, match=f"capture store {out} is in use by pid {other.pid} on host .* "
                                              "\\(pid namespace .*\\) since .*; wait for it to finish"):
            capture_dataset(dataset, out, adapter=adapter, model_spec="toy", config=CONFIG, limit=1)
        assert not out.exists()
    finally:
        other.communicate("done\n", timeout=30)
    assert capture_dataset(dataset, out, adapter=adapter, model_spec="toy", config=CONFIG, limit=1).samples


def test_store_lock_waits_for_its_holder(tmp_path):
    import threading

    from schemas.lock import LockedError, exclusive

    lock, order = tmp_path / "x.lock", []

    def take():
        with exclusive(lock, what="x", wait=60):
            order.append("got")

    with exclusive(lock, what="x"):
        with pytest.raises(LockedError):
            with exclusive(lock, what="x", wait=0.05):
                pass
        waiter = threading.Thread(target=take)
        waiter.start()
        order.append("released")
    waiter.join(60)
    assert order == ["released", "got"]


# ------------------------------------------------------------------ 10. stale temporaries judged by their lock
def test_case10_live_temporary_of_another_pid_namespace_is_kept(tmp_path):
    import fcntl
    import os

    from stages.explain.runner import sweep_stale

    # a writer in a container: its PID (here one that does not exist in this namespace) says nothing
    live = tmp_path / ".abc.tmp-999999-deadbeef"
    live.mkdir()
    (live / "part").write_text("x")
    dead = tmp_path / ".def.tmp-999998-deadbeef"
    dead.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the live writer holds the lock of its temporary
    try:
        sweep_stale(tmp_path)
        assert (live / "part").exists() and not dead.exists()
    finally:
        os.close(fd)
    sweep_stale(tmp_path)
    assert not live.exists()


def test_temporary_dir_is_locked_while_written_and_swept_after(tmp_path):
    from schemas.lock import sweep_temporaries, temporary_dir

    with temporary_dir(tmp_path / "final") as tmp:
        assert tmp.is_dir() and ".final.tmp-" in tmp.name
        assert sweep_temporaries(tmp_path) == [] and tmp.is_dir()
    assert sweep_temporaries(tmp_path) == [tmp] and not tmp.exists()


# ------------------------------------------------------------------ 13. lock files never follow a symlink
def test_case13_planted_symlink_lock_refused_and_target_untouched(tmp_path, monkeypatch):
    from flows.pipeline import device_lock

    locks, victim = tmp_path / "locks", tmp_path / "victim.txt"
    locks.mkdir()
    victim.write_text("precious")
    (locks / "capture-cpu.lock").symlink_to(victim)
    monkeypatch.setenv("DCAM_LOCK_DIR", str(locks))
    with pytest.raises(DcamError, match="capture-cpu.lock is a symbolic link; refusing to follow it"):
        with device_lock("cpu"):
            pass
    assert victim.read_text() == "precious"
    (locks / "capture-cpu.lock").unlink()
    with device_lock("cpu"):
        assert json.loads((locks / "capture-cpu.lock").read_text())["pid"] > 0  # records its holder


def test_case13_lock_folder_that_is_a_symlink_refused(tmp_path, monkeypatch):
    from flows.pipeline import device_lock

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "locks").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("DCAM_LOCK_DIR", str(tmp_path / "locks"))
    with pytest.raises(DcamError, match="is not a plain folder"):
        with device_lock("cpu"):
            pass


# ------------------------------------------------------------------ 14. manifests readable like the rest
def test_case14_manifest_mode_follows_the_umask(tmp_path):
    import os

    from schemas.manifest import StageManifest, write_manifest

    old = os.umask(0o022)
    try:
        path = write_manifest(tmp_path / "a", StageManifest(kind="maps", schema_version="1.0", stage="x",
                                                            stage_version="1"))
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        path = write_manifest(tmp_path / "b", StageManifest(kind="maps", schema_version="1.0", stage="x",
                                                            stage_version="1"))
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# ------------------------------------------------------------------ 11. no helper process outlives a killed run
BOUND_CHILD = """
import subprocess, sys, time
from flows.env import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent)
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status is left to collect


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_case11_server_child_ends_when_its_parent_is_killed():
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", BOUND_CHILD], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)  # as `kill -9` of `dcam run`
    parent.wait()
    for _ in range(300):  # the kernel signals the child at once; allow a loaded machine 30 s to show it
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)
