"""LaViDa (jacklishufan/LaViDa): LLaVA-NeXT anyres vision + LLaDA-8B or Dream-7B masked-diffusion trunk.

The image side is LLaVA-NeXT's (:mod:`stages.capture.families.llava_next`) with LaViDa's choices: base +
anyres views over LaViDa's pinpoints, and every view, base included, 2-D pooled (``ALWASY_DO_2DPOOL``, on
unless the environment sets ``NOT_ALWASY_DO_2DPOOL``): bilinear to ``ceil(side / 2)`` (27x27 -> 14x14).

Loops: LLaDA's ``generate.py`` and Dream's ``generation_utils.py``, both with ``prefix_lm=True`` (the
Prefix-DLM cache, this family's default mode: the prompt with the image is encoded once, every step runs
the response against the cached keys and values) or ``prefix_lm=False`` (full recompute, no mask).

Steps, transfer counts and remasking come from the shared sampler (``stages.dmllm.sampler``), which has
LaViDa's ``schedule='shift'`` and Dream's schedule and entropy remasking; the adapters declare them as their
defaults. One difference from the official loop, on purpose: LaViDa-Dream's prefix path fixes the first
response token to the argmax of the prefill's last logit before step 0; here that position is sampled like
the others from the same logit (the shifted row 0), so with greedy decoding it gets the same token but
possibly at a later step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from schemas.errors import DcamError
from stages.capture.adapter import Prepared
from stages.capture.families import (
    LLADA_EOS_ID,
    LLADA_MASK_ID,
    HFCodec,
    llada_stop_ids,
    reported_weights,
    require_llava,
    require_module,
    require_path,
    token_ids,
)
from stages.capture.families.llava_next import HFTrunkAdapter, LlavaFamilyAdapter, llava_prompt_builder


# ================================================================================ LaViDa-LLaDA
class LavidaLladaAdapter(LlavaFamilyAdapter):
    """LaViDa-LLaDA: OLMo-style LLaDA blocks ``model.get_model().transformer.blocks[i]`` returning ``(x, cache)``."""

    family = "lavida-llada"
    # LaViDa's predict.py, which the official Diffusion-CAM runs: schedule='shift' (shift 3), step_ratio 0.5,
    # temperature 0.1.
    default_schedule = "shift"
    default_temperature = 0.1
    step_ratio = 0.5

    def pools(self) -> bool:
        return not os.environ.get("NOT_ALWASY_DO_2DPOOL")  # LaViDa's (sic) switch, read the same way

    def blocks(self) -> Sequence[torch.nn.Module]:
        return self.lm().transformer.blocks

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm().transformer.wte(ids)

    def prepare_for_backward(self) -> None:
        # LaViDa's constructor calls set_activation_checkpointing('whole_layer'): blocks would be recomputed in
        # backward (hooks fire twice, deepspeed needed). Mirrors model.get_model().set_activation_checkpointing(None).
        self.model.eval()
        self.lm().set_activation_checkpointing(None)

    def full_logits(self, prep: Prepared, x: torch.Tensor, *, prefix_dlm_mask: bool = False) -> torch.Tensor:
        if prefix_dlm_mask:  # LaViDa's SDPA ignores masks; the prefix-cache passes are the Prefix-DLM mask
            cache, prompt_logits = self.prefix_pass(prep)
            return torch.cat([prompt_logits, self.answer_logits(prep, cache, x)], dim=1)
        embeds = torch.cat([prep.prompt_embeds, self.embed(x)], dim=1)
        return self.lm()(None, input_embeddings=embeds).logits

    def prefix_pass(self, prep: Prepared) -> tuple[Any, torch.Tensor]:
        out = self.lm()(None, input_embeddings=prep.prompt_embeds, use_cache=True)
        return out.attn_key_values, out.logits

    def answer_logits(self, prep: Prepared, cache: Any, x: torch.Tensor) -> torch.Tensor:
        # The cache is a list of (k, v); attention concatenates into new tensors, so nothing to crop.
        return self.lm()(None, input_embeddings=self.embed(x), past_key_values=cache).logits

    def lm_head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        t = self.lm().transformer
        return t.ff_out(t.ln_f(hidden))


# ================================================================================ LaViDa-Dream
@dataclass
class DreamPrefix:
    """Dream's prefix cache plus the prefill's last-position logits (the shifted row of response position 0)."""

    kv: Any
    last_logits: torch.Tensor


class LavidaDreamAdapter(HFTrunkAdapter):
    """LaViDa-Dream: Qwen2-derived Dream blocks ``model.get_model().layers[i]``; logits shifted by one.

    Dream is initialised from an autoregressive LM: the output at position i predicts token i + 1, so
    the logits of response position p are read at p - 1 (``logit_shift = 1``; the official loop's
    ``cat([logits[:, :1], logits[:, :-1]])``). In prefix-cache mode row 0 comes from the prefill's
    last position, which is why :meth:`prefix_pass` keeps it.
    """

    family = "lavida-dream"
    logit_shift = 1
    # llava_dream.py's generate: alg="entropy", temperature 0.2, top_p 0.95, one block (Dream's own schedule).
    default_remasking = "entropy"
    default_schedule = "dream"
    default_temperature = 0.2
    default_top_p = 0.95

    def prefix_pass(self, prep: Prepared) -> tuple[Any, torch.Tensor]:
        cache, logits = super().prefix_pass(prep)
        return DreamPrefix(cache, logits[:, -1:]), logits

    def trunk_answer_logits(self, prep: Prepared, cache: DreamPrefix, x: torch.Tensor) -> torch.Tensor:
        return super().trunk_answer_logits(prep, cache.kv, x)

    def answer_logits(self, prep: Prepared, cache: DreamPrefix, x: torch.Tensor) -> torch.Tensor:
        raw = self.trunk_answer_logits(prep, cache, x)
        return torch.cat([cache.last_logits, raw[:, :-1]], dim=1)


# ================================================================================ loading
#: Dream's mask id (``llava_dream.py``, ``configuration_dream.py``).
DREAM_MASK_ID = 151666

LAVIDA_NEEDS = (
    "LaViDa's own code: clone github.com/jacklishufan/LaViDa and 'pip install -e .' in an environment with its "
    "pins (transformers==4.50.3, torch 2.6, deepspeed 0.16.4); the SigLIP tower (google/siglip-so400m-patch14-384) "
    "as a local directory in LAVIDA_VISION_TOWER"
)


def load_lavida(family: str, path: str | None, device: str, *, gen_length: int = 64) -> LlavaFamilyAdapter:
    """Load a LaViDa checkpoint with LaViDa's own ``load_pretrained_model`` (model name selects LLaDA or Dream)."""
    root = require_path(family, path)
    require_llava(family, "LlavaLladaForMaskedDiffusion", LAVIDA_NEEDS)
    builder = require_module(family, "llava.model.builder", LAVIDA_NEEDS)
    tower = os.environ.get("LAVIDA_VISION_TOWER")
    if not tower or not os.path.isdir(tower):
        raise DcamError(f"--model {family}: set LAVIDA_VISION_TOWER to a local google/siglip-so400m-patch14-384 directory")
    kind = "llava_llada" if family == "lavida-llada" else "llava_dream"
    vision_kwargs = dict(mm_vision_tower=tower, mm_resampler_type=None, mm_projector_type="mlp2x_gelu",
                         mm_hidden_size=1152, use_mm_proj=True)
    with reported_weights(family):
        try:
            tokenizer, model, _, _ = builder.load_pretrained_model(
                str(root), None, kind, device_map=device, vision_kwargs=vision_kwargs, torch_dtype="bfloat16",
                attn_implementation="eager", use_safetensors=True,
            )
        except Exception as exc:
            raise DcamError(f"--model {family}: LaViDa's loader failed on {root} ({type(exc).__name__}: {exc})") from None
    model.eval()
    model.tie_weights()  # as LaViDa's predict.py
    model.to(torch.bfloat16)  # the builder leaves SigLIP in fp16; predict.py (and DCAM's) cast the whole model
    model.config.mm_spatial_pool_mode = "bilinear"  # what LaViDa's eval wrapper sets
    if family == "lavida-llada":
        cls, mask_id, eos_id, template = LavidaLladaAdapter, LLADA_MASK_ID, LLADA_EOS_ID, "llada"
        stop_ids = llada_stop_ids(family, tokenizer)
    else:  # Dream's mask id is fixed by its config (llava_dream.py, configuration_dream.py), not the tokenizer
        cls, template = LavidaDreamAdapter, "dream"
        mask_id, eos_id = DREAM_MASK_ID, tokenizer.eos_token_id
        stop_ids = (eos_id, *token_ids(family, tokenizer, ("<|im_end|>",)))
    codec = HFCodec(tokenizer, stop_ids)
    return cls(model, codec, mask_id=mask_id, eos_id=eos_id, gen_length=gen_length, forbid_ids=(mask_id,),
               prompt_ids=llava_prompt_builder(tokenizer, template), default_prompt="Describe the image in detail.")


def load_lavida_llada(path: str | None, device: str) -> LavidaLladaAdapter:
    """Load a LaViDa-LLaDA checkpoint (:func:`load_lavida`)."""
    return load_lavida("lavida-llada", path, device)


def load_lavida_dream(path: str | None, device: str) -> LavidaDreamAdapter:
    """Load a LaViDa-Dream checkpoint (:func:`load_lavida`)."""
    return load_lavida("lavida-dream", path, device)
