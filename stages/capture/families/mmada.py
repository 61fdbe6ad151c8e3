"""MMaDA (Gen-Verse/MMaDA): one LLaDA trunk over text and discrete image tokens, no vision encoder.

The image is tokenised by MAGVIT-v2 (512 px -> 32x32 = 1024 codes of a 8192 codebook), the codes are
offset by the text tokenizer's length and embedded by the LLM's own table. Understanding prompt
(``inference_mmu.py``)::

    <|mmu|> <|soi|> [h*w image ids, raster order] <|eoi|> chat-templated question

so the image span is strictly between ``<|soi|>`` and ``<|eoi|>``: one token per 16x16-px patch, no base
view, no newline tokens, no pooling. The image is squashed to 512x512 (``image_transform_squash``, which
``inference_mmu.py`` uses for LLaVA-style data) so the code grid covers the whole image; its default
``image_transform`` would centre-crop non-square images and the grid would cover only the central square. Gradients stop at the token embeddings: maps live on the token grid
and are taken at LLM hidden states (``model.model.transformer.blocks[i]``), never at pixels.

Loop: ``MMadaModelLM.mmu_generate`` recomputes the full sequence every step on token ids (no cache), so
only ``full`` mode; ``prefix-cache`` is refused.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from schemas.errors import DcamError
from schemas.span import SpanLayout
from stages.capture.adapter import ModelAdapter, Prepared
from stages.capture.families import (
    LLADA_MASK_ID,
    REPLICA_PROMPT,
    HFCodec,
    check_loading_info,
    llada_stop_ids,
    load_hf_tokenizer,
    require_module,
    require_path,
)

SPECIALS = ("<|mmu|>", "<|soi|>", "<|eoi|>")
#: Pixels per MAGVIT-v2 code side (512 px -> 32x32 codes).
MAGVIT_PATCH = 16


def mmada_grid(config) -> tuple[int, int]:
    """The code grid of a MMaDA checkpoint from its ``num_vq_tokens`` (1024 -> 32x32 for the 512-px demo and
    MixCoT models; 256 -> 16x16 for the stage 1-3 configs).

    Raises
    ------
    DcamError
        If the config has no ``num_vq_tokens`` or it is not a square number.
    """
    n = getattr(config, "num_vq_tokens", None)
    side = int(round(n ** 0.5)) if isinstance(n, int) and n > 0 else 0
    if side * side != n:
        raise DcamError(f"mmada: config.num_vq_tokens must be a square number of image codes, got {n!r}")
    return side, side


class MMadaAdapter(ModelAdapter):
    """MMaDA: discrete image ids between ``<|soi|>`` and ``<|eoi|>``, full recompute.

    Parameters
    ----------
    model : MMadaModelLM or its replica
        Must expose ``model.model.transformer.blocks`` and ``model(input_ids).logits``.
    codec : WordCodec or HFCodec
    text_vocab_size : int
        ``len(text_tokenizer)`` (with MMaDA's added specials): the offset of image code 0.
    quantizer : object with ``get_code(image) -> (h*w,) codes``, optional
        Default ``model.vq_model`` (the replica's colour quantiser).
    grid : (h, w), optional
        Code grid; default from ``model.config.num_vq_tokens`` (:func:`mmada_grid`).
    """

    family = "mmada"
    modes = ("full",)
    default_mode = "full"

    def __init__(self, model, codec, *, text_vocab_size: int, mask_id: int, eos_id: int, gen_length: int,
                 forbid_ids=(), quantizer=None, grid: tuple[int, int] | None = None, special_ids=None,
                 prompt_ids=None, default_prompt: str = REPLICA_PROMPT):
        super().__init__(model)
        self.codec = codec
        self.text_vocab_size = text_vocab_size
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.gen_length = gen_length
        self.quantizer = quantizer if quantizer is not None else model.vq_model
        self.grid = grid or mmada_grid(model.config)
        vocab = model.model.transformer.wte.num_embeddings
        # Image codes are never text: forbid them in the response along with the specials.
        self.forbid_ids = tuple(sorted(set(forbid_ids) | set(range(text_vocab_size, vocab))))
        if special_ids is None:
            special_ids = {t: codec.tokenizer.vocab.index(t) for t in SPECIALS}
        self.special_ids = special_ids
        self._prompt_ids = prompt_ids
        self._default_prompt = default_prompt

    def blocks(self) -> Sequence[torch.nn.Module]:
        return self.model.model.transformer.blocks

    def default_prompt(self) -> str:
        return self._default_prompt

    def image_ids(self, image: np.ndarray) -> torch.Tensor:
        """Image token ids (h*w,): codes offset by the text vocabulary."""
        codes = torch.as_tensor(np.asarray(self.quantizer.get_code(np.asarray(image))), dtype=torch.long).reshape(-1)
        h, w = self.grid
        if codes.numel() != h * w:
            raise DcamError(f"mmada: the quantiser gave {codes.numel()} codes, expected {h}x{w}")
        return codes + self.text_vocab_size

    def prepare(self, image: np.ndarray, prompt: str | None = None) -> Prepared:
        text = self._prompt_ids(prompt or self.default_prompt()) if self._prompt_ids else self.codec.encode(
            prompt or self.default_prompt()
        )
        img = self.image_ids(image)
        device = self.device
        ids = torch.cat([
            torch.tensor([self.special_ids["<|mmu|>"], self.special_ids["<|soi|>"]]), img,
            torch.tensor([self.special_ids["<|eoi|>"]]), torch.tensor(text, dtype=torch.long),
        ]).to(device)[None]
        h, w = self.grid
        span = SpanLayout(start=2, end=2 + h * w, grid_h=h, grid_w=w)  # strictly between <|soi|> and <|eoi|>
        return Prepared(prompt_embeds=None, prompt_ids=ids, span=span)

    def full_logits(self, prep: Prepared, x: torch.Tensor, *, prefix_dlm_mask: bool = False) -> torch.Tensor:
        if prefix_dlm_mask:
            raise DcamError("mmada: no Prefix-DLM mask (MMaDA attends over the whole sequence); use --mode full")
        return self.model(torch.cat([prep.prompt_ids, x], dim=1)).logits

    def logits_fn(self, prep: Prepared, mode: str):
        if mode != "full":
            self.prefix_pass(prep)
        return super().logits_fn(prep, mode)

    def prefix_pass(self, prep: Prepared) -> tuple[Any, Any]:
        raise DcamError("mmada recomputes the whole sequence at every step; it has no prefix cache. Use --mode full")

    def answer_logits(self, prep: Prepared, cache: Any, x: torch.Tensor) -> torch.Tensor:
        return self.prefix_pass(prep)  # unreachable: prefix_pass refuses

    def lm_head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        t = self.model.model.transformer
        return t.ff_out(t.ln_f(hidden))

    def decode(self, ids: Sequence[int]) -> str:
        return self.codec.decode(ids)

    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        return self.codec.word_groups(ids)


MMADA_NEEDS = (
    "MMaDA's own code: clone github.com/Gen-Verse/MMaDA and put it on PYTHONPATH (packages 'models' and 'training'), "
    "in an environment with its pins (transformers==4.46.0, diffusers==0.32.2); a local showlab/magvitv2 directory "
    "in MMADA_VQ_MODEL"
)


def load_mmada(path: str | None, device: str, *, gen_length: int = 64) -> MMadaAdapter:
    """Load MMaDA with its own ``MMadaModelLM`` and MAGVIT-v2 (``inference_mmu.py``)."""
    import os

    root = require_path("mmada", path)
    models = require_module("mmada", "models", MMADA_NEEDS)
    prompting = require_module("mmada", "training.prompting_utils", MMADA_NEEDS)
    vq_path = os.environ.get("MMADA_VQ_MODEL")
    if not vq_path or not os.path.isdir(vq_path):
        raise DcamError("--model mmada: set MMADA_VQ_MODEL to a local showlab/magvitv2 directory")
    tokenizer = load_hf_tokenizer("mmada", root)
    try:
        uni = prompting.UniversalPrompting(
            tokenizer, max_text_len=512, special_tokens=(
                "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>"),
            ignore_id=-100, cond_dropout_prob=0.1, use_reserved_token=True,
        )
        model, info = models.MMadaModelLM.from_pretrained(str(root), torch_dtype=torch.bfloat16, output_loading_info=True,
                                                         use_safetensors=True)
        model = model.to(device).eval()
        vq = models.MAGVITv2.from_pretrained(vq_path, use_safetensors=True).to(device).eval()
    except Exception as exc:
        raise DcamError(f"--model mmada: MMaDA's loader failed on {root} ({type(exc).__name__}: {exc})") from None
    check_loading_info("mmada", info)
    grid = mmada_grid(model.config)

    class _MagvitCodes:
        def get_code(self, image: np.ndarray) -> np.ndarray:
            from PIL import Image

            side = grid[0] * MAGVIT_PATCH  # 32 codes a side at 512 px (inference_mmu.py), 16 at 256 px
            pil = Image.fromarray(np.asarray(image)).convert("RGB").resize((side, side), Image.BICUBIC)
            x = torch.from_numpy(np.asarray(pil)).permute(2, 0, 1).float().div(255.0)[None].to(device)
            with torch.no_grad():
                return vq.get_code((x - 0.5) / 0.5)[0].cpu().numpy()

    text_tok = uni.text_tokenizer
    codec = HFCodec(text_tok, llada_stop_ids("mmada", text_tok))
    specials = {t: int(uni.sptids_dict[t][0]) for t in SPECIALS}

    def prompt_ids(question: str) -> list[int]:
        msgs = [{"role": "user", "content": question}]
        return list(text_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True))

    return MMadaAdapter(
        model, codec, text_vocab_size=len(text_tok), mask_id=LLADA_MASK_ID, eos_id=text_tok.eos_token_id,
        gen_length=gen_length, forbid_ids=(LLADA_MASK_ID,), quantizer=_MagvitCodes(), grid=grid, special_ids=specials,
        prompt_ids=prompt_ids, default_prompt="Please describe this image in detail.",
    )
