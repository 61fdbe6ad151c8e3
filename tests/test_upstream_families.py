"""Family adapters against upstream behaviour, without real weights (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.capture.adapter import restore_cache, snapshot_cache
from stages.capture.replicas import build_replica


@pytest.fixture(scope="module")
def image():
    from stages.synth.render import render_scene

    return render_scene(np.random.default_rng(3), size=96, min_objects=2, max_objects=2, clutter_prob=0.0).image


def test_diffusion_gemma_prefix_activations_equal_generates_prefill(image):
    """generate() builds the encoder's vision-bidirectional mask (create_masks_for_generate with
    mm_token_type_ids); the encoder called bare drops it and its image tokens attend causally."""
    adapter = build_replica("diffusion-gemma")
    prep = adapter.prepare(image)
    seen = []
    hook = adapter.blocks()[1].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            adapter.prefix_pass(prep)
            adapter.model.generate(input_ids=prep.prompt_ids, attention_mask=torch.ones_like(prep.prompt_ids),
                                   max_new_tokens=adapter.gen_length, **prep.extra)
            adapter.encoder()(input_ids=prep.prompt_ids, **prep.extra)  # the bare call: causal
    finally:
        hook.remove()
    ours, prefill, causal = seen[0], seen[1], seen[2]
    assert ours.shape == prefill.shape and ours.shape[1] == prep.prompt_len
    torch.testing.assert_close(ours, prefill, rtol=1e-5, atol=1e-5)
    span = slice(prep.span.start, prep.span.end)
    assert (ours[0, span] - causal[0, span]).abs().max() > 0.1  # the mask matters on the image span


class Cache450:
    """The interface of transformers 4.50.3's ``DynamicCache`` (LaViDa's pin): per-layer ``key_cache`` and
    ``value_cache`` lists that ``update`` concatenates onto, ``_seen_tokens``; no ``layers``."""

    def __init__(self):
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []
        self._seen_tokens = 0

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        if layer_idx == 0:
            self._seen_tokens += key_states.shape[-2]
        if len(self.key_cache) <= layer_idx:
            self.key_cache.append(key_states)
            self.value_cache.append(value_states)
        else:
            self.key_cache[layer_idx] = torch.cat([self.key_cache[layer_idx], key_states], dim=-2)
            self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value_states], dim=-2)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def get_seq_length(self, layer_idx=0):
        return self.key_cache[layer_idx].shape[-2] if len(self.key_cache) > layer_idx else 0


@pytest.mark.parametrize("kind", ["4.50", "current"])
def test_a_step_leaves_the_prefix_cache_as_it_found_it(kind):
    from transformers import DynamicCache

    cache = Cache450() if kind == "4.50" else DynamicCache()
    prefix = [(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)) for _ in range(3)]
    for layer, (k, v) in enumerate(prefix):
        cache.update(k, v, layer)
    snapshot = snapshot_cache(cache)
    for step in range(2):  # each step appends its 3 answer positions, then restores
        for layer in range(3):
            cache.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), layer)
        assert cache.get_seq_length() == 8
        restore_cache(cache, snapshot)
        assert cache.get_seq_length() == 5
    kv = snapshot_cache(cache)["kv"]
    assert all(k is sk and v is sv for (k, v), (sk, sv) in zip(kv, snapshot["kv"]))  # the prefix tensors themselves
    assert all(torch.equal(k, pk) and torch.equal(v, pv) for (k, v), (pk, pv) in zip(kv, prefix))
    if kind == "4.50":
        assert cache._seen_tokens == 5


def test_diffusion_gemma_runs_its_own_sampler_and_the_replay_feeds_the_recorded_self_conditioning(image):
    from stages.capture.core import CaptureConfig, capture_sample
    from stages.dmllm.uniform import uniform_noise_sample

    adapter = build_replica("diffusion-gemma")
    config = CaptureConfig(layers=(1,), steps=6, block_length=adapter.gen_length, mode="prefix-cache", record="all")
    kept = capture_sample(adapter, image, config, sample_id="s")  # the replay reuses generation's step graphs
    replayed = capture_sample(adapter, image, config, sample_id="s", graph_budget=0)  # every step run again
    assert kept.attrs["sampler"] == "uniform-noise"
    np.testing.assert_array_equal(kept.arrays["tokens"], replayed.arrays["tokens"])
    np.testing.assert_allclose(replayed.arrays["score"], kept.arrays["score"], rtol=1e-5, atol=1e-5)
    for name in ("alpha", "gxa"):
        a, b = replayed.layer_arrays[1][name], kept.layer_arrays[1][name]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
    with torch.no_grad():  # the conditioning input changes the step: a replay without it would not be the step
        prep = adapter.prepare(image)
        cache, _ = adapter.prefix_pass(prep)
        traj = uniform_noise_sample(lambda x, c: adapter.answer_logits(prep, cache, x, conditioning=c),
                                    gen_length=adapter.gen_length, vocab_size=adapter.vocab_size, steps=3,
                                    generator=torch.Generator().manual_seed(0))
        x = traj.states[2].unsqueeze(0)
        with_input = adapter.answer_logits(prep, cache, x, conditioning=traj.conditioning[2])
        without = adapter.answer_logits(prep, cache, x)
    assert (with_input - without).abs().max() > 1e-3
