"""Capture stage: gradients, determinism, feasibility, resume, failures, hooks (issue 3)."""

import json
import shutil

import numpy as np
import pytest
import torch

from schemas.capture import CaptureStore
from schemas.errors import DcamError, SchemaVersionError
from stages.capture.config import resolve_layers
from stages.capture.core import CaptureConfig, capture_sample
from stages.capture.hooks import BlockRecorder
from stages.capture.run import capture_dataset
from stages.capture.targets import build_targets
from stages.capture.toy_adapter import ToyAdapter
from stages.synth import render_scene
from stages.synth.write import write_dataset
from stages.toy.model import ToyConfig, ToyDMLLM

GEN, STEPS = 8, 4


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A small random-init toy model (fast): the capture mechanics do not depend on training."""
    torch.manual_seed(0)
    model = ToyDMLLM(ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3,
                               num_heads=2, gen_length=GEN))
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def adapter(tiny_model_dir):
    return ToyAdapter.load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synth"
    write_dataset(out, count=4, seed=3)
    return out


@pytest.fixture(scope="module")
def image():
    return render_scene(np.random.default_rng(1)).image


def cfg(**kw):
    base = dict(layers=(1,), steps=STEPS, block_length=GEN, mode="full", seed=0, temperature=0.5)
    base.update(kw)
    return CaptureConfig(**base)


def test_last_block_refused_and_middle_default(adapter):
    assert resolve_layers(adapter, None) == (1,)
    with pytest.raises(DcamError, match="last block"):
        resolve_layers(adapter, [2])
    with pytest.raises(DcamError, match="last block"):
        resolve_layers(adapter, [-1])
    with pytest.raises(DcamError, match="does not exist"):
        resolve_layers(adapter, [7])
    assert resolve_layers(adapter, [0, -2]) == (0, 1)


@pytest.mark.parametrize("record", ["all", "unmask-step"])
@pytest.mark.parametrize("mode", ["full", "prefix-cache"])
def test_stored_gradients_equal_independent_autograd(adapter, image, mode, record):
    cap = capture_sample(adapter, image, cfg(mode=mode, store_grads=True, record=record), sample_id="s")
    grads = cap.layer_arrays[1]["grads"]  # (R, T, N, D) fp16
    acts = cap.layer_arrays[1]["acts"]
    alpha = cap.layer_arrays[1]["alpha"]
    targets = cap.attrs["targets"]
    states = torch.as_tensor(cap.arrays["tokens"]).long()
    span = cap.attrs["span"]
    grid = torch.arange(span["start"], span["end"])
    t = 0
    tgt = targets[t]
    step = 2 if record == "all" else tgt["unmask_step"]  # unmask-step: the target's own step is recorded
    row = list(cap.arrays["attr_steps"]).index(step)
    assert cap.arrays["recorded"][row, t]
    # Independent computation: one plain forward with a hook, one backward of the target's logit.
    model = adapter.model
    store = {}

    def keep_first(_m, _i, o):  # the prefix pass (prefix-cache) or the full pass; returns None: output unchanged
        store.setdefault("h", o[0] if isinstance(o, tuple) else o)

    h = model.language_model.layers[1].register_forward_hook(keep_first)
    try:
        embeds, _ = model.embed_prompt(model.preprocess(image))
        x = states[step].unsqueeze(0)
        if mode == "full":
            logits, _ = model.lm_forward(torch.cat([embeds, model.embed_tokens(x)], 1))
            resp = logits[0, embeds.shape[1]:]
        else:
            _, cache = model.lm_forward(embeds, use_cache=True)
            p = embeds.shape[1]
            pos = torch.arange(p, p + GEN).unsqueeze(0)
            resp = model.lm_forward(model.embed_tokens(x), past_key_values=cache, position_ids=pos, use_cache=True)[0][0]
        score = sum(resp[p_, i] for p_, i in zip(tgt["positions"], tgt["token_ids"]))
        (g,) = torch.autograd.grad(score, store["h"])
    finally:
        h.remove()
    expected = g[0, grid].numpy()
    np.testing.assert_allclose(grads[row, t].astype(np.float32), expected, rtol=2e-2, atol=1e-3 * np.abs(expected).max())
    np.testing.assert_allclose(alpha[row, t], expected.mean(0), rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    a_row = cap.arrays["act_row"][row]
    np.testing.assert_allclose(acts[a_row].astype(np.float32), store["h"][0, grid].detach().numpy(), rtol=1e-2, atol=1e-2)
    assert np.abs(expected).max() > 0


def test_feasibility_flags(adapter, image):
    full = capture_sample(adapter, image, cfg(mode="full", record="all"), sample_id="s")
    assert full.arrays["step_feasible"].all()
    assert [f["kind"] for f in full.attrs["forwards"]] == ["full"] * STEPS
    assert full.layer_arrays[1]["acts"].shape[0] == STEPS
    prefix = capture_sample(adapter, image, cfg(mode="prefix-cache", record="all"), sample_id="s")
    kinds = [(f["kind"], f["contains_image_span"]) for f in prefix.attrs["forwards"]]
    assert kinds == [("prefix", True)] + [("answer", False)] * STEPS
    assert not prefix.arrays["step_feasible"].any()
    assert prefix.layer_arrays[1]["acts"].shape[0] == 1 and (prefix.arrays["act_row"] == 0).all()
    # every step's score still reaches the prefix activations through the cache
    assert all(np.abs(prefix.layer_arrays[1]["alpha"][s]).max() > 0 for s in range(STEPS))


def test_replay_reproduces_sampler_and_modes_agree_on_text(adapter, image):
    for mode in ("full", "prefix-cache"):
        cap = capture_sample(adapter, image, cfg(mode=mode, temperature=0.0), sample_id="s")
        assert cap.attrs["replay_max_abs_diff"] < 1e-5


def test_same_seed_identical_and_hooks_removed(adapter, image, tmp_path):
    a = capture_sample(adapter, image, cfg(), sample_id="s")
    b = capture_sample(adapter, image, cfg(), sample_id="s")
    digests = []
    for name, cap in (("a", a), ("b", b)):  # timings differ, the sample's content digest does not
        store = CaptureStore.create(tmp_path / name, config={"t": 1})
        digests.append(store.write_sample("s", arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs))
    assert digests[0] == digests[1]
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    for k in a.layer_arrays[1]:
        np.testing.assert_array_equal(a.layer_arrays[1][k], b.layer_arrays[1][k])
    assert a.attrs["generated_ids"] == b.attrs["generated_ids"]
    assert all(not blk._forward_hooks for blk in adapter.blocks())


def test_hooks_removed_on_error(adapter):
    blocks = adapter.blocks()
    with pytest.raises(RuntimeError):
        with BlockRecorder(blocks, [0, 1], adapter.block_output) as rec:
            assert rec.active == 2
            raise RuntimeError("boom")
    assert all(not blk._forward_hooks for blk in blocks)
    assert rec.records == []


def test_targets_words_plus_response_and_contrastive():
    words = [("a", [0]), ("red", [1]), ("circle", [2])]
    final = [10, 11, 12, 2, 2]
    unmask = [3, 0, 1, 2, 2]
    t = build_targets(words, final, unmask, score="logit", response_text="a red circle")
    assert [x.kind for x in t] == ["word", "word", "word", "response"]
    assert t[0].unmask_step == 3 and t[3].positions == (0, 1, 2) and t[3].unmask_step == 3
    c = build_targets(words, final, unmask, score="contrastive")
    assert len(c) == 1 and c[0].positions == (1, 0) and c[0].token_ids == (11, 10)


def test_capture_dataset_resume_and_failures(adapter, dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "image" / f"{2:012d}.jpg").write_bytes(b"not a jpeg")  # an unreadable image
    out = tmp_path / "store"
    config = cfg()
    seen = []

    def killer(sid, status):
        seen.append((sid, status))
        if len(seen) == 2:
            raise KeyboardInterrupt  # a run killed after two samples

    with pytest.raises(KeyboardInterrupt):
        capture_dataset(data, out, adapter=adapter, model_spec="toy", config=config, on_sample=killer)
    store = CaptureStore.open(out, mode="a")
    done_before = store.sample_ids()
    assert len(done_before) == 2 and store.manifest() is None
    # a half-written sample group left behind by the kill is redone, never read as complete
    store._samples().create_group(f"{4:012d}").attrs.update({"status": "ok"})
    assert f"{4:012d}" in store.incomplete_ids()
    statuses = []
    manifest = capture_dataset(data, out, adapter=adapter, model_spec="toy", config=config,
                               on_sample=lambda s, st: statuses.append((s, st)))
    ids = [s.sample_id for s in manifest.samples]
    assert sorted(ids) == [f"{i:012d}" for i in range(1, 5)] and len(ids) == len(set(ids))
    assert [st for s, st in statuses if s in done_before] == ["skipped", "skipped"]
    failed = manifest.failed()
    assert [f.sample_id for f in failed] == [f"{2:012d}"] and "unreadable" in failed[0].reason
    store = CaptureStore.open(out)
    assert store.incomplete_ids() == []
    ok = store.sample(f"{1:012d}")
    assert ok.ok and ok.grid == (12, 12) and ok.array("L1/acts".split("/")[1], 1).shape[1:] == (144, 32)


def test_store_refuses_other_config_and_schema_version(adapter, dataset, tmp_path):
    out = tmp_path / "store"
    capture_dataset(dataset, out, adapter=adapter, model_spec="toy", config=cfg(), limit=1)
    with pytest.raises(DcamError, match="different configuration"):
        capture_dataset(dataset, out, adapter=adapter, model_spec="toy", config=cfg(seed=5), limit=1)
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = "9.0"
    (out / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaVersionError, match="9.0.*1.0"):
        CaptureStore.open(out)


def run_cli(args):
    from flows.cli import main

    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    return 0


def test_cli_capture_then_inspect(tiny_model_dir, dataset, tmp_path, capsys):
    out = tmp_path / "store"
    for mode in ("full", "prefix-cache"):
        assert run_cli(["capture", "--data", str(dataset), "--model", f"toy:{tiny_model_dir}", "--out",
                        str(out / mode), "--steps", str(STEPS), "--mode", mode, "--limit", "2"]) == 0
        capsys.readouterr()
        assert run_cli(["inspect", str(out / mode), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["n_ok"] == 2 and info["problems"] == []
        s = info["samples"][0]
        assert s["grid"] == [12, 12] and s["layers"] == [1] and s["steps"] == STEPS
        assert len(s["feasible_steps"]) == (STEPS if mode == "full" else 0)
        assert s["targets"][-1] == s["generated_text"]


def test_cli_capture_stores_the_reductions_its_methods_declare(tiny_model_dir, dataset, tmp_path, capsys):
    out = tmp_path / "store"
    assert run_cli(["capture", "--data", str(dataset), "--model", f"toy:{tiny_model_dir}", "--out", str(out),
                    "--steps", str(STEPS), "--limit", "1", "--methods", "gradcam-pp,tam"]) == 0
    assert "reductions alpha_pp]" in capsys.readouterr().out
    store = CaptureStore.open(out)
    assert store.config["reductions"] == ["alpha_pp"] and store.config["store_grads"] is False
    sample = next(store.samples(ok_only=True))
    assert sample.reductions == ["alpha_pp"]
    assert sorted(name for name, _ in sample.group["L1"].arrays()) == ["acts", "alpha_pp"]


@pytest.mark.parametrize("args,msg", [
    (["--layers", "2"], "last block"),
    (["--mode", "sideways"], "--mode"),
    (["--model", "nosuch"], "unknown family"),
    (["--block-length", "3"], "block_length"),
    (["--methods", "gradcam,scorecam"], "--methods: unknown base method 'scorecam'"),
])
def test_cli_capture_errors(tiny_model_dir, dataset, tmp_path, capsys, args, msg):
    base = ["capture", "--data", str(dataset), "--model", f"toy:{tiny_model_dir}", "--out", str(tmp_path / "s")]
    if args[0] == "--model":
        base[4] = args[1]
        args = []
    assert run_cli(base + args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dcam: error:") and msg in err[0]
