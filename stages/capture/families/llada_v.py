"""LLaDA-V (ML-GSAI/LLaDA-V): SigLIP2 -> mlp2x_gelu -> LLaDA-8B written as an HF-Llama-style module.

Hook path ``model.get_model().layers[i]`` (``LLaDADecoderLayer``, bidirectional). Image layout
(``train/llava/model/llava_arch.py``): ``anyres_max_4`` with pinpoints ``(1x1)...(6x6)`` views, NO 2-D
pooling for images (729 tokens per 384-px view), ``spatial_unpad`` (merged grid, padding cropped, shrunk
bilinearly when it holds more than 4 views' worth), one newline token per grid row, base view first.

Loop: ``LLaDAModelLM.generate_with_embeds`` recomputes the whole sequence every step (no cache), so this
family supports ``full`` mode only: a prefix cache would change what the model computes (its image tokens
attend to the response), so ``prefix-cache`` is refused. dLLM-Cache (the demo's feature reuse) is never
enabled: it would make hooked image activations stale.
"""

from __future__ import annotations

from typing import Any

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
)
from stages.capture.families.llava_next import HFTrunkAdapter, llava_prompt_builder


class LladaVAdapter(HFTrunkAdapter):
    """LLaDA-V: full recompute every step, anyres_max_4, no pooling."""

    family = "llada-v"
    pool_views = False
    max_views = 4
    modes = ("full",)
    default_mode = "full"

    def logits_fn(self, prep: Prepared, mode: str):
        if mode != "full":
            self.prefix_pass(prep)
        return super().logits_fn(prep, mode)

    def prefix_pass(self, prep: Prepared) -> tuple[Any, Any]:
        raise DcamError(
            "llada-v recomputes the whole sequence at every step (its image tokens see the response); "
            "it has no prefix cache. Use --mode full"
        )


LLADA_V_NEEDS = (
    "LLaDA-V's own code: clone github.com/ML-GSAI/LLaDA-V and put its train/ directory (the 'llava' package) on "
    "PYTHONPATH, in an environment with its pins (transformers 4.4x as in train/requirements.txt)"
)


def load_llada_v(path: str | None, device: str, *, gen_length: int = 64) -> LladaVAdapter:
    """Load a LLaDA-V checkpoint with the repository's ``load_pretrained_model(..., "llava_llada")``."""
    root = require_path("llada-v", path)
    require_llava("llada-v", "LlavaLLaDAModelLM", LLADA_V_NEEDS)
    builder = require_module("llada-v", "llava.model.builder", LLADA_V_NEEDS)
    with reported_weights("llada-v"):
        try:
            tokenizer, model, _, _ = builder.load_pretrained_model(
                str(root), None, "llava_llada", device_map=device, attn_implementation="sdpa", use_safetensors=True
            )
        except Exception as exc:
            raise DcamError(f"--model llada-v: LLaDA-V's loader failed on {root} ({type(exc).__name__}: {exc})") from None
    model.eval()
    mask_id = LLADA_MASK_ID
    return LladaVAdapter(
        model, HFCodec(tokenizer, llada_stop_ids("llada-v", tokenizer)), mask_id=mask_id,
        eos_id=tokenizer.eos_token_id, gen_length=gen_length,
        # generate_with_embeds bans these four at masked positions (EOS included: it stops on strings)
        forbid_ids=(mask_id, LLADA_EOS_ID, 126080, 126346, 126347), prompt_ids=llava_prompt_builder(tokenizer, "llava_llada"),
        default_prompt="Please describe the image in detail.",  # generate_demo.py
    )

