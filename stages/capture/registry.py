"""Model families the capture stage knows: ``--model FAMILY[:PATH]``.

A new family is one adapter file plus one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from schemas.errors import DcamError


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    needs: str
    load: Callable[..., object]
    needs_path: bool = True
    #: The sampler defaults the family's adapter declares (its upstream's), as ``dcam models`` shows them.
    defaults: str = "even split (LLaDA), temperature 0, steps = generation length"


def _toy(path: str | None, device: str):
    from stages.capture.toy_adapter import ToyAdapter

    return ToyAdapter.load(path, device=device)


def _lavida_llada(path: str | None, device: str):
    from stages.capture.families.lavida import load_lavida

    return load_lavida("lavida-llada", path, device)


def _lavida_dream(path: str | None, device: str):
    from stages.capture.families.lavida import load_lavida

    return load_lavida("lavida-dream", path, device)


def _llada_v(path: str | None, device: str):
    from stages.capture.families.llada_v import load_llada_v

    return load_llada_v(path, device)


def _mmada(path: str | None, device: str):
    from stages.capture.families.mmada import load_mmada

    return load_mmada(path, device)


def _diffusion_gemma(path: str | None, device: str):
    from stages.capture.families.diffusion_gemma import load_diffusion_gemma

    return load_diffusion_gemma(path, device)


FAMILIES: dict[str, Family] = {
    "toy": Family(
        "toy",
        "the embedded tiny dMLLM (SigLIP patches -> mlp2x_gelu -> bidirectional Llama), 12x12 grid",
        "nothing beyond diffusion-cam; weights ship with it (toy:PATH loads other weights)",
        _toy,
        needs_path=False,
    ),
    "lavida-llada": Family(
        "lavida-llada",
        "LaViDa-LLaDA (paper's model): SigLIP -> mlp2x_gelu -> LLaDA-8B blocks; anyres base + 2x2 views, 2x2 "
        "bilinear pooling, newline per grid row; default mode prefix-cache (Prefix-DLM), also full",
        "LaViDa's repo (jacklishufan/LaViDa, pip install -e .) with its pins (transformers==4.50.3, deepspeed); "
        "LAVIDA_VISION_TOWER = local siglip-so400m-patch14-384",
        _lavida_llada,
        defaults="LaViDa's predict.py: shift schedule (shift 3), temperature 0.1, steps = 0.5 x generation length "
                 "(--schedule even --temperature 0 --steps N for LLaDA's even split)",
    ),
    "lavida-dream": Family(
        "lavida-dream",
        "LaViDa-Dream: LaViDa's vision layout on a Dream-7B (Qwen2-derived) trunk, logits shifted by one; "
        "default mode prefix-cache, also full",
        "LaViDa's repo (jacklishufan/LaViDa) with its pins (transformers==4.50.3, deepspeed); "
        "LAVIDA_VISION_TOWER = local siglip-so400m-patch14-384",
        _lavida_dream,
        defaults="LaViDa's llava_dream generate: Dream's entropy algorithm (negative-entropy confidence), Dream's "
                 "schedule, temperature 0.2, top-p 0.95, one block (--remasking low_confidence --schedule even "
                 "--temperature 0 --top-p 1 for LLaDA's)",
    ),
    "llada-v": Family(
        "llada-v",
        "LLaDA-V: SigLIP2 -> mlp2x_gelu -> HF-Llama-style LLaDA-8B; anyres_max_4, no pooling, newline per row; "
        "full recompute every step (mode full only)",
        "LLaDA-V's repo (ML-GSAI/LLaDA-V, train/ on PYTHONPATH) with its pins (transformers 4.4x)",
        _llada_v,
    ),
    "mmada": Family(
        "mmada",
        "MMaDA: no vision encoder; MAGVIT-v2 image codes (32x32 grid) between <|soi|> and <|eoi|> on an LLaDA "
        "trunk; maps on the token grid; mode full only",
        "MMaDA's repo (Gen-Verse/MMaDA on PYTHONPATH) with its pins (transformers==4.46.0, diffusers==0.32.2); "
        "MMADA_VQ_MODEL = local showlab/magvitv2",
        _mmada,
    ),
    "diffusion-gemma": Family(
        "diffusion-gemma",
        "DiffusionGemma (transformers): image soft tokens in the prompt encoder, canvas denoised by the decoder "
        "through the encoder cache; default mode prefix-cache; one canvas",
        "transformers >= 5 (diffusion_gemma, already installed) and a local checkpoint with its processor files",
        _diffusion_gemma,
        defaults="generate()'s own: canvas of random tokens, entropy-bound acceptance (0.1), uniform re-noising, "
                 "self-conditioning, temperature 0.8 -> 0.4, 48 steps (no adaptive early stop); --temperature, "
                 "--schedule, --remasking do not apply",
    ),
}


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    family, _, path = spec.partition(":")
    if family not in FAMILIES:
        raise DcamError(f"--model: unknown family {family!r}; known: {', '.join(FAMILIES)} (see 'dcam models')")
    if FAMILIES[family].needs_path and not path:
        raise DcamError(f"--model: {family} needs a local checkpoint path, e.g. --model {family}:/path/to/checkpoint")
    return family, path or None


def load_adapter(spec: str, *, device: str = "cpu"):
    """Load the adapter named by ``FAMILY[:PATH]``."""
    family, path = parse_model_spec(spec)
    return FAMILIES[family].load(path, device)
