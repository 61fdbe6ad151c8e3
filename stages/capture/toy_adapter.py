"""Adapter of the embedded toy dMLLM (:class:`stages.toy.model.ToyDMLLM`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from schemas.span import SpanLayout
from stages.capture.adapter import ModelAdapter, Prepared, restore_cache, snapshot_cache


class ToyAdapter(ModelAdapter):
    """LLaDA-V-like single view: a 12x12 grid, no base view, no newline tokens, no pooling."""

    family = "toy"
    batched_prompts = True  # lm_forward takes a batch of prompt embeddings of one length

    def __init__(self, model):
        super().__init__(model)
        tok = model.tokenizer
        self.tokenizer = tok
        self.mask_id = tok.mask_id
        self.eos_id = tok.eos_id
        self.gen_length = model.gen_length
        self.forbid_ids = tuple(i for i in tok.special_ids if i != tok.eos_id)

    @classmethod
    def load(cls, path: str | None = None, *, device: str = "cpu") -> "ToyAdapter":
        from stages.toy.model import ToyDMLLM

        model = ToyDMLLM.from_pretrained(path).to(device)
        model.eval()
        return cls(model)

    def blocks(self) -> Sequence[torch.nn.Module]:
        return self.model.language_model.layers

    def default_prompt(self) -> str:
        return self.tokenizer.decode(self.model.prompt_ids())

    def prepare(self, image: np.ndarray, prompt: str | None = None) -> Prepared:
        if prompt not in (None, "", self.default_prompt()):
            raise ValueError(f"the toy model takes only its fixed prompt {self.default_prompt()!r}, got {prompt!r}")
        device = self.device
        pixel_values = self.model.preprocess(image).to(device)
        embeds, (start, end) = self.model.embed_prompt(pixel_values)
        h, w = self.model.grid
        span = SpanLayout(start=start, end=end, grid_h=h, grid_w=w)
        return Prepared(prompt_embeds=embeds, prompt_ids=None, span=span, extra={"pixel_values": pixel_values})

    def full_logits(self, prep: Prepared, x: torch.Tensor, *, prefix_dlm_mask: bool = False) -> torch.Tensor:
        embeds = torch.cat([prep.prompt_embeds, self.model.embed_tokens(x)], dim=1)
        mask = self.model.prefix_dlm_mask(1, embeds.device) if prefix_dlm_mask else None
        logits, _ = self.model.lm_forward(embeds, attention_mask=mask)
        return logits

    def prefix_pass(self, prep: Prepared) -> tuple[Any, torch.Tensor]:
        logits, cache = self.model.lm_forward(prep.prompt_embeds, use_cache=True)
        prep.extra["prefix_kv"] = snapshot_cache(cache)
        return cache, logits

    def answer_logits(self, prep: Prepared, cache: Any, x: torch.Tensor) -> torch.Tensor:
        p, g = prep.prompt_len, x.shape[1]
        positions = torch.arange(p, p + g, device=x.device).unsqueeze(0)
        logits, _ = self.model.lm_forward(
            self.model.embed_tokens(x), past_key_values=cache, position_ids=positions, use_cache=True
        )
        restore_cache(cache, prep.extra["prefix_kv"])
        return logits

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        special = set(self.tokenizer.special_ids)
        return [(self.tokenizer.vocab[i], [p]) for p, i in enumerate(ids) if i not in special]


def load_toy(path: str | None, device: str) -> ToyAdapter:
    """The registry's loader: the toy's weights at ``path`` (None: the bundled ones) on ``device``."""
    return ToyAdapter.load(path, device=device)
