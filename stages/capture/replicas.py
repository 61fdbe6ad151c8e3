"""Tiny random-initialised replicas of the real dMLLM families, built from configs in code.

Each replica keeps the real model's module names on the path the adapter hooks, its multimodal sequence
layout and its loop semantics, at a size that runs on two CPU cores in a fraction of a second:

- ``lavida-llada``: hooks ``model.get_model().transformer.blocks[i]``. OLMo-style LLaDA blocks returning
  ``(x, cache)``, bidirectional; SigLIP (select layer -2) -> mlp2x_gelu; anyres (base + 2x2 views), 2x2
  bilinear pooling of every view, ``spatial_unpad`` newline per grid row; Prefix-DLM cache; activation
  checkpointing on after construction, as LaViDa's constructor leaves it.
- ``lavida-dream``: hooks ``model.get_model().layers[i]``. Qwen2 (Dream) trunk, bidirectional, logits
  shifted by one, ``lm_head``; LaViDa's vision layout.
- ``llada-v``: hooks ``model.get_model().layers[i]``. Llama-style LLaDA, bidirectional, ``lm_head``;
  ``anyres_max_4`` (views merged, shrunk when larger than 4 views' worth), no pooling, newline per row;
  full recompute.
- ``mmada``: hooks ``model.model.transformer.blocks[i]``. No vision encoder: discrete image ids offset by
  the text vocabulary, ``<|mmu|> <|soi|> ids <|eoi|> text``; full recompute.
- ``diffusion-gemma``: hooks ``model.model.encoder.language_model.layers[i]``. transformers' own classes
  with a tiny config (MoE fields set, vision-bidirectional encoder).

What is scaled down: widths, depths, vocabularies, view sizes (LaViDa 384 px / 27x27 patches -> 36 px /
9x9 patches, odd like 27 so the ``ceil`` of bilinear pooling is exercised; LLaDA-V views 24 px / 6x6;
MMaDA 512 px / 32x32 codes -> 96 px / 6x6 codes of 16x16 px patches; the MAGVIT-v2 quantiser is a fixed
8-colour codebook). Weights are random: replicas prove layouts, hook paths, loops and gradient flow,
never attribution quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stages.toy.tokenizer import DEFAULT_VOCAB, ToyTokenizer

#: Vocabulary of the replicas: the toy's special tokens and caption words (so synthetic scenes' captions
#: are representable), plus MMaDA's and DiffusionGemma's extra specials.
MMADA_SPECIALS = ("<|mmu|>", "<|soi|>", "<|eoi|>")
GEMMA_SPECIALS = ("<boi>", "<eoi>", "<image_soft>")
REPLICA_VOCAB = DEFAULT_VOCAB + MMADA_SPECIALS + GEMMA_SPECIALS

#: MMaDA replica's codebook: nearest of these colours (RGB) for each 16x16 patch's mean colour.
MMADA_CODEBOOK = np.array(
    [[0, 0, 0], [255, 255, 255], [128, 128, 128], [220, 40, 40], [40, 180, 60], [40, 80, 220], [240, 220, 40],
     [160, 60, 200]],
    dtype=np.float32,
)


def replica_tokenizer() -> ToyTokenizer:
    """The word-level tokenizer every replica uses (the toy tokenizer over :data:`REPLICA_VOCAB`)."""
    return ToyTokenizer(REPLICA_VOCAB)


# ================================================================================ OLMo-style LLaDA
@dataclass
class OlmoLladaConfig:
    """The fields of LLaDA's OLMo-style ``ModelConfig`` that the replica uses."""

    vocab_size: int
    d_model: int = 48
    n_heads: int = 4
    n_layers: int = 3
    mlp_hidden_size: int = 96
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5


class LLaDAOutput(NamedTuple):
    logits: torch.Tensor
    attn_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LLaDALlamaBlock(nn.Module):
    """LLaDA's Llama-like block: ``x + Attn(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``.

    As in LLaDA's ``modeling_llada.py``: attention is never causal, ``layer_past`` keys/values are
    concatenated in front (new tensors, the cache is not mutated), the cache holds keys *before* the
    rotary embedding, queries take the last positions of the key range, and the forward returns
    ``(x, cache)``.
    """

    def __init__(self, layer_id: int, config: OlmoLladaConfig):
        super().__init__()
        d, h = config.d_model, config.mlp_hidden_size
        self.layer_id = layer_id
        self.config = config
        self.attn_norm = nn.RMSNorm(d, eps=config.rms_norm_eps)
        self.ff_norm = nn.RMSNorm(d, eps=config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.ff_out = nn.Linear(h, d, bias=False)
        self.act = nn.SiLU()
        head = d // config.n_heads
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, head, 2, dtype=torch.float) / head))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _rope(self, t: torch.Tensor, start: int) -> torch.Tensor:
        pos = torch.arange(start, start + t.shape[-2], device=t.device, dtype=torch.float)
        freqs = torch.outer(pos, self.inv_freq.to(t.device))
        emb = torch.cat((freqs, freqs), dim=-1)
        return (t * emb.cos() + _rotate_half(t) * emb.sin()).to(t.dtype)

    def attention(self, q, k, v, layer_past=None, use_cache=False):
        b, t, c = q.shape
        nh = self.config.n_heads
        q = q.view(b, t, nh, c // nh).transpose(1, 2)
        k = k.view(b, t, nh, c // nh).transpose(1, 2)
        v = v.view(b, t, nh, c // nh).transpose(1, 2)
        if layer_past is not None:
            k = torch.cat((layer_past[0], k), dim=-2)
            v = torch.cat((layer_past[1], v), dim=-2)
        present = (k, v) if use_cache else None
        key_len = k.shape[-2]
        q = self._rope(q, key_len - t)
        k = self._rope(k, 0)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False)
        return self.attn_out(att.transpose(1, 2).reshape(b, t, c)), present

    def forward(self, x, attention_bias=None, layer_past=None, use_cache=False):
        xn = self.attn_norm(x)
        att, cache = self.attention(self.q_proj(xn), self.k_proj(xn), self.v_proj(xn), layer_past, use_cache)
        x = x + att
        xn = self.ff_norm(x)
        x = x + self.ff_out(self.act(self.ff_proj(xn)) * self.up_proj(xn))
        return x, cache


class LLaDAModel(nn.Module):
    """OLMo-style LLaDA trunk: ``transformer.{wte, blocks, ln_f, ff_out}``; forward returns logits.

    ``set_activation_checkpointing("whole_layer")`` recomputes every block in backward, as LaViDa's
    constructor switches on (there with deepspeed's checkpoint function).
    """

    def __init__(self, config: OlmoLladaConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.d_model),
                blocks=nn.ModuleList(LLaDALlamaBlock(i, config) for i in range(config.n_layers)),
                ln_f=nn.RMSNorm(config.d_model, eps=config.rms_norm_eps),
                ff_out=nn.Linear(config.d_model, config.vocab_size, bias=False),
            )
        )
        self.activation_checkpointing_strategy: str | None = None

    def set_activation_checkpointing(self, strategy: str | None) -> None:
        self.activation_checkpointing_strategy = strategy

    def forward(self, input_ids, input_embeddings=None, attention_bias=None, past_key_values=None, use_cache=False):
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings
        presents = [] if use_cache else None
        for i, block in enumerate(self.transformer.blocks):
            past = None if past_key_values is None else past_key_values[i]
            if self.activation_checkpointing_strategy == "whole_layer" and torch.is_grad_enabled():
                x, cache = checkpoint(block, x, attention_bias, past, use_cache, use_reentrant=False)
            else:
                x, cache = block(x, attention_bias=attention_bias, layer_past=past, use_cache=use_cache)
            if presents is not None:
                presents.append(cache)
        logits = self.transformer.ff_out(self.transformer.ln_f(x))
        return LLaDAOutput(logits=logits, attn_key_values=presents)


# ================================================================================ LLaVA vision side
@dataclass
class VisionSpec:
    """A LLaVA-NeXT vision side at replica scale."""

    view_size: int
    patch_size: int
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int | None = None
    select_layer: int = -2


class SigLipVisionTower(nn.Module):
    """LLaVA's ``SigLipVisionTower``: SigLIP patch features from ``select_layer`` (-2), no CLS token."""

    def __init__(self, spec: VisionSpec):
        from transformers import SiglipVisionConfig, SiglipVisionModel

        super().__init__()
        self.spec = spec
        self.vision_tower = SiglipVisionModel(
            SiglipVisionConfig(
                hidden_size=spec.hidden_size,
                intermediate_size=spec.intermediate_size or 2 * spec.hidden_size,
                num_hidden_layers=spec.num_layers,
                num_attention_heads=spec.num_heads,
                image_size=spec.view_size,
                patch_size=spec.patch_size,
                vision_use_head=False,
                attn_implementation="sdpa",
            )
        )

    @property
    def image_size(self) -> int:
        return self.spec.view_size

    @property
    def num_patches_per_side(self) -> int:
        return self.spec.view_size // self.spec.patch_size

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values=images, output_hidden_states=True)
        return out.hidden_states[self.spec.select_layer]


def _mlp2x_gelu(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class LlavaMetaReplica:
    """The two methods of LLaVA's ``LlavaMetaForCausalLM`` the adapters call, with the same semantics."""

    config: SimpleNamespace

    def get_vision_tower(self) -> SigLipVisionTower:
        return self.get_model().vision_tower

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(V, 3, S, S) -> projected patch features (V, n, d)."""
        return self.get_model().mm_projector(self.get_vision_tower()(images))

    def get_2dPool(self, image_feature: torch.Tensor, stride: int = 2) -> torch.Tensor:
        """LaViDa's 2-D pooling of every view; ``bilinear`` to ``ceil(side / stride)`` (27 -> 14)."""
        side = self.get_vision_tower().num_patches_per_side
        v, n, d = image_feature.shape
        x = image_feature.view(v, side, side, d).permute(0, 3, 1, 2)
        if self.config.mm_spatial_pool_mode != "bilinear":
            raise ValueError(f"replica supports mm_spatial_pool_mode 'bilinear', got {self.config.mm_spatial_pool_mode}")
        x = F.interpolate(x, size=[math.ceil(side / stride)] * 2, mode="bilinear")
        return x.permute(0, 2, 3, 1).reshape(v, -1, d)


def _llava_config(pinpoints, aspect: str) -> SimpleNamespace:
    """The LLaVA config fields the image layout reads."""
    return SimpleNamespace(
        image_grid_pinpoints=[list(p) for p in pinpoints],
        image_aspect_ratio=aspect,
        mm_patch_merge_type="spatial_unpad",
        mm_spatial_pool_mode="bilinear",
        mm_spatial_pool_stride=2,
    )


def _add_vision(module: nn.Module, spec: VisionSpec, d_model: int) -> None:
    module.vision_tower = SigLipVisionTower(spec)
    module.mm_projector = _mlp2x_gelu(spec.hidden_size, d_model)
    module.image_newline = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))


# ---------------------------------------------------------------- LaViDa-LLaDA
LAVIDA_VIEW = VisionSpec(view_size=36, patch_size=4)  # 9x9 patches per view, pooled to 5x5 (27x27 -> 14x14)


def lavida_pinpoints(view: int) -> list[tuple[int, int]]:
    """LaViDa's pinpoints {(384,768),(768,384),(768,768),(1152,384),(384,1152)} in units of the view size."""
    return [(view, 2 * view), (2 * view, view), (2 * view, 2 * view), (3 * view, view), (view, 3 * view)]


class LavidaLladaModel(LLaDAModel):
    """``LlavaLladaModel``: the LLaDA trunk plus ``vision_tower``, ``mm_projector``, ``image_newline``."""

    def __init__(self, config: OlmoLladaConfig, spec: VisionSpec):
        super().__init__(config)
        _add_vision(self, spec, config.d_model)


class LavidaLladaReplica(nn.Module, LlavaMetaReplica):
    """``LlavaLladaForMaskedDiffusion`` at replica scale (activation checkpointing on, as its constructor)."""

    def __init__(self, vocab_size: int, spec: VisionSpec = LAVIDA_VIEW, trunk: OlmoLladaConfig | None = None):
        super().__init__()
        self.model = LavidaLladaModel(trunk or OlmoLladaConfig(vocab_size=vocab_size), spec)
        self.config = _llava_config(lavida_pinpoints(spec.view_size), "anyres")
        self.model.set_activation_checkpointing("whole_layer")

    def get_model(self) -> LavidaLladaModel:
        return self.model


# ---------------------------------------------------------------- HF-style trunks (Dream, LLaDA-V)
def _hf_trunk(kind: str, vocab_size: int, d: int = 48, layers: int = 3, heads: int = 4):
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    cls_cfg, cls_model = (Qwen2Config, Qwen2Model) if kind == "qwen2" else (LlamaConfig, LlamaModel)
    cfg = cls_cfg(
        vocab_size=vocab_size, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        attn_implementation="sdpa",
    )
    cfg.is_causal = False  # transformers >= 5 then builds bidirectional masks (LLaDA / Dream attention)
    return cls_model, cfg


class _HFMultimodalReplica(nn.Module, LlavaMetaReplica):
    def get_model(self):
        return self.model


def _hf_llava_replica(kind: str, vocab_size: int, spec: VisionSpec, config: SimpleNamespace,
                      trunk: dict | None = None) -> _HFMultimodalReplica:
    cls_model, cfg = _hf_trunk(kind, vocab_size, **(trunk or {}))
    replica = _HFMultimodalReplica()
    replica.model = cls_model(cfg)
    _add_vision(replica.model, spec, cfg.hidden_size)
    replica.lm_head = nn.Linear(cfg.hidden_size, vocab_size, bias=False)
    replica.config = config
    return replica


def lavida_dream_replica(vocab_size: int, spec: VisionSpec = LAVIDA_VIEW) -> nn.Module:
    """``LlavaDreamForMaskedDiffusion`` at replica scale: Qwen2 ``model.layers``, ``lm_head``, LaViDa vision."""
    config = _llava_config(lavida_pinpoints(spec.view_size), "anyres")
    return _hf_llava_replica("qwen2", vocab_size, spec, config)


LLADA_V_VIEW = VisionSpec(view_size=24, patch_size=4)  # 6x6 patches per view, no pooling (27x27 at 384 px)


def llada_v_pinpoints(view: int, max_side: int = 6) -> list[tuple[int, int]]:
    """LLaDA-V's ``(1x1),...,(6x6)`` pinpoints in units of the view size."""
    return [(i * view, j * view) for i in range(1, max_side + 1) for j in range(1, max_side + 1)]


def llada_v_replica(vocab_size: int, spec: VisionSpec = LLADA_V_VIEW, trunk: dict | None = None) -> nn.Module:
    """``LlavaLLaDAModelLM`` at replica scale: Llama-style ``model.layers``, ``lm_head``, anyres_max_4.

    ``trunk``: the Llama trunk's ``d``, ``layers``, ``heads`` (default 48, 3, 4).
    """
    config = _llava_config(llada_v_pinpoints(spec.view_size), "anyres_max_4")
    return _hf_llava_replica("llama", vocab_size, spec, config, trunk)


# ---------------------------------------------------------------- MMaDA
@dataclass
class MMadaSpec:
    """MMaDA's discrete image side at replica scale: ``resolution`` px, one code per ``patch`` px."""

    resolution: int = 96
    patch: int = 16
    codebook: np.ndarray = field(default_factory=lambda: MMADA_CODEBOOK.copy())

    @property
    def side(self) -> int:
        return self.resolution // self.patch


class ColourQuantizer:
    """Stand-in for MAGVIT-v2's ``get_code``: each patch -> index of the nearest codebook colour."""

    def __init__(self, spec: MMadaSpec):
        self.spec = spec

    def get_code(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (side * side,) int64 codes, raster order."""
        from PIL import Image

        r, p = self.spec.resolution, self.spec.patch
        img = np.asarray(Image.fromarray(np.asarray(image)).resize((r, r), Image.BILINEAR), dtype=np.float32)
        means = img.reshape(r // p, p, r // p, p, 3).mean(axis=(1, 3)).reshape(-1, 3)
        dist = ((means[:, None, :] - self.spec.codebook[None]) ** 2).sum(-1)
        return dist.argmin(-1).astype(np.int64)


class MMadaReplica(nn.Module):
    """``MMadaModelLM`` at replica scale: ``model`` is the OLMo-style LLaDA over text + image-code vocab."""

    def __init__(self, text_vocab_size: int, spec: MMadaSpec | None = None):
        super().__init__()
        self.spec = spec or MMadaSpec()
        self.text_vocab_size = text_vocab_size
        self.model = LLaDAModel(OlmoLladaConfig(vocab_size=text_vocab_size + len(self.spec.codebook)))
        self.vq_model = ColourQuantizer(self.spec)
        self.config = SimpleNamespace(num_vq_tokens=self.spec.side**2)  # as MMaDA's config states its grid

    def forward(self, input_ids: torch.Tensor) -> LLaDAOutput:
        return self.model(input_ids)


# ---------------------------------------------------------------- DiffusionGemma
def diffusion_gemma_replica(tokenizer: ToyTokenizer, canvas_length: int = 8):
    """transformers' ``DiffusionGemmaForBlockDiffusion`` with a tiny config (MoE fields are required)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, Gemma4VisionConfig
    from transformers.models.diffusion_gemma.configuration_diffusion_gemma import DiffusionGemmaTextConfig

    ids = {t: i for i, t in enumerate(tokenizer.vocab)}
    text = DiffusionGemmaTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=64,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        num_experts=2, top_k_experts=1, moe_intermediate_size=32, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
        use_bidirectional_attention="vision", attn_implementation="sdpa",
    )
    vision = Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, patch_size=4, pooling_kernel_size=2, position_embedding_size=64,
    )
    config = DiffusionGemmaConfig(
        text_config=text, vision_config=vision, boi_token_id=ids["<boi>"], eoi_token_id=ids["<eoi>"],
        image_token_id=ids["<image_soft>"], canvas_length=canvas_length,
    )
    return DiffusionGemmaForBlockDiffusion(config).eval()


# ================================================================================ adapters on replicas
def replica_text(gen_length: int):
    """The text side every replica adapter shares: (tokenizer, codec, adapter keyword arguments).

    The keyword arguments are the mask and end ids of :func:`replica_tokenizer`, ``gen_length``, and the
    specials other than EOS as ``forbid_ids``.
    """
    from stages.capture.families import WordCodec

    tok = replica_tokenizer()
    codec = WordCodec(tok)
    forbid = tuple(i for i in sorted(codec.special) if i != tok.eos_id)
    return tok, codec, dict(mask_id=tok.mask_id, eos_id=tok.eos_id, gen_length=gen_length, forbid_ids=forbid)


def lavida_llada_replica_adapter(gen_length: int):
    """:class:`~stages.capture.families.lavida.LavidaLladaAdapter` around :class:`LavidaLladaReplica`."""
    from stages.capture.families.lavida import LavidaLladaAdapter

    tok, codec, common = replica_text(gen_length)
    return LavidaLladaAdapter(LavidaLladaReplica(len(tok)).eval(), codec, **common)


def lavida_dream_replica_adapter(gen_length: int):
    """:class:`~stages.capture.families.lavida.LavidaDreamAdapter` around :func:`lavida_dream_replica`."""
    from stages.capture.families.lavida import LavidaDreamAdapter

    tok, codec, common = replica_text(gen_length)
    return LavidaDreamAdapter(lavida_dream_replica(len(tok)).eval(), codec, **common)


def llada_v_replica_adapter(gen_length: int):
    """:class:`~stages.capture.families.llada_v.LladaVAdapter` around :func:`llada_v_replica`."""
    from stages.capture.families.llada_v import LladaVAdapter

    tok, codec, common = replica_text(gen_length)
    return LladaVAdapter(llada_v_replica(len(tok)).eval(), codec, **common)


def mmada_replica_adapter(gen_length: int):
    """:class:`~stages.capture.families.mmada.MMadaAdapter` around :class:`MMadaReplica`."""
    from stages.capture.families.mmada import MMadaAdapter

    tok, codec, common = replica_text(gen_length)
    return MMadaAdapter(MMadaReplica(len(tok)).eval(), codec, text_vocab_size=len(tok), **common)


def diffusion_gemma_replica_adapter(gen_length: int):
    """:class:`~stages.capture.families.diffusion_gemma.DiffusionGemmaAdapter` around
    :func:`diffusion_gemma_replica` (``gen_length`` is its canvas length)."""
    from stages.capture.families.diffusion_gemma import DiffusionGemmaAdapter

    tok, codec, common = replica_text(gen_length)
    return DiffusionGemmaAdapter(diffusion_gemma_replica(tok, canvas_length=gen_length), codec, **common)


def build_replica(family: str, seed: int = 0, *, gen_length: int = 8):
    """The family's adapter around a freshly initialised tiny replica (deterministic in ``seed``).

    Parameters
    ----------
    family : str
        A registered family with a replica (:func:`stages.capture.registry.replica_families`).
    seed : int
    gen_length : int
        Response positions (DiffusionGemma: its canvas length).

    Raises
    ------
    ValueError
        If the family is not registered or has no replica.
    """
    from stages.capture.registry import FAMILIES, replica_families, resolve

    entry = FAMILIES.get(family)
    if entry is None or entry.replica is None:
        raise ValueError(f"family: no replica of {family!r}; known: {', '.join(replica_families())}")
    torch.manual_seed(seed)
    return entry.checked(resolve(entry.replica)(gen_length))
