"""The stage graph (issue 15): one chain type, the nodes a chain walks, the one explain path, --only / --from.

Known answers: the node configs that key each artifact are the ones the explain stages used before the graph
(so the same inputs give the same artifacts), chains parse from presets as the config documents, and slicing
recomputes exactly the named stages.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.errors import DcamError
from schemas.run import RunRecord
from stages.catalog import artifact_dir, artifact_key
from stages.chain import Chain, as_chain, sweep_chains
from stages.graph import CHAIN_NODES, NODES, chain_steps, check_slice, explain_shard, run_explain
from stages.presets import PRESETS, get_preset

# ------------------------------------------------------------------------------------------------ chain type

CHAIN_CASES = [
    # (entry, expected fields or an error fragment)
    ({"name": "x", "preset": "tam"},
     {"base": "tam", "modules": ("normalize", "rank-filter"), "params": {"rank-filter": {"size": 3}},
      "profile": "reference"}),
    ({"name": "x", "preset": "tam", "params": {"rank-filter": {"size": 5}}},
     {"params": {"rank-filter": {"size": 5}}}),
    ({"name": "x", "preset": "tam", "modules": ["normalize"]},  # the removed module's params are dropped
     {"modules": ("normalize",), "params": {}}),
    ({"name": "x", "preset": "ablation-baseline", "threshold": 0.25}, {"threshold": 0.25, "modules": ()}),
    ({"name": "x", "preset": "diffusion-cam", "profile": "reference"},
     {"profile": "reference", "base_options": {"normalize": True}}),
    ({"name": "x", "base": "gradcam", "modules": []}, {"profile": "paper", "modules": (), "threshold": None}),
    ({"name": "x", "preset": "tam", "modules": ["normalize"], "params": {"rank-filter": {"size": 5}}},
     "parameters given for modules it does not run: ['rank-filter']"),
    ({"name": "x", "base": "gradcam"}, "give 'preset' to start from, or both 'base' and 'modules'"),
    ({"name": "x", "base": "nope", "modules": []}, "nope"),
    ({"name": "x", "base": "gradcam", "modules": ["nope"]}, "unknown module 'nope'"),
    ({"name": "x", "base": "gradcam", "modules": [], "profile": "weird"}, "profile must be one of"),
    ({"name": "x", "base": "gradcam", "modules": [], "threshold": math.inf}, "threshold must be a finite number"),
    ({"name": "x", "preset": "nope"}, "unknown preset 'nope'"),
    ({"name": "x", "base": "gradcam", "modules": [], "colour": "red"}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize("entry, expected", CHAIN_CASES, ids=[str(i) for i in range(len(CHAIN_CASES))])
def test_chain_entries(entry, expected):
    if isinstance(expected, str):
        with pytest.raises(DcamError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            as_chain(entry)
        return
    chain = as_chain(entry)
    assert chain.name == "x" and chain.summary == ""
    for field, value in expected.items():
        assert getattr(chain, field) == value, field


def test_chain_is_frozen_and_presets_are_chains():
    chain = get_preset("gradcam")
    with pytest.raises(Exception):
        chain.base = "tam"
    assert all(isinstance(p, Chain) and p.name == n for n, p in PRESETS.items())
    # a chain survives its JSON form (how run.json and Prefect parameters carry it)
    for p in PRESETS.values():
        assert Chain.model_validate(json.loads(json.dumps(p.model_dump()))) == p


def test_sweep_names_and_params():
    chains = sweep_chains("diffusion-cam-reference", {"dacg.sigma": [1.0, 2.0], "akd.max_kernel": [3]})
    assert [c.name for c in chains] == ["diffusion-cam-reference[akd.max_kernel=3,dacg.sigma=1.0]",
                                        "diffusion-cam-reference[akd.max_kernel=3,dacg.sigma=2.0]"]
    assert chains[1].params == {"akd": {"max_kernel": 3}, "dacg": {"sigma": 2.0}}
    with pytest.raises(DcamError, match="does not run module 'rank-filter'"):
        sweep_chains("diffusion-cam", {"rank-filter.size": [3]})
    with pytest.raises(DcamError, match="must be 'module.param'"):
        sweep_chains("diffusion-cam", {"size": [3]})


def test_in_memory_chain_equals_its_steps():
    """Chain.maps (the faithfulness stage's path) = base method, then apply_chain, then the threshold."""
    from stages.basemaps import get_base_method
    from stages.refine.chain import apply_chain

    rng = np.random.default_rng(1)
    arrays = {"acts": rng.normal(size=(20, 6)), "alpha": rng.normal(size=(3, 6)),
              "alpha_pos": np.abs(rng.normal(size=(3, 6))), "tam_logits": rng.normal(size=(3, 20))}
    for name in ("ablation-baseline", "llava-cam", "diffusion-cam", "tam"):
        chain = get_preset(name)
        base = get_base_method(chain.base)(arrays, (4, 5), **chain.base_options)
        want = apply_chain(base, chain.modules, profile=chain.profile, params=chain.params)
        if chain.threshold is not None:
            want = np.where(want < chain.threshold, 0, want)
        np.testing.assert_allclose(chain.maps(arrays, (4, 5)), want, rtol=1e-6, atol=1e-7, err_msg=name)


# ------------------------------------------------------------------------------------------------ nodes

STEP_CASES = [
    # (preset, scored, expected (node, stage) sequence)
    ("gradcam", True, [("select", "select"), ("base", "base"), ("refine", "normalize"), ("score", "score")]),
    ("ablation-baseline", True, [("select", "select"), ("base", "base"), ("threshold", "threshold"),
                                 ("score", "score")]),
    ("tam", False, [("select", "select"), ("base", "base"), ("refine", "normalize"), ("refine", "rank-filter")]),
    ("llava-cam", False, [("select", "select"), ("base", "base"), ("threshold", "threshold")]),
    ("diffusion-cam", True, [("select", "select"), ("base", "base"), *(("refine", m) for m in
                             ("akd", "dacg", "cba", "normalize", "sicd")), ("score", "score")]),
]


@pytest.mark.parametrize("preset, scored, expected", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_chain_steps(preset, scored, expected):
    steps = chain_steps(get_preset(preset), policy="unmask-step", layers=None, steps=None, sample_ids=None,
                        scored=scored, tam_resize="uint8")
    assert [(s.node, s.stage) for s in steps] == expected
    for s in steps:  # every input names a registered input of the node and comes from an earlier step or outside
        assert set(s.sources) == set(NODES[s.node].inputs)
        earlier = {t.stage for t in steps[: steps.index(s)]}
        assert all(src in earlier or src in ("capture", "dataset") for src in s.sources.values())


def test_node_configs_are_the_artifact_keys_of_before():
    """The configs that key each artifact are exactly those of the explain stages before the graph, so a root
    written earlier is reused (its paths are unchanged except the base stage's folder, now 'base')."""
    chain = get_preset("tam").renamed("mine", params={"rank-filter": {"size": 5}}, threshold=0.2)
    steps = {s.stage: s.config for s in chain_steps(chain, policy="first-feasible", layers=[2], steps=None,
                                                       sample_ids=["b", "a"], scored=True, tam_resize="float")}
    assert steps == {
        "select": {"policy": "first-feasible", "layers": [2], "steps": None, "sample_ids": ["a", "b"]},
        "base": {"method": "tam", "options": {}},
        "normalize": {"module": "normalize", "profile": "reference", "params": {}},
        "rank-filter": {"module": "rank-filter", "profile": "reference", "params": {"size": 5}},
        "threshold": {"threshold": 0.2},
        "score": {"method": "mine", "tam_resize": "float"},
    }
    key = artifact_key("select", "1.0", steps["select"], {"capture": "c" * 64})
    assert artifact_dir("/r", "select", key) == Path("/r/select") / key[:16] and len(key) == 64


def test_node_registry():
    assert list(CHAIN_NODES) == ["select", "base", "refine", "threshold", "score"]
    assert all(NODES[n].run is not None and NODES[n].where == "CPU" for n in CHAIN_NODES)
    assert {n.name for n in NODES.values() if n.where == "GPU"} == {"capture", "occlusion", "faithfulness"}
    outputs = {n.output for n in NODES.values()}
    assert all(i in outputs for n in NODES.values() for i in n.inputs)  # every input is some node's output


@pytest.mark.parametrize("only, start, error", [
    ("cba", None, None), (None, "base", None), ("refine", None, None), (None, "sicd", None),
    ("cba", "base", "not both"), ("nope", None, "--only: unknown stage 'nope'"),
    (None, "capture", "--from: unknown stage 'capture'"),
])
def test_check_slice(only, start, error):
    if error is None:
        check_slice(only, start)
    else:
        with pytest.raises(DcamError, match=error):
            check_slice(only, start)


# ------------------------------------------------------------------------------------------------ one path

@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    from stages.capture.core import CaptureConfig
    from stages.capture.run import capture_dataset
    from stages.capture.toy_adapter import ToyAdapter
    from stages.synth.write import write_dataset
    from stages.toy.model import ToyConfig, ToyDMLLM

    base = tmp_path_factory.mktemp("graph")
    write_dataset(base / "data", count=3, seed=5)
    torch.manual_seed(0)
    model = ToyDMLLM(ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3,
                               num_heads=2, gen_length=8))
    adapter = ToyAdapter.load(str(model.save_pretrained(base / "model")))
    capture_dataset(base / "data", base / "store", adapter=adapter, model_spec="toy",
                    config=CaptureConfig(layers=(1,), steps=4, block_length=8, temperature=0.5))
    return base / "store", base / "data"


def _status(results):
    return {r["stage"]: r["status"] for r in results}


def test_one_path_slicing_and_run_record(capture, tmp_path):
    store, data = capture
    chains = [get_preset("diffusion-cam-reference"), get_preset("gradcam")]
    first = run_explain(tmp_path, store, chains, dataset=data)
    record = RunRecord.read(tmp_path / "run.json")  # validates
    assert record.schema_version == "1.0" and list(record.presets) == ["diffusion-cam-reference", "gradcam"]
    assert record.presets["gradcam"].chain == ["gradcam", "normalize"]
    assert Chain.model_validate({"name": "gradcam", **record.presets["gradcam"].spec}).key() == get_preset("gradcam").key()
    assert {s.status for e in record.presets.values() for s in e.stages} == {"computed", "cached"}  # select shared

    again = explain_shard(tmp_path, store, chains, dataset=data)
    assert {r["status"] for res in again.values() for r in res} == {"cached"}
    assert [r["path"] for r in again["gradcam"]] == [s["path"] for s in first["presets"]["gradcam"]["stages"]]

    # --from cba: the stages before cba reused, cba and every stage after it recomputed (same content: same paths)
    res = explain_shard(tmp_path, store, chains, dataset=data, start="cba")
    assert _status(res["diffusion-cam-reference"]) == {
        "select": "cached", "base": "cached", "akd": "cached", "dacg": "cached", "cba": "computed",
        "normalize": "computed", "sicd": "computed", "score": "computed"}
    assert set(_status(res["gradcam"]).values()) == {"cached"}  # no cba in it: nothing to recompute
    assert [r["path"] for r in res["diffusion-cam-reference"]] == \
        [s["path"] for s in first["presets"]["diffusion-cam-reference"]["stages"]]

    # --only base: that node alone is recomputed in every chain; the stages after it are reused (unchanged input)
    res = explain_shard(tmp_path, store, chains, dataset=data, only="base")
    assert _status(res["gradcam"]) == {"select": "cached", "base": "computed", "normalize": "cached",
                                       "score": "cached"}
    assert [r["path"] for r in res["gradcam"]] == [s["path"] for s in first["presets"]["gradcam"]["stages"]]
    with pytest.raises(DcamError, match="--only score: this run scores nothing"):
        explain_shard(tmp_path, store, chains, only="score")

    # slicing where the upstream outputs are missing stops before writing anything
    fresh = tmp_path / "fresh"
    with pytest.raises(DcamError, match="--only akd: the 'select' output it reads does not exist yet"):
        explain_shard(fresh, store, chains, dataset=data, only="akd")
    assert not fresh.exists() or not any(fresh.rglob("manifest.json"))


def test_sharded_run_merges_and_equals_the_unsharded_maps(capture, tmp_path):
    from schemas.capture import CaptureStore
    from schemas.maps import read_mapset

    store, data = capture
    ids = CaptureStore.open(store).sample_ids()
    chain = [get_preset("gradcam")]
    whole = run_explain(tmp_path / "a", store, chain, dataset=data)
    parts = run_explain(tmp_path / "b", store, chain, dataset=data, shards=[ids[:1], ids[1:]])
    stages = [s["stage"] for s in parts["presets"]["gradcam"]["stages"]]
    assert stages[-2:] == ["merge-maps", "merge-scores"] and stages.count("select") == 2
    a, b = read_mapset(whole["presets"]["gradcam"]["maps"]), read_mapset(parts["presets"]["gradcam"]["maps"])
    key = ["sample_id", "target", "layer"]
    ia, ib = a.index.sort_values(key).reset_index(drop=True), b.index.sort_values(key).reset_index(drop=True)
    assert ia[key].equals(ib[key])
    for (_, ra), (_, rb) in zip(ia.iterrows(), ib.iterrows()):
        np.testing.assert_allclose(a.array(ra["array"])[ra["offset"]], b.array(rb["array"])[rb["offset"]], atol=1e-6)
    with pytest.raises(DcamError, match="chain names must be unique"):
        run_explain(tmp_path / "c", store, chain * 2)


def test_run_record_refuses_what_is_not_one(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps({"store": "s", "policy": "unmask-step", "presets": {"x": {"maps": "m"}}}))
    with pytest.raises(DcamError, match=r"not a valid run description \(presets.x.stages: Field required\)"):
        RunRecord.read(bad)
    bad.write_text(json.dumps({"schema_version": "2.0", "store": "s", "policy": "p", "presets": {}}))
    with pytest.raises(DcamError, match="schema 2.0 is not readable"):
        RunRecord.read(bad)
    bad.write_text("{")
    with pytest.raises(DcamError, match="not a readable run description"):
        RunRecord.read(bad)


# ------------------------------------------------------------------------------------------------ command line

def test_cli_graph_and_slice_options(capture, tmp_path, capsys):
    from flows.cli import main

    def dcam(args):
        try:
            main(args)
            rc = 0
        except SystemExit as e:
            rc = e.code or 0
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, _ = dcam(["graph", "--json"])
    assert rc == 0 and [n["node"] for n in json.loads(out)][:4] == ["dataset", "capture", "select", "base"]
    store, data = capture
    root = tmp_path / "ex"
    rc, out, err = dcam(["explain", str(store), "--preset", "gradcam", "--out", str(root), "--only", "nope"])
    assert rc == 2 and "--only: unknown stage 'nope'" in err and not root.exists()
    rc, out, err = dcam(["explain", str(store), "--preset", "gradcam", "--out", str(root), "--only", "base"])
    assert rc == 1 and "the 'select' output it reads does not exist yet" in err
    rc, out, _ = dcam(["explain", str(store), "--preset", "gradcam", "--out", str(root), "--json"])
    assert rc == 0 and {s["status"] for s in json.loads(out)["presets"]["gradcam"]["stages"]} == {"computed"}
    rc, out, _ = dcam(["explain", str(store), "--preset", "gradcam", "--out", str(root), "--from", "normalize",
                       "--json"])
    stages = {s["stage"]: s["status"] for s in json.loads(out)["presets"]["gradcam"]["stages"]}
    assert rc == 0 and stages == {"select": "cached", "base": "cached", "normalize": "computed"}


# ------------------------------------------------------------------------------------------------ each node

def test_each_maps_node_against_a_direct_computation(capture, tmp_path):
    """select -> base -> refine -> threshold on a real capture: each artifact equals the same computation done
    directly on the store's arrays (base method, then apply_chain, then the threshold)."""
    import pandas as pd

    from schemas.capture import CaptureStore
    from schemas.maps import read_mapset
    from stages.basemaps import get_base_method
    from stages.refine.chain import apply_chain

    store, data = capture
    chain = Chain(name="probe", base="gradcam", modules=("normalize", "cba"), profile="reference",
                  base_options={"relu": True}, threshold=0.3)
    res = {r["stage"]: r for r in explain_shard(tmp_path, store, [chain])["probe"]}
    assert list(res) == ["select", "base", "normalize", "cba", "threshold"]
    sel = pd.read_parquet(Path(res["select"]["path"]) / "selection.parquet")
    cap = CaptureStore.open(store)
    base = read_mapset(res["base"]["path"])
    assert len(base.index) == len(sel) > 0  # unmask-step: one row per (target, layer)
    for _, row in sel.iterrows():
        sample = cap.sample(row["sample_id"])
        r, layer = int(row["attr_row"]), int(row["layer"])
        arrays = {"acts": sample.array("acts", layer)[sample.array("act_row")[r]].astype(np.float32),
                  "alpha": sample.array("alpha", layer)[r]}
        want = get_base_method("gradcam")(arrays, sample.grid, relu=True)[int(row["target"])]
        hit = base.index[(base.index["sample_id"] == row["sample_id"]) & (base.index["target"] == row["target"])]
        got = base.array(hit["array"].iloc[0])[hit["offset"].iloc[0]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    stack = {s: read_mapset(res[s]["path"]) for s in ("base", "normalize", "cba", "threshold")}
    for (_, rows, raw), (_, _, norm), (_, _, cba), (_, _, thr) in zip(*(m.groups() for m in stack.values())):
        np.testing.assert_allclose(norm, apply_chain(raw, ["normalize"]), atol=1e-6)
        np.testing.assert_allclose(cba, apply_chain(raw, ["normalize", "cba"]), atol=1e-6)
        np.testing.assert_array_equal(thr, np.where(cba < 0.3, 0, cba))
    assert stack["threshold"].manifest.schema_version == stack["base"].manifest.schema_version != ""


def test_a_chain_the_capture_cannot_serve_is_refused_before_anything_is_written(capture, tmp_path, capsys):
    """A capture that stored only some reductions: a chain whose base method needs another fails in one line,
    naming what is missing and the capture that serves it; a --store-grads capture would derive it."""
    from schemas.manifest import read_manifest
    from stages.graph import check_capture_serves

    store, data = capture
    config = read_manifest(store).config
    limited = {**config, "reductions": ["alpha"], "store_grads": False}
    check_capture_serves(limited, [get_preset("gradcam")], store)  # alpha is there
    with pytest.raises(DcamError, match=r"chain 'tam-like': base method 'gradcam-pp' needs the gradient "
                                        r"reduction\(s\) \['alpha_pp'\].*dcam capture --methods gradcam-pp"):
        check_capture_serves(limited, [get_preset("gradcam"), as_chain({"name": "tam-like", "base": "gradcam-pp",
                                                                          "modules": []})], store)
    check_capture_serves({**limited, "store_grads": True}, [get_preset("gradcam-pp")], store)  # derivable
    check_capture_serves({k: v for k, v in limited.items() if k != "reductions"}, [get_preset("gradcam-pp")], store)


def test_explain_exits_3_naming_the_samples_it_could_not_explain(capture, tmp_path, capsys):
    from flows.cli import main

    store, data = capture
    try:
        main(["explain", str(store), "--preset", "gradcam", "--out", str(tmp_path / "ex"), "--layers", "2"])
        rc = 0
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 3
    assert "gradcam: 3 sample(s) failed; first: " in err and "layers [2] were not captured (captured: [1])" in err


@pytest.mark.parametrize("entry, error", [
    ({"preset": "llava-cam", "threshold": 0.3}, "needs its own 'name'"),
    ({"name": "x", "preset": "tam", "params": {"rank-filter": None}}, "params must map each module"),
    ({"name": "x", "preset": "tam", "params": [1]}, "params must map each module"),
])
def test_config_chain_mistakes_are_one_line(entry, error):
    with pytest.raises(DcamError, match=error):
        as_chain(entry)


def test_presets_cannot_be_changed_through_what_get_preset_returns():
    get_preset("tam").params["rank-filter"]["size"] = 99
    assert get_preset("tam").params == {"rank-filter": {"size": 3}}


def test_forced_recompute_keeps_an_unchanged_artifact_and_swaps_a_changed_one(tmp_path):
    from schemas.manifest import ARTIFACT_SCHEMA_VERSIONS, StageManifest, digest_files, write_manifest
    from stages.catalog import materialize

    def writer(text):
        def compute(out):
            out.mkdir(parents=True, exist_ok=True)
            (out / "x.txt").write_text(text)
            m = StageManifest(kind="maps", schema_version=ARTIFACT_SCHEMA_VERSIONS["maps"], stage="t",
                              stage_version="1", content_digest=digest_files(out))
            write_manifest(out, m)
            return m
        return compute

    first = materialize(tmp_path, "t", "1", {}, {}, writer("a"))
    same = materialize(tmp_path, "t", "1", {}, {}, writer("a"), force=True)
    assert (same.status, same.path, same.content_digest) == ("computed", first.path, first.content_digest)
    changed = materialize(tmp_path, "t", "1", {}, {}, writer("b"), force=True)  # code changed, no version bump
    assert changed.path == first.path and changed.content_digest != first.content_digest
    assert (Path(first.path) / "x.txt").read_text() == "b"
    assert sorted(p.name for p in Path(first.path).parent.iterdir()) == [Path(first.path).name]  # nothing left aside


def test_chain_of_a_run_written_before_chains_were_recorded(capture, tmp_path):
    from stages.graph import chain_of

    store, data = capture
    chain = get_preset("tam").renamed("mine", params={"rank-filter": {"size": 5}}, threshold=0.2)
    run = run_explain(tmp_path, store, [chain])
    assert chain_of(run, "mine").key() == chain.key()
    del run["presets"]["mine"]["spec"]  # as an older run.json
    assert chain_of(run, "mine").key() == chain.key()
