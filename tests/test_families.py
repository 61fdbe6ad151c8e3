"""Real dMLLM family adapters, proven on tiny random-initialised replicas.

Grid proofs: the vision side is replaced by features that *encode where they come from* (view, patch row,
patch column), every trunk block is made the identity, and the hooked block's output is mapped back with
``tokens_to_grid`` and the adapter's SpanLayout. The map must give back the source coordinates exactly:
no shear from newline tokens, no base-view token, no special token. The official reshape
(``official_shear=True``) must not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.errors import DcamError
from schemas.span import tokens_to_grid
from stages.capture.core import CaptureConfig, capture_sample
from stages.capture.hooks import BlockRecorder
from stages.capture.registry import FAMILIES, replica_families
from stages.capture.replicas import MMADA_CODEBOOK, build_replica

NEWLINE = -5.0
BASE = 7.0


@pytest.fixture(scope="module")
def adapters():
    return {}


def _adapter(adapters, family):
    if family not in adapters:
        adapters[family] = build_replica(family, seed=0)
    return adapters[family]


class _IdentityBlocks:
    """Forward hooks that make every block return its input (tuple outputs keep their other members)."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __enter__(self):
        def hook(_module, args, kwargs, output):
            hs = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            return (hs, *output[1:]) if isinstance(output, tuple) else hs

        self.handles = [b.register_forward_hook(hook, with_kwargs=True) for b in self.blocks]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _hooked_hidden(adapter, prep, layer=1):
    """The hooked block's output (L, D) for one full forward over prompt + an all-mask response."""
    x = torch.full((1, adapter.gen_length), adapter.mask_id)
    with torch.no_grad(), _IdentityBlocks(adapter.blocks()), BlockRecorder(
        adapter.blocks(), [layer], adapter.block_output
    ) as rec:
        adapter.full_logits(prep, x)
        (record,) = rec.take()
    return record.hidden[0].float().numpy()


def _coordinate_features(adapter, views_wh, d):
    """Replacement for ``encode_images``: channel 0 marks the base view, 1/2 hold the global patch row/col."""
    npw, nph = views_wh
    side = adapter.model.get_vision_tower().num_patches_per_side

    def encode(images):
        assert images.shape[0] == 1 + npw * nph, "anyres picked another view grid than the LLaVA rule gives"
        r, c = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        feats = torch.zeros(images.shape[0], side * side, d)
        feats[0, :, 0] = BASE
        for k in range(npw * nph):
            vr, vc = divmod(k, npw)
            feats[1 + k, :, 1] = torch.from_numpy((vr * side + r).reshape(-1)).float()
            feats[1 + k, :, 2] = torch.from_numpy((vc * side + c).reshape(-1)).float()
        return feats

    return encode


def _pooled_coordinate(full_index: np.ndarray, side: int, pooled: int) -> np.ndarray:
    """Bilinear (align_corners=False) pooling of a linear coordinate: view-local sample at (i + .5) * s - .5."""
    view, i = np.divmod(full_index, pooled)
    return view * side + (i + 0.5) * (side / pooled) - 0.5


# (family, image (h, w), views (npw, nph), expected grid (h, w), unpad offset (rows, cols) into the merged grid)
LLAVA_CASES = [
    ("lavida-llada", (72, 72), (2, 2), (10, 10), (0, 0)),
    ("lavida-llada", (72, 60), (2, 2), (10, 8), (0, 1)),  # narrower: padding columns cropped (unpad_image)
    ("lavida-dream", (36, 100), (3, 1), (5, 13), (0, 1)),  # wide: 3x1 views, padding columns cropped
    ("llada-v", (48, 24), (1, 2), (12, 6), (0, 0)),  # no pooling, within 4 views: no shrink
]


@pytest.mark.parametrize("family,hw,views,grid,offset", LLAVA_CASES)
def test_llava_grid_recovers_patch_coordinates_exactly(adapters, monkeypatch, family, hw, views, grid, offset):
    adapter = _adapter(adapters, family)
    d = adapter.lm().image_newline.shape[0]
    monkeypatch.setattr(adapter.model, "encode_images", _coordinate_features(adapter, views, d))
    with torch.no_grad():
        adapter.lm().image_newline.fill_(NEWLINE)
    image = np.full(hw + (3,), 128, dtype=np.uint8)
    prep = adapter.prepare(image)
    span = prep.span
    assert span.grid == grid and span.newline_per_row
    hidden = _hooked_hidden(adapter, prep)
    cam = tokens_to_grid(hidden[span.start : span.end].T, span)  # (D, h, w)

    side = adapter.model.get_vision_tower().num_patches_per_side
    pooled = int(np.sqrt(span.base_tokens))
    rows = np.arange(grid[0]) + offset[0]
    cols = np.arange(grid[1]) + offset[1]
    if adapter.pools():
        rows, cols = _pooled_coordinate(rows, side, pooled), _pooled_coordinate(cols, side, pooled)
    np.testing.assert_allclose(cam[1], np.broadcast_to(rows[:, None], grid), atol=1e-4)
    np.testing.assert_allclose(cam[2], np.broadcast_to(cols[None, :], grid), atol=1e-4)
    assert not np.any(np.isclose(cam[0], BASE)), "a base-view token leaked into the grid"
    assert not np.any(cam == NEWLINE), "a newline token leaked into the grid"
    # The span really holds base view, then rows each ended by a newline token.
    np.testing.assert_allclose(hidden[span.start : span.start + span.base_tokens, 0], BASE, atol=1e-5)
    row_ends = span.start + span.base_tokens + np.arange(1, grid[0] + 1) * (grid[1] + 1) - 1
    assert np.all(hidden[row_ends] == NEWLINE)

    sheared = tokens_to_grid(hidden[span.start : span.end].T, span, official_shear=True)
    assert np.any(sheared == NEWLINE) and not np.allclose(sheared[1:3], cam[1:3])


def test_llada_v_anyres_max_shrinks_large_grids(adapters, monkeypatch):
    adapter = _adapter(adapters, "llada-v")
    d = adapter.lm().image_newline.shape[0]
    monkeypatch.setattr(adapter.model, "encode_images", _coordinate_features(adapter, (3, 3), d))
    with torch.no_grad():
        adapter.lm().image_newline.fill_(NEWLINE)
    prep = adapter.prepare(np.full((72, 72, 3), 128, dtype=np.uint8))
    span = prep.span
    # 3x3 views of 6x6 = 18x18 > 4 views' worth: times = sqrt(324 / 144) = 1.5 -> 12x12, no pooling otherwise.
    assert span.grid == (12, 12) and span.pooling == "anyres_max_4-bilinear" and span.base_tokens == 36
    cam = tokens_to_grid(_hooked_hidden(adapter, prep)[span.start : span.end].T, span)
    expected = (np.arange(12) + 0.5) * 1.5 - 0.5  # bilinear shrink of the 18-long coordinate axis
    np.testing.assert_allclose(cam[1], np.broadcast_to(expected[:, None], (12, 12)), atol=1e-4)
    np.testing.assert_allclose(cam[2], np.broadcast_to(expected[None, :], (12, 12)), atol=1e-4)
    assert not np.any(cam == NEWLINE)


def test_mmada_grid_is_the_code_raster_between_soi_and_eoi(adapters):
    adapter = _adapter(adapters, "mmada")
    h, w = adapter.grid
    codes = (3 * np.arange(h)[:, None] + 5 * np.arange(w)[None, :]) % len(MMADA_CODEBOOK)  # shear-sensitive
    image = np.repeat(np.repeat(MMADA_CODEBOOK[codes].astype(np.uint8), 16, axis=0), 16, axis=1)
    wte = adapter.model.model.transformer.wte
    with torch.no_grad():
        wte.weight.zero_()
        wte.weight[adapter.text_vocab_size :, 0] = torch.arange(len(MMADA_CODEBOOK)).float()
        for i, t in enumerate(("<|mmu|>", "<|soi|>", "<|eoi|>")):
            wte.weight[adapter.special_ids[t], 0] = -(i + 1.0)
    prep = adapter.prepare(image)
    span = prep.span
    ids = prep.prompt_ids[0]
    assert int(ids[span.start - 1]) == adapter.special_ids["<|soi|>"]
    assert int(ids[span.end]) == adapter.special_ids["<|eoi|>"]
    cam = tokens_to_grid(_hooked_hidden(adapter, prep)[span.start : span.end, 0], span)
    np.testing.assert_array_equal(cam, codes)


def test_diffusion_gemma_grid_follows_the_pooled_patch_positions(adapters):
    adapter = _adapter(adapters, "diffusion-gemma")
    enc = adapter.encoder()
    k = adapter.model.config.vision_config.pooling_kernel_size

    def coords(_m, _args, kwargs, output):  # vision encoder output := (row, col, 1) of every patch
        pos = kwargs["pixel_position_ids"].float()
        feats = torch.zeros_like(output.last_hidden_state)
        feats[..., 0], feats[..., 1], feats[..., 2] = pos[..., 1], pos[..., 0], 1.0
        output.last_hidden_state = feats
        return output

    def passthrough(_m, args, kwargs, _output):  # undo the pooler's sqrt(hidden) scale, skip the projection
        feats = args[0] if args else kwargs["inputs_embeds"]
        return feats / enc.vision_tower.config.hidden_size**0.5

    handles = [enc.vision_tower.encoder.register_forward_hook(coords, with_kwargs=True),
               enc.embed_vision.register_forward_hook(passthrough, with_kwargs=True)]
    try:
        prep = adapter.prepare(np.zeros((40, 56, 3), dtype=np.uint8))
        span = prep.span
        hidden = _hooked_hidden(adapter, prep)
    finally:
        for h in handles:
            h.remove()
    gh, gw = span.grid
    assert (gh, gw) == (6, 6) and span.pooling == f"avg-{k}x{k}"
    cam = tokens_to_grid(hidden[span.start : span.end].T, span)
    np.testing.assert_allclose(cam[0], np.broadcast_to((k * np.arange(gh) + (k - 1) / 2)[:, None], (gh, gw)), atol=1e-4)
    np.testing.assert_allclose(cam[1], np.broadcast_to((k * np.arange(gw) + (k - 1) / 2)[None, :], (gh, gw)), atol=1e-4)
    cfg = adapter.model.config
    assert int(prep.prompt_ids[0, span.start - 1]) == cfg.boi_token_id and int(prep.prompt_ids[0, span.end]) == cfg.eoi_token_id


# ----------------------------------------------------------------------------------------- loops and modes
def test_lavida_prepare_for_backward_switches_off_activation_checkpointing(adapters):
    adapter = build_replica("lavida-llada", seed=1)
    assert adapter.lm().activation_checkpointing_strategy == "whole_layer"  # as LaViDa's constructor leaves it
    adapter.prepare_for_backward()
    assert adapter.lm().activation_checkpointing_strategy is None
    prep = adapter.prepare(np.full((36, 36, 3), 90, dtype=np.uint8))
    x = torch.full((1, adapter.gen_length), adapter.mask_id)
    with BlockRecorder(adapter.blocks(), [1], adapter.block_output) as rec:
        adapter.full_logits(prep, x).sum().backward()
        assert len(rec.take()) == 1  # one forward, no recompute in backward


def test_lavida_prefix_cache_equals_prefix_dlm_full_pass(adapters):
    adapter = _adapter(adapters, "lavida-llada")
    prep = adapter.prepare(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    x = torch.full((1, adapter.gen_length), adapter.mask_id)
    x[0, :3] = torch.tensor([10, 11, 12])
    with torch.no_grad():
        cache, _ = adapter.prefix_pass(prep)
        step1 = adapter.answer_logits(prep, cache, x)
        step2 = adapter.answer_logits(prep, cache, x)  # the cache is left as found
        full = adapter.full_logits(prep, x, prefix_dlm_mask=True)[:, prep.prompt_len :]
        plain = adapter.full_logits(prep, x)[:, prep.prompt_len :]
    torch.testing.assert_close(step1, step2)
    torch.testing.assert_close(step1, full)
    assert not torch.allclose(step1, plain, atol=1e-6)  # without the mask the prompt sees the response


def test_dream_logits_are_shifted_by_one(adapters):
    adapter = _adapter(adapters, "lavida-dream")
    assert adapter.logit_shift == 1
    prep = adapter.prepare(np.full((36, 36, 3), 30, dtype=np.uint8))
    x = torch.full((1, adapter.gen_length), adapter.mask_id)
    p = prep.prompt_len
    with torch.no_grad():
        raw = adapter.full_logits(prep, x)
        resp = adapter.response_logits_full(prep, x)
        cache, prompt_logits = adapter.prefix_pass(prep)
        cached = adapter.answer_logits(prep, cache, x)
        masked = adapter.full_logits(prep, x, prefix_dlm_mask=True)
    torch.testing.assert_close(resp, raw[:, p - 1 : p - 1 + adapter.gen_length])
    torch.testing.assert_close(cached[:, 0], prompt_logits[:, -1])  # row 0: the prefill's last position
    torch.testing.assert_close(cached[:, 1:], masked[:, p : p + adapter.gen_length - 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llada-v", "mmada"])
def test_full_recompute_families_refuse_prefix_cache(adapters, family):
    adapter = _adapter(adapters, family)
    prep = adapter.prepare(np.zeros((48, 48, 3), dtype=np.uint8))
    with pytest.raises(DcamError, match="--mode full"):
        adapter.logits_fn(prep, "prefix-cache")


# ----------------------------------------------------------------------------------------- end to end
def _scene():
    from stages.synth.render import render_scene

    scene = render_scene(np.random.default_rng(3), size=96, min_objects=2, max_objects=2, clutter_prob=0.0)
    mask = np.zeros(scene.image.shape[:2], dtype=np.int64)
    for i, obj in enumerate(scene.objects):
        mask[obj.mask] = i + 1
    return np.asarray(scene.image), mask


#: Every registered replica in every mode its adapter declares (the declared modes themselves are checked
#: against each upstream in test_family_registry.py).
E2E = [(f, m) for f in replica_families() for m in FAMILIES[f].adapter_class().modes]


@pytest.mark.parametrize("family,mode", E2E)
def test_capture_explain_score_end_to_end(adapters, family, mode):
    from stages.score.metrics import score_map

    adapter = build_replica(family, seed=0)
    image, mask = _scene()
    steps = 4
    config = CaptureConfig(layers=(1,), steps=steps, block_length=8, mode=mode, record="all")
    cap = capture_sample(adapter, image, config, sample_id="s0")
    span = adapter.prepare(image).span
    n = span.grid_h * span.grid_w
    la = cap.layer_arrays[1]
    t = len(cap.attrs["targets"])
    assert la["acts"].shape == ((1 if mode == "prefix-cache" else steps), n, la["acts"].shape[2])
    assert la["alpha"].shape == (steps, t, la["acts"].shape[2]) and la["gxa"].shape == (steps, t, n)
    for key in ("acts", "alpha", "alpha_pos", "gxa"):
        assert np.all(np.isfinite(la[key])), key
    assert np.abs(la["alpha"]).max() > 0 and np.abs(la["gxa"]).max() > 0  # gradients reach the image span
    assert cap.attrs["replay_max_abs_diff"] < 1e-4
    assert cap.arrays["step_feasible"].all() == (mode == "full")
    assert cap.attrs["span"] == span.model_dump()

    r = int(np.argmax(np.abs(la["alpha"]).sum(axis=(1, 2))))
    cam = la["acts"][cap.arrays["act_row"][r]].astype(np.float32) @ la["alpha"][r, -1]  # the whole response
    cam = cam.reshape(span.grid)
    assert np.all(np.isfinite(cam)) and np.ptp(cam) > 0
    cam = (cam - cam.min()) / np.ptp(cam)
    scores = score_map(cam, mask)
    assert 0.0 <= scores["obj_iou"] <= 1.0 and np.isfinite(scores["contrast"])


# ----------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("family", replica_families())
def test_loading_a_checkpoint_gives_one_line(tmp_path, family):
    from stages.capture.registry import load_adapter

    assert FAMILIES[family].needs and FAMILIES[family].summary
    with pytest.raises(DcamError, match="not found") as missing:
        load_adapter(f"{family}:{tmp_path / 'nope'}")
    with pytest.raises(DcamError) as unloadable:
        load_adapter(f"{family}:{tmp_path}")
    for exc in (missing, unloadable):
        assert "\n" not in str(exc.value)


def test_diffusion_gemma_patchify_matches_the_official_image_processor():
    from PIL import Image
    from transformers.models.gemma4.image_processing_pil_gemma4 import _SUPPORTED_SOFT_TOKENS, Gemma4ImageProcessorPil

    from stages.capture.families.diffusion_gemma import patchify

    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    proc = Gemma4ImageProcessorPil(patch_size=4, pooling_kernel_size=2, max_soft_tokens=min(_SUPPORTED_SOFT_TOKENS))
    out = proc(images=Image.fromarray(image), return_tensors="pt")
    valid = (out["image_position_ids"][0] >= 0).all(-1)
    pixel_values, position_ids = patchify(image, 64, 4)
    assert int(valid.sum()) == 256  # the processor kept 64x64 (16x16 patches)
    torch.testing.assert_close(position_ids[0], out["image_position_ids"][0][valid])
    torch.testing.assert_close(pixel_values[0], out["pixel_values"][0][valid].float())


def test_hf_codec_groups_sub_tokens_into_words():
    from stages.capture.families import HFCodec

    class Tok:  # byte-level BPE pieces: "Ġ" starts a word
        pieces = ["<|eot_id|>", "Ġa", "Ġred", "Ġcir", "cle", "Ġ,", "Ġsq", "u", "are"]
        all_special_ids = [0]

        def convert_ids_to_tokens(self, i):
            return self.pieces[i]

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.pieces[i] for i in ids if i != 0).replace("Ġ", " ")

    codec = HFCodec(Tok())
    assert codec.word_groups([1, 2, 3, 4, 5, 6, 7, 8, 0, 0]) == [
        ("a", [0]), ("red", [1]), ("circle", [2, 3]), (",", [4]), ("square", [5, 6, 7])
    ]


# ----------------------------------------------------------------------------------------- LLaVA-NeXT geometry
def test_pinpoints_parse_from_the_grid_string_and_the_list():
    from stages.capture.families.llava_next import parse_pinpoints

    assert parse_pinpoints("(1x1),...,(2x2)", 10) == [(10, 10), (10, 20), (20, 10), (20, 20)]
    assert parse_pinpoints("[[384, 768], [768, 384]]", 384) == [(384, 768), (768, 384)]


@pytest.mark.parametrize("size,best", [
    ((100, 50), (100, 100)),  # all three keep 100x50 pixels; (100, 100) wastes the fewest
    ((300, 150), (200, 100)),  # (200, 100) keeps 200x100, the others 100x50
])
def test_best_resolution_keeps_the_most_pixels_then_wastes_the_fewest(size, best):
    from stages.capture.families.llava_next import select_best_resolution

    assert select_best_resolution(size, [(100, 100), (200, 100), (100, 200)]) == best


def test_unpad_crops_the_padding_rows_of_a_wide_image():
    from stages.capture.families.llava_next import unpad_grid

    grid = torch.arange(16.0).reshape(1, 4, 4)
    # a 4x2 (w x h) image padded to a square: one row of padding above and below
    torch.testing.assert_close(unpad_grid(grid, (4, 2)), grid[:, 1:3, :])
    torch.testing.assert_close(unpad_grid(grid, (2, 4)), grid[:, :, 1:3])
