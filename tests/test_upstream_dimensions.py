"""Replicas at the real checkpoints' dimensions, on the ``meta`` device (no memory, no weights): grid
arithmetic, span positions and hook paths at full size (issue 12).

The dimensions are the upstream configs' (written here): SigLIP so400m-patch14-384 (1152 wide, 27 layers,
384 px views of 27x27 patches), LLaDA-8B (4096 wide, 32 blocks, 32 heads, MLP 12288, vocabulary 126464),
MMaDA's 512-px MAGVIT-v2 grid (1024 codes). The expected layouts follow LLaVA-NeXT's anyres code as LaViDa
and LLaDA-V run it (``upstream-audit.md``): LaViDa pools each 27x27 view to 14x14 and keeps the rows the
padding crop leaves; LLaDA-V does not pool and shrinks a grid above 1.1x four views' worth to
``int(side // times)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.capture.families import WordCodec
from stages.capture.hooks import BlockRecorder
from stages.capture.replicas import (
    LavidaLladaReplica,
    MMadaReplica,
    MMadaSpec,
    OlmoLladaConfig,
    VisionSpec,
    llada_v_replica,
    replica_tokenizer,
)

SIGLIP = VisionSpec(view_size=384, patch_size=14, hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304)
LLADA_VOCAB = 126464
LLADA_8B = OlmoLladaConfig(vocab_size=LLADA_VOCAB, d_model=4096, n_heads=32, n_layers=32, mlp_hidden_size=12288)


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _hook_path(model: torch.nn.Module, block: torch.nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is block)


@pytest.fixture(scope="module")
def lavida():
    from stages.capture.families.lavida import LavidaLladaAdapter

    tok = replica_tokenizer()
    with torch.device("meta"):
        model = LavidaLladaReplica(LLADA_VOCAB, SIGLIP, LLADA_8B).eval()
    return LavidaLladaAdapter(model, WordCodec(tok), mask_id=126336, eos_id=126081, gen_length=64)


@pytest.mark.parametrize("hw,grid,tokens", [((768, 768), (28, 28), 1008), ((480, 640), (22, 28), 834)])
def test_lavida_llada_layout_at_full_size(lavida, hw, grid, tokens):
    span = lavida.prepare(_image(*hw)).span
    assert (span.grid_h, span.grid_w) == grid and span.end - span.start == tokens
    assert span.base_tokens == 14 * 14 and span.newline_per_row  # the pooled base view, then a newline per row
    assert span.start == 1  # after <bos>, where the image placeholder stood


def test_lavida_llada_hooks_what_diffusion_cam_hooks_at_full_size(lavida):
    blocks = lavida.blocks()
    assert len(blocks) == 32 and _hook_path(lavida.model, blocks[15]) == "model.transformer.blocks.15"
    prep = lavida.prepare(_image(768, 768))
    with torch.no_grad(), BlockRecorder(blocks, [15], lavida.block_output) as rec:
        cache, logits = lavida.prefix_pass(prep)
        (record,) = rec.take()
    assert record.hidden.shape == (1, prep.prompt_len, 4096) and logits.shape == (1, prep.prompt_len, LLADA_VOCAB)
    x = torch.full((1, 64), 126336, device="meta")
    assert lavida.answer_logits(prep, cache, x).shape == (1, 64, LLADA_VOCAB)


@pytest.mark.parametrize("hw,grid,tokens", [((768, 768), (54, 54), 729 + 54 * 55),
                                            ((768, 1152), (44, 66), 729 + 44 * 67)])
def test_llada_v_layout_at_full_size(hw, grid, tokens):
    from stages.capture.families.llada_v import LladaVAdapter

    tok = replica_tokenizer()
    with torch.device("meta"):
        model = llada_v_replica(LLADA_VOCAB, SIGLIP, dict(d=4096, layers=32, heads=32)).eval()
    adapter = LladaVAdapter(model, WordCodec(tok), mask_id=126336, eos_id=126081, gen_length=64)
    span = adapter.prepare(_image(*hw)).span
    assert (span.grid_h, span.grid_w) == grid and span.end - span.start == tokens and span.base_tokens == 729
    assert len(adapter.blocks()) == 32 and _hook_path(model, adapter.blocks()[15]) == "model.layers.15"


def test_mmada_layout_at_full_size():
    from stages.capture.families.mmada import MMadaAdapter

    tok = replica_tokenizer()
    with torch.device("meta"):
        model = MMadaReplica(len(tok), MMadaSpec(resolution=512, patch=16)).eval()
    adapter = MMadaAdapter(model, WordCodec(tok), text_vocab_size=len(tok), mask_id=tok.mask_id, eos_id=tok.eos_id,
                           gen_length=64)
    span = adapter.prepare(_image(512, 512)).span
    assert model.config.num_vq_tokens == 1024 and adapter.grid == (32, 32)
    assert (span.start, span.end) == (2, 1026)  # strictly between <|soi|> and <|eoi|>
    assert _hook_path(model, adapter.blocks()[1]) == "model.transformer.blocks.1"
