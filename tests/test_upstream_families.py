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
