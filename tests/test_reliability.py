"""No artifact that lies (issue 13): each numbered case of the issue reproduced on a tiny toy capture.

Case numbers refer to the issue's list; every test here fails on the code before the fix.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import torch

import schemas.verify
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
    from stages.graph import explain_shard
    from stages.presets import get_preset

    root = tmp_path / "root"
    results = explain_shard(root, store, [get_preset("gradcam")])["gradcam"]
    maps = Path(results[1]["path"])
    data = next(p for p in maps.rglob("*") if p.is_file() and p.name != "manifest.json")
    data.write_bytes(data.read_bytes() + b"\0")
    schemas.verify._VERIFIED.clear()  # what this process verified; a later run is another process
    with pytest.raises(IntegrityError, match="maps artifact .* does not match its recorded digest"):
        verified_manifest(maps)
    rc, out = dcam(["inspect", results[-1]["path"], "--verify"], capsys)
    assert rc == 0  # the last artifact itself is intact ...
    rc, out = dcam(["inspect", results[-1]["path"], "--verify", "--deep"], capsys)
    assert rc == 1 and f"{maps}: content digest mismatch" in out  # ... the maps it was computed from are not
    with pytest.raises(IntegrityError):  # and a rerun refuses to reuse it
        explain_shard(root, store, [get_preset("gradcam")])


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
    (problem,) = verify_artifact(out)
    assert f"sample {sid}: its group is damaged" in problem
    from stages.explain.select import run_select

    selection = {s.sample_id: s for s in run_select(out, tmp_path / "sel").samples}
    assert selection[sid].status == "failed" and "its group is damaged" in selection[sid].reason
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

    from stages.catalog import sweep_stale

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


# ------------------------------------------------------------------ 5, 6, 8, 12. bounded inputs, paths inside the dataset
def write_coco(root: Path, polygons: list, file_names: list[str] | None = None) -> tuple[Path, Path, Path]:
    """Raw COCO with one 8x10 image per polygon (image i+1 holds polygons[i]; file names default inside)."""
    from PIL import Image

    file_names = file_names or [f"{i + 1}.jpg" for i in range(len(polygons))]
    images = [{"id": i + 1, "file_name": name, "height": 8, "width": 10} for i, name in enumerate(file_names)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": [p], "iscrowd": 0}
            for i, p in enumerate(polygons)]
    caps = [{"image_id": i + 1, "caption": "a dog"} for i in range(len(polygons))]
    (root / "ann").mkdir(parents=True)
    (root / "ann/instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                         "categories": [{"id": 1, "name": "dog"}]}))
    (root / "ann/captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    (root / "img").mkdir()
    for name in file_names:
        target = Path(name) if Path(name).is_absolute() else root / "img" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 10, 3), 128, np.uint8)).save(target)
    return root / "ann/instances.json", root / "ann/captions.json", root / "img"


BOX = [6.0, 1.0, 9.0, 1.0, 9.0, 4.0, 6.0, 4.0]


def test_case5_nan_polygon_rejected_not_an_empty_object(tmp_path):
    from stages.ingest.loaders import load_coco

    nan = [float("nan")] * 8
    result = load_coco(*write_coco(tmp_path, [BOX, nan]))
    assert [s.sample_id for s in result.samples] == ["000000000001"]
    (reason,) = [r for _, r in result.rejected]
    assert "annotation 2: polygon coordinate nan is not finite or beyond the limit of 100000" in reason


BOUNDED = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (BUDGET, BUDGET))
from schemas.errors import DcamError
from stages.ingest.loaders import load_coco
from flows.config import load_config
out = {"rejected": [r for _, r in load_coco(*sys.argv[1:4]).rejected]}
try:
    load_config(sys.argv[4])
except DcamError as e:
    out["config"] = str(e)
print(json.dumps(out))
"""

ALIAS_BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                        + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")])


def test_cases6_7_huge_coordinates_and_alias_bomb_fail_in_one_line_under_a_memory_cap(tmp_path):
    """Before: 1e300 or Infinity grew `dcam ingest` to 24 GB (SIGSEGV under a cap); the alias bomb hung."""
    import subprocess
    import sys

    coco = write_coco(tmp_path / "coco", [BOX, [1e300] * 8, [float("inf")] * 8, [0, 0, 1e7, 0, 1e7, 1e7]])
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    budget = 1 << 30  # 1 GiB of address space: the interpreter, numpy, PIL and pycocotools fit
    proc = subprocess.run([sys.executable, "-c", BOUNDED.replace("BUDGET", str(budget)), *map(str, coco),
                           str(tmp_path / "bomb.yaml")], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert [r.split(": ", 1)[1] for r in out["rejected"]] == [
        f"polygon coordinate {v} is not finite or beyond the limit of 100000 (DCAM_MAX_POLYGON_COORD)"
        for v in ("1e+300", "inf", "10000000.0")]
    assert out["config"].endswith("more than 100000 YAML nodes once aliases are expanded (DCAM_MAX_YAML_NODES); "
                                  "refusing it")


def test_case7_config_nesting_and_alias_count_limits(tmp_path, monkeypatch):
    from flows.config import load_config

    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 100 + "]" * 100)
    with pytest.raises(DcamError, match="nested deeper than 64 levels \\(DCAM_MAX_NESTING_DEPTH\\)"):
        load_config(deep)
    monkeypatch.setenv("DCAM_MAX_YAML_ALIASES", "3")
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("a: &a 1\nb: [*a, *a, *a, *a]\n")
    with pytest.raises(DcamError, match="more than 3 YAML aliases \\(DCAM_MAX_YAML_ALIASES\\)"):
        load_config(aliases)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixels (readers learn the size, then fail)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_case8_huge_image_rejected_before_decoding(tmp_path, monkeypatch):
    from stages.capture.run import decode_image
    from stages.ingest.loaders import load_coco

    inst, caps, img = write_coco(tmp_path, [BOX, BOX, BOX])
    instances = json.loads(inst.read_text())
    for i, (w, h) in ((1, (12000, 10000)), (2, (20000, 20000))):
        (img / f"{i + 1}.jpg").write_bytes(png_header(w, h))
        instances["images"][i].update(height=h, width=w)
    inst.write_text(json.dumps(instances))
    result = load_coco(inst, caps, img)
    assert [s.sample_id for s in result.samples] == ["000000000001"]
    (_, ours), (_, pils) = result.rejected
    assert ours == "image 2.jpg is 12000x10000 = 120000000 pixels, more than the limit of 100000000 " \
                   "(DCAM_MAX_IMAGE_PIXELS)"
    assert "image file unreadable: " in pils and "exceeds limit of" in pils  # PIL's own guard (2 x 89M pixels)
    monkeypatch.setenv("DCAM_MAX_IMAGE_PIXELS", "50")
    with pytest.raises(DcamError, match="is 10x8 = 80 pixels, more than the limit of 50"):
        decode_image((img / "1.jpg").read_bytes(), "1.jpg")


def test_case8_steps_beyond_the_limit_refused_before_any_work(adapter, dataset, tmp_path):
    with pytest.raises(DcamError, match="steps: 100000 is more than the limit of 4096 \\(DCAM_MAX_STEPS\\)"):
        capture_dataset(dataset, tmp_path / "store", adapter=adapter, model_spec="toy",
                        config=CaptureConfig(layers=(1,), steps=100000, block_length=GEN))
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "ABSOLUTE"])
def test_case12_image_paths_outside_the_dataset_refused_unless_allowed(tmp_path, name):
    from stages.ingest.loaders import load_dataset

    outside = tmp_path / "outside.jpg"
    name = str(outside) if name == "ABSOLUTE" else name
    inst, caps, img = write_coco(tmp_path / "coco", [BOX, BOX], ["1.jpg", name])
    if not outside.exists():
        shutil.copyfile(img / "1.jpg", outside)
    result = load_dataset(inst, captions=caps, images=img)
    assert [s.sample_id for s in result.samples] == ["000000000001"]
    assert result.rejected == [("000000000002", f"image path {name!r} lies outside the dataset folder {img}; pass "
                                                "--allow-outside-paths (or set DCAM_ALLOW_OUTSIDE_PATHS=1) to read it")]
    allowed = load_dataset(inst, captions=caps, images=img, allow_outside_paths=True)
    assert [s.sample_id for s in allowed.samples] == ["000000000001", "000000000002"]


# ------------------------------------------------------------------ 15. no credentials in a run config
@pytest.mark.parametrize("over, where", [
    ({"storage_options": {"username": "u", "password": "p"}}, "storage_options.password"),
    ({"storage_options": {"client_kwargs": {"aws_secret_access_key": "s"}}},
     "storage_options.client_kwargs.aws_secret_access_key"),
    ({"storage_options": {"endpoint_url": "http://user:pass@127.0.0.1:9000"}},
     "storage_options.endpoint_url (user information in a URL)"),
    ({"root": "s3://AKIA:secret@bucket/prefix"}, "root (user information in a URL)"),
])
def test_case15_credential_like_options_refused(tmp_path, over, where):
    import yaml

    from flows.config import load_config

    cfg = {"root": "s3://bucket/prefix", "dataset": {"synth": {"count": 1}}, **over}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DcamError, match=f"{path}: {where.split(' ')[0]}.*put credentials in the environment"):
        load_config(path)


def test_case15_profile_and_plain_endpoint_allowed(tmp_path):
    from flows.config import RunConfig

    cfg = RunConfig.model_validate({"root": "s3://bucket/prefix", "dataset": {"synth": {"count": 1}},
                                    "storage_options": {"profile": "dev", "endpoint_url": "http://127.0.0.1:9000",
                                                        "client_kwargs": {"region_name": "eu-west-1"}}})
    assert cfg.storage_options["profile"] == "dev"


# ------------------------------------------------------------------ 16. real-model loaders read safetensors only
@pytest.mark.parametrize("family,marker", [("llada-v", "LlavaLLaDAModelLM"),
                                           ("lavida-llada", "LlavaLladaForMaskedDiffusion")])
def test_case16_llava_family_loaders_ask_for_safetensors(tmp_path, monkeypatch, llava_cleanup, family, marker):
    from stages.capture.registry import load_adapter
    from test_upstream_loaders import _llava  # the family's own stand-in 'llava' package

    _llava(tmp_path, monkeypatch, marker)
    seen = {}

    def load_pretrained_model(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    import llava.model.builder as builder

    monkeypatch.setattr(builder, "load_pretrained_model", load_pretrained_model)
    monkeypatch.setenv("LAVIDA_VISION_TOWER", str(tmp_path))
    with pytest.raises(DcamError, match="loader failed .*stop here"):
        load_adapter(f"{family}:{tmp_path}", device="cpu")
    assert seen["use_safetensors"] is True


# ------------------------------------------------------------------ one line, before any work, for a bad config
@pytest.mark.parametrize("explain, message", [
    ({"presets": ["no-such-preset"]}, "explain: unknown preset 'no-such-preset'"),
    ({"presets": [], "chains": [{"name": "c", "base": "gradcam", "modules": ["akd", "blur"]}]},
     "explain.chains.0: chain 'c': unknown module 'blur'; known modules: akd, "),
    ({"presets": [], "chains": [{"name": "c", "base": "no-cam", "modules": []}]},
     "explain.chains.0: chain 'c': unknown base method"),
])
def test_unknown_chain_names_refused_when_the_config_loads(tmp_path, explain, message):
    import yaml

    from flows.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"root": str(tmp_path / "root"), "dataset": {"synth": {"count": 1}},
                                    "explain": explain}))
    with pytest.raises(DcamError, match=f"^{path}: {message}"):
        load_config(path)


def test_sample_written_before_array_digests_is_verified_by_its_bytes(tmp_path):
    """A store written before per-array digests: the sample digest was one sha256 stream over each array's
    'name:dtype:shape' and bytes (top-level arrays by name, then each layer's), then the sorted attributes."""
    import hashlib

    import zarr

    a, b = np.arange(3, dtype=np.int16), np.ones((2, 2), np.float32)
    store = CaptureStore.create(tmp_path / "s", config={"k": 1})
    store.write_sample("x", arrays={"a": a}, layer_arrays={1: {"b": b}}, attrs={"status": "ok", "n": 1})
    h = hashlib.sha256()
    for name, arr in (("a", a), ("L1/b", b)):
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode() + arr.tobytes())
    h.update(json.dumps({"n": 1, "status": "ok"}, sort_keys=True).encode())
    group = zarr.open_group(str(tmp_path / "s" / "samples" / "x"), mode="a", zarr_format=3)
    attrs = {k: v for k, v in group.attrs.items() if k != "array_digests"}
    attrs["digest"] = h.hexdigest()
    group.attrs.put(attrs)  # as the old writer left it
    assert CaptureStore.open(tmp_path / "s").sample("x").attrs["digest"] == h.hexdigest()
    group.attrs["n"] = 2
    with pytest.raises(IntegrityError, match="sample x does not match its recorded digest"):
        CaptureStore.open(tmp_path / "s").sample("x")


# ------------------------------------------------------------------ .npy inputs and outputs: one line, no allocation
def test_npy_header_claiming_a_huge_array_or_more_bytes_than_the_file_is_refused(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    good = tmp_path / "m.npy"
    np.save(good, np.zeros((2, 4, 4), np.float32))
    raw = good.read_bytes()
    huge = tmp_path / "huge.npy"  # same header length, a shape of 768 TiB
    huge.write_bytes(raw.replace(b"(2, 4, 4)", b"(2000000, 400000, 400000)".ljust(9)[:9]) if False else
                     raw.replace(b"'shape': (2, 4, 4)", b"'shape': (9**9, 9**9)    "[:18]))
    for args, words in ((["refine", "--input", huge, "--output", tmp_path / "o.npy", "--modules", "akd"], "--input"),
                        (["score-map", "--heatmap", huge, "--mask", good], "--heatmap")):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 1 and len(err) == 1 and err[0].startswith(f"dcam: error: {words}: ")
    monkeypatch.setenv("DCAM_MAX_ARRAY_BYTES", "16")  # the limit itself: 2*4*4 float32 = 128 bytes
    with pytest.raises(SystemExit):
        main(["refine", "--input", str(good), "--output", str(tmp_path / "o.npy"), "--modules", "akd"])
    assert "more than the limit of 16 (DCAM_MAX_ARRAY_BYTES)" in capsys.readouterr().err


def test_refine_output_a_directory_or_a_full_device_is_one_line(tmp_path, capsys):
    from flows.cli import main

    good = tmp_path / "m.npy"
    np.save(good, np.zeros((2, 4, 4), np.float32))
    for out, status, words in ((tmp_path, 2, "is a directory"), ("/dev/full", 1, "cannot write /dev/full")):
        if out == "/dev/full" and not Path(out).exists():
            continue
        with pytest.raises(SystemExit) as e:
            main(["refine", "--input", str(good), "--output", str(out), "--modules", "akd"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == status and len(err) == 1 and words in err[0]
