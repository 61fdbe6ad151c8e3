"""A model family is one adapter class plus one registry entry (issue 15).

A family defined in this test module (no file under ``stages/``) is registered by adding one entry to
:data:`FAMILIES` and is then listed, loaded, defaulted, captured and replicated through the ordinary paths.
Every registered family's adapter declares the protocol of :class:`ModelAdapter` (modes, default mode and
steps, sampler defaults, replayability), checked against the values its upstream uses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.capture import CaptureStore
from schemas.errors import DcamError
from stages.capture.adapter import ModelAdapter, check_adapter
from stages.capture.registry import FAMILIES, Family, load_adapter, replica_families, resolve
from stages.capture.replicas import build_replica
from stages.capture.toy_adapter import ToyAdapter
from stages.toy.model import ToyConfig, ToyDMLLM

GEN = 8
REPO = Path(__file__).resolve().parent.parent


class FakeAdapter(ToyAdapter):
    """A new family: the toy network, but full recompute only and half as many steps as response tokens."""

    family = "fake-dllm"
    modes = ("full",)
    default_mode = "full"
    step_ratio = 0.5
    default_temperature = 0.5

    def prefix_pass(self, prep):
        raise DcamError("fake-dllm has no prefix cache; use --mode full")


def load_fake(path: str | None, device: str) -> FakeAdapter:
    torch.manual_seed(0)
    config = ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2,
                       gen_length=GEN)
    return FakeAdapter(ToyDMLLM(config).to(device).eval())


FAKE = Family("fake-dllm", "a family registered from a test module", "nothing", load_fake, FakeAdapter,
              needs_path=False, replica=lambda gen_length: load_fake(None, "cpu"))


@pytest.fixture
def fake_family(monkeypatch):
    monkeypatch.setitem(FAMILIES, FAKE.name, FAKE)  # removed again after the test
    return FAKE


def run_cli(args) -> int:
    from flows.cli import main

    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    return 0


# ----------------------------------------------------------------------------------- a new family
def test_a_family_registered_from_a_test_module_is_listed_and_captured(fake_family, tmp_path, capsys):
    from stages.synth.write import write_dataset

    data = tmp_path / "data"
    write_dataset(data, count=1, seed=3)
    assert run_cli(["models"]) == 0
    listing = capsys.readouterr().out
    assert "fake-dllm\n    a family registered from a test module" in listing

    out = tmp_path / "store"
    assert run_cli(["capture", "--data", str(data), "--model", "fake-dllm", "--out", str(out)]) == 0
    store = CaptureStore.open(out)
    # the declared defaults decided the run: its only mode, 0.5 x 8 steps, its temperature
    assert store.config["family"] == "fake-dllm" and store.config["model"] == "fake-dllm"
    assert (store.config["mode"], store.config["steps"], store.config["temperature"]) == ("full", 4, 0.5)
    (sid,) = store.sample_ids()
    sample = store.sample(sid)
    assert sample.ok
    assert sample.array("tokens").shape == (4 + 1, GEN)
    assert sample.array("step_feasible").all()  # full recompute: every step sees the whole image span


def test_a_registered_family_refuses_a_mode_it_does_not_declare(fake_family, tmp_path, capsys):
    from stages.synth.write import write_dataset

    data = tmp_path / "data"
    write_dataset(data, count=1, seed=3)
    assert run_cli(["capture", "--data", str(data), "--model", "fake-dllm", "--out", str(tmp_path / "s"),
                    "--mode", "prefix-cache"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fake-dllm family supports full" in err[0]


def test_a_registered_family_with_a_replica_is_built_by_name(fake_family):
    assert "fake-dllm" in replica_families()
    a, b = build_replica("fake-dllm", seed=0), build_replica("fake-dllm", seed=0)
    assert isinstance(a, FakeAdapter) and a.default_steps == GEN // 2
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_replicas_are_looked_up_not_fallen_through():
    assert "toy" not in replica_families()  # registered, without a replica
    for name in ("toy", "no-such-family"):
        with pytest.raises(ValueError, match=f"no replica of '{name}'; known: lavida-llada, ") as exc:
            build_replica(name)
        assert "\n" not in str(exc.value)


def test_a_loader_returning_another_familys_adapter_is_refused(monkeypatch):
    wrong = Family("fake-dllm", "s", "n", lambda path, device: ToyAdapter(load_fake(None, "cpu").model),
                   FakeAdapter, needs_path=False)
    monkeypatch.setitem(FAMILIES, wrong.name, wrong)
    with pytest.raises(DcamError, match="loader returned ToyAdapter of family 'toy', not a FakeAdapter") as exc:
        load_adapter("fake-dllm")
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------------- the protocol
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_registered_family_satisfies_the_adapter_protocol(name):
    family = FAMILIES[name]
    cls = family.adapter_class()
    assert issubclass(cls, ModelAdapter) and cls.family == name
    assert family.summary and family.needs and family.defaults
    adapter = build_replica(name, seed=0, gen_length=GEN) if family.replica else load_adapter(name)
    assert check_adapter(adapter) is adapter
    assert adapter.default_mode == adapter.modes[0]


#: What each family's upstream uses: modes (its own first), default steps at 8 response tokens, sampler,
#: schedule, remasking, temperature, nucleus, replayable by the faithfulness stage, batched prompts.
DECLARED = {
    "lavida-llada": (("prefix-cache", "full"), 4, "masked", "shift", "low_confidence", 0.1, 1.0, True, False),
    "lavida-dream": (("prefix-cache", "full"), 8, "masked", "dream", "entropy", 0.2, 0.95, True, False),
    "llada-v": (("full",), 8, "masked", "even", "low_confidence", 0.0, 1.0, True, False),
    "mmada": (("full",), 8, "masked", "even", "low_confidence", 0.0, 1.0, True, False),
    "diffusion-gemma": (("prefix-cache", "full"), 48, "uniform-noise", "even", "low_confidence", 0.0, 1.0, False,
                        False),
}


@pytest.mark.parametrize("name", list(DECLARED))
def test_each_family_declares_its_upstreams_defaults(name):
    a = build_replica(name, seed=0, gen_length=GEN)
    got = (a.modes, a.default_steps, a.sampler, a.default_schedule, a.default_remasking, a.default_temperature,
           a.default_top_p, a.replayable, a.batched_prompts)
    assert got == DECLARED[name]


def test_the_toy_declares_batched_prompts_and_full_as_default():
    toy = load_adapter("toy")
    assert (toy.modes, toy.default_mode, toy.default_steps) == (("full", "prefix-cache"), "full", toy.gen_length)
    assert toy.batched_prompts and toy.replayable


@pytest.mark.parametrize("attr,value,message", [
    ("modes", ("full", "sideways"), "modes must be a non-empty tuple"),
    ("modes", (), "modes must be a non-empty tuple"),
    ("default_mode", "prefix-cache", "default_mode 'prefix-cache' is not one of modes ('full',)"),
    ("default_steps", 0, "default_steps must be a positive int, got 0"),
    ("step_ratio", 0.0, "step_ratio must be > 0"),
    ("sampler", "autoregressive", "sampler must be one of"),
    ("default_schedule", "linear", "default_schedule must be one of"),
    ("default_remasking", "greedy", "default_remasking must be one of"),
    ("default_temperature", -1.0, "default_temperature must be >= 0"),
    ("default_top_p", 0.0, "default_top_p must be in (0, 1]"),
    ("replayable", "yes", "replayable must be a bool"),
])
def test_check_adapter_names_the_bad_declaration(monkeypatch, attr, value, message):
    monkeypatch.setattr(FakeAdapter, attr, value)
    with pytest.raises(DcamError, match="family fake-dllm: the adapter FakeAdapter declares") as exc:
        check_adapter(load_fake(None, "cpu"))
    assert message in str(exc.value) and "\n" not in str(exc.value)


# ----------------------------------------------------------------------------------- the registry
def test_importing_the_registry_imports_no_family_code():
    code = ("import sys, stages.capture.registry as r; r.parse_model_spec('lavida-llada:/x'); "
            "print(sorted(m for m in sys.modules if m.startswith(('stages.capture.families', 'torch', "
            "'transformers', 'huggingface_hub'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_default_checkpoint_is_the_one_loaded_and_digested():
    from stages.capture.registry import checkpoint_path
    from stages.toy.model import BUNDLED_WEIGHTS

    assert checkpoint_path("toy") == str(BUNDLED_WEIGHTS)
    assert checkpoint_path("toy:/elsewhere") == "/elsewhere"
    assert checkpoint_path("lavida-llada:/ckpt") == "/ckpt"


@pytest.mark.parametrize("ref", ["no_colon", ":attr", "module:"])
def test_a_malformed_reference_is_one_line(ref):
    with pytest.raises(ValueError, match="reference: expected 'module:attribute'"):
        resolve(ref)


def test_resolve_imports_the_named_attribute():
    assert resolve("stages.capture.toy_adapter:ToyAdapter") is ToyAdapter
    assert resolve(np.mean) is np.mean
