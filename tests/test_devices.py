"""Device-correct capture, proven without a GPU: the model and its inputs on the ``meta`` device (issue 12).

A tensor built on the CPU and handed to a model on another device raises ("Tensor on device cpu is not on
the expected device meta"), so a capture that runs with the model on ``meta`` builds every tensor on the
model's device, as it must on ``cuda``. Values do not exist on ``meta``: the sampler's trajectory there is
checked for where it lives, and the replay reads back an honest CPU trajectory of the same model.
DiffusionGemma is left out of the end-to-end runs: transformers' mask builder reads a value
(``padding_mask.all()``) that ``meta`` cannot give; its ``prepare`` is checked alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stages.capture.core as core
import stages.dmllm.sampler as sampler
from stages.capture.core import CaptureConfig, capture_sample
from stages.capture.replicas import build_replica
from stages.capture.toy_adapter import ToyAdapter
from stages.dmllm.sampler import add_gumbel_noise, masked_diffusion_sample
from stages.toy.model import ToyConfig, ToyDMLLM

GEN, STEPS = 8, 4
ON_META = [("toy", "full"), ("toy", "prefix-cache"), ("lavida-llada", "prefix-cache"), ("lavida-llada", "full"),
           ("lavida-dream", "prefix-cache"), ("lavida-dream", "full"), ("llada-v", "full"), ("mmada", "full")]


@pytest.fixture(scope="module")
def image():
    from stages.synth.render import render_scene

    return render_scene(np.random.default_rng(3), size=96, min_objects=2, max_objects=2, clutter_prob=0.0).image


def _adapter(family: str):
    if family != "toy":
        return build_replica(family, seed=0, gen_length=GEN)
    torch.manual_seed(0)
    return ToyAdapter(ToyDMLLM(ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3,
                                         num_heads=2, gen_length=GEN)).eval())


def _sample(adapter, logits_fn, **kw):
    return masked_diffusion_sample(logits_fn, gen_length=adapter.gen_length, mask_id=adapter.mask_id, steps=STEPS,
                                   block_length=adapter.gen_length, forbid_ids=adapter.forbid_ids, **kw)


def _host_or_zeros(t: torch.Tensor) -> np.ndarray:
    """``to_host``, with zeros of the right shape for a ``meta`` tensor (which holds no values)."""
    if t.is_meta:
        return np.zeros(tuple(t.shape), np.float32 if t.is_floating_point() else np.int64)
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("family,mode,remasking", [(f, m, "low_confidence") for f, m in ON_META]
                         + [("toy", "full", "random"), ("lavida-dream", "prefix-cache", "entropy")])
def test_the_sampler_hands_the_model_only_tensors_on_its_device(image, family, mode, remasking):
    adapter = _adapter(family)
    adapter.model.to("meta")
    seen = []
    with torch.no_grad():
        prep = adapter.prepare(image)
        step = adapter.logits_fn(prep, mode)

        def logits_fn(x):
            seen.append(x.device.type)
            return step(x)

        traj = _sample(adapter, logits_fn, temperature=0.5, remasking=remasking, top_p=0.95,
                       generator=torch.Generator().manual_seed(0), device=adapter.device)
    assert seen == ["meta"] * STEPS
    assert all(t.is_meta for t in (traj.states, traj.unmask_step, traj.confidence, traj.final, *traj.transfer))


def test_noise_is_drawn_from_the_cpu_generator_and_moved():
    drawn, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    noisy = add_gumbel_noise(torch.zeros(1, 3, 4, device="meta"), 0.5, drawn)
    assert noisy.is_meta
    torch.rand(12, dtype=torch.float64, generator=reference)  # the draw the CPU generator must have made
    assert torch.equal(torch.rand(4, generator=drawn), torch.rand(4, generator=reference))


def test_a_seed_gives_the_same_trajectory_whatever_the_device_argument(image):
    """On the CPU the device argument changes nothing: the draws are the CPU generator's either way."""
    adapter = _adapter("toy")
    with torch.no_grad():
        prep = adapter.prepare(image)
        fn = adapter.logits_fn(prep, "full")
        a = _sample(adapter, fn, temperature=0.7, generator=torch.Generator().manual_seed(3))
        b = _sample(adapter, fn, temperature=0.7, generator=torch.Generator().manual_seed(3), device=torch.device("cpu"))
    assert torch.equal(a.states, b.states) and torch.equal(a.unmask_step, b.unmask_step)


@pytest.mark.parametrize("family,mode,record", [(f, m, "unmask-step") for f, m in ON_META]
                         + [("toy", "full", "all"), ("toy", "prefix-cache", "all")])
def test_capture_runs_with_the_model_on_another_device(monkeypatch, image, family, mode, record):
    adapter = _adapter(family)
    with torch.no_grad():  # an honest trajectory of this model, read back on the host
        recorded = _sample(adapter, adapter.logits_fn(adapter.prepare(image), mode))
    adapter.model.to("meta")

    def sample_on_meta(logits_fn, **kw):  # run the real sampler on meta, then hand back the host trajectory
        traj = masked_diffusion_sample(logits_fn, **kw)
        assert traj.states.is_meta
        return recorded

    monkeypatch.setattr(sampler, "masked_diffusion_sample", sample_on_meta)
    monkeypatch.setattr(core, "to_host", _host_or_zeros)
    config = CaptureConfig(layers=(1,), steps=STEPS, block_length=GEN, mode=mode, record=record, store_grads=True)
    cap = capture_sample(adapter, image, config, sample_id="s")
    t, r = len(cap.attrs["targets"]), len(cap.arrays["attr_steps"])
    assert cap.arrays["recorded"].shape == (r, t) and cap.layer_arrays[1]["alpha"].shape[:2] == (r, t)
    assert r == (STEPS if record == "all" else len({tg["unmask_step"] for tg in cap.attrs["targets"]}))


def test_diffusion_gemma_prepares_its_inputs_on_the_models_device(image):
    adapter = _adapter("diffusion-gemma")
    adapter.model.to("meta")
    prep = adapter.prepare(image)
    assert prep.prompt_ids.is_meta and all(v.is_meta for v in prep.extra.values())
