"""DiffusionGemma (transformers' ``DiffusionGemmaForBlockDiffusion``): a prompt encoder + a canvas decoder.

Where the image lives: the Gemma-4 vision tower turns patches into soft tokens (average-pooled k x k,
raster order over the pooled grid: token ``x + (W / k) * y``), ``embed_vision`` projects them and they
replace the ``image_token_id`` placeholders of the *encoder* input (``<boi> [soft tokens] <eoi>``). The
encoder (``model.model.encoder.language_model.layers[i]``) runs the prompt once and writes every layer's
keys and values into a cache; the decoder (``model.model.decoder``) denoises a canvas with bidirectional
attention over [cache, canvas] and never writes the cache. So the image span exists only in encoder
hidden states: those are the hooked blocks, and every denoising step's score reaches them through the
cached keys and values - exactly LaViDa's Prefix-DLM situation, hence ``prefix-cache`` is the default mode
(``full`` re-runs the encoder at every step, same values). The last encoder layer's output feeds no key or
value (only the encoder's final norm), so, as for every family, hook an earlier layer.

Sampler: DiffusionGemma's own (:mod:`stages.dmllm.uniform`): one canvas (``gen_length = canvas_length``)
that starts as random vocabulary tokens, entropy-bound acceptance, uniform re-noising and self-conditioning
on the previous step's logits (each step's conditioning input is recorded so its replay is the same forward),
temperature 0.8 -> 0.4 over 48 steps by default. What differs: one canvas (upstream continues with further
canvases autoregressively) and no adaptive early stop.

The encoder's attention follows ``generate()``'s prefill: image tokens see each other both ways where the
config says ``use_bidirectional_attention="vision"`` (the mask ``create_masks_for_generate`` builds from
``mm_token_type_ids``; the encoder called bare drops it).

Image input: the replica builds ``pixel_values`` (B, patches, 3 * p * p) and ``image_position_ids``
(B, patches, 2) as (x, y) directly from the image resized to a square (:func:`patchify`; identical to
transformers' ``Gemma4ImageProcessorPil`` output at the same size, checked in the tests); a checkpoint uses
its own processor (``AutoProcessor`` from the checkpoint directory, aspect-preserving resize to a soft-token
budget) and the grid is read from the position ids.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from schemas.errors import DcamError
from schemas.span import SpanLayout
from stages.capture.adapter import ModelAdapter, Prepared
from stages.capture.families import REPLICA_PROMPT, HFCodec, check_loading_info, require_path


def patchify(image: np.ndarray, size: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to ``size`` x ``size`` and cut into patches, as Gemma-4's vision tower takes them.

    Returns
    -------
    pixel_values : Tensor of shape (1, (size/patch)^2, patch * patch * 3), values in [0, 1]
    position_ids : LongTensor of shape (1, (size/patch)^2, 2), (x, y) of every patch, row-major
    """
    from PIL import Image

    img = np.asarray(Image.fromarray(np.asarray(image)).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    n = size // patch
    patches = img.reshape(n, patch, n, patch, 3).transpose(0, 2, 1, 3, 4).reshape(n * n, patch * patch * 3)
    ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    pos = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)
    return torch.from_numpy(patches)[None], torch.from_numpy(pos).long()[None]


class DiffusionGemmaAdapter(ModelAdapter):
    """DiffusionGemma: image span in the encoder; hooked blocks are the encoder's text layers."""

    family = "diffusion-gemma"
    modes = ("prefix-cache", "full")
    default_mode = "prefix-cache"
    sampler = "uniform-noise"
    default_steps = 48  # max_denoising_steps of generate()'s defaults
    # Every step reads the previous step's logits (self-conditioning), which the capture store does not keep:
    # a word's score cannot be recomputed on a perturbed image at the same state.
    replayable = False

    def __init__(self, model, codec, *, mask_id: int, eos_id: int, gen_length: int | None = None, forbid_ids=(),
                 image_size: int = 48, processor=None, default_prompt: str = REPLICA_PROMPT):
        super().__init__(model)
        cfg = model.config
        if gen_length is not None and gen_length != cfg.canvas_length:
            raise ValueError(f"gen_length: DiffusionGemma denoises one canvas of {cfg.canvas_length}, got {gen_length}")
        self.codec = codec
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.gen_length = cfg.canvas_length
        self.forbid_ids = tuple(sorted(set(forbid_ids) | {cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id}))
        self.image_size = image_size
        self.processor = processor
        self._default_prompt = default_prompt

    # ------------------------------------------------------------- structure
    def encoder(self):
        return self.model.model.encoder

    def blocks(self) -> Sequence[torch.nn.Module]:
        return self.encoder().language_model.layers

    def default_prompt(self) -> str:
        return self._default_prompt

    # ------------------------------------------------------------- inputs
    def prepare(self, image: np.ndarray, prompt: str | None = None) -> Prepared:
        cfg = self.model.config
        k = cfg.vision_config.pooling_kernel_size
        device = self.device
        if self.processor is None:
            pixel_values, position_ids = patchify(image, self.image_size, cfg.vision_config.patch_size)
            side = self.image_size // cfg.vision_config.patch_size
            grid = (side // k, side // k)
            tok = self.codec.tokenizer
            ids = [tok.bos_id, cfg.boi_token_id, *[cfg.image_token_id] * (grid[0] * grid[1]), cfg.eoi_token_id,
                   *self.codec.encode(prompt or self.default_prompt())]
            input_ids = torch.tensor([ids])
        else:
            input_ids, pixel_values, position_ids, mm_types = self._process(image, prompt)
            pos = position_ids[0][(position_ids[0] >= 0).all(-1)]
            grid = (int(pos[:, 1].max()) // k + 1, int(pos[:, 0].max()) // k + 1)
        where = (input_ids[0] == cfg.image_token_id).nonzero().flatten()
        start, end = int(where[0]), int(where[-1]) + 1
        if end - start != len(where) or len(where) != grid[0] * grid[1]:
            raise DcamError(f"diffusion-gemma: {len(where)} image tokens do not form one {grid[0]}x{grid[1]} block")
        if self.processor is None:
            mm_types = (input_ids == cfg.image_token_id).long()
        extra = dict(pixel_values=pixel_values.to(device), image_position_ids=position_ids.to(device),
                     mm_token_type_ids=mm_types.to(device))
        span = SpanLayout(start=start, end=end, grid_h=grid[0], grid_w=grid[1], pooling=f"avg-{k}x{k}")
        return Prepared(prompt_embeds=None, prompt_ids=input_ids.to(device), span=span, extra=extra)

    def _process(self, image: np.ndarray, prompt: str | None):
        from PIL import Image

        text = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt or self.default_prompt()}]}],
            add_generation_prompt=True, tokenize=False,
        )
        out = self.processor(text=text, images=Image.fromarray(np.asarray(image)), return_tensors="pt")
        mm_types = out.get("mm_token_type_ids")
        if mm_types is None:
            mm_types = (out["input_ids"] == self.model.config.image_token_id).long()
        return out["input_ids"], out["pixel_values"], out["image_position_ids"], mm_types

    # ------------------------------------------------------------- forwards
    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.model.final_logit_softcapping
        logits = logits.float()
        return torch.tanh(logits / cap) * cap if cap else logits

    def prefix_pass(self, prep: Prepared) -> tuple[Any, torch.Tensor]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config.get_text_config())
        ids = prep.prompt_ids
        position_ids = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        # As generate()'s prefill: the encoder called bare builds this mask and drops it (causal image tokens);
        # with it, image tokens attend to each other both ways where the config says so.
        mask = self.encoder().create_masks_for_generate(
            config=self.model.config, inputs_embeds=torch.empty((*ids.shape, 0), dtype=self.model.dtype, device=ids.device),
            attention_mask=torch.ones_like(ids), cache=cache, position_ids=position_ids,
            mm_token_type_ids=prep.extra["mm_token_type_ids"],
        )
        out = self.encoder()(input_ids=ids, attention_mask=mask, cache=cache, position_ids=position_ids, **prep.extra)
        return cache, self._softcap(self.model.lm_head(out.last_hidden_state))

    @property
    def vocab_size(self) -> int:
        """The vocabulary the canvas is drawn from."""
        return int(self.model.config.get_text_config().vocab_size)

    def answer_logits(self, prep: Prepared, cache: Any, x: torch.Tensor, *,
                      conditioning: torch.Tensor | None = None) -> torch.Tensor:
        """Canvas logits; ``conditioning``: the previous step's processed logits (self-conditioning), as
        ``generate()`` casts them to the embeddings' dtype."""
        # The decoder reads the encoder cache and never writes it: nothing to crop.
        if conditioning is not None:
            conditioning = conditioning.to(self.model.model.decoder.embed_tokens.weight.dtype)
        return self.model(decoder_input_ids=x, cache=cache, self_conditioning_logits=conditioning).logits

    def full_logits(self, prep: Prepared, x: torch.Tensor, *, prefix_dlm_mask: bool = False,
                    conditioning: torch.Tensor | None = None) -> torch.Tensor:
        # The encoder never sees the canvas, so a full pass *is* the Prefix-DLM computation.
        cache, prompt_logits = self.prefix_pass(prep)
        return torch.cat([prompt_logits, self.answer_logits(prep, cache, x, conditioning=conditioning)], dim=1)

    def lm_head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._softcap(self.model.lm_head(self.encoder().language_model.norm(hidden)))

    # ------------------------------------------------------------- text
    def decode(self, ids: Sequence[int]) -> str:
        return self.codec.decode(ids)

    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        return self.codec.word_groups(ids)


def load_diffusion_gemma(path: str | None, device: str) -> DiffusionGemmaAdapter:
    """Load a DiffusionGemma checkpoint with transformers' own classes and its processor (offline)."""
    root = require_path("diffusion-gemma", path)
    try:
        from transformers import AutoProcessor, DiffusionGemmaForBlockDiffusion

        model, info = DiffusionGemmaForBlockDiffusion.from_pretrained(str(root), dtype=torch.bfloat16,
                                                                      output_loading_info=True,
                                                                      use_safetensors=True)
        model = model.to(device).eval()
        processor = AutoProcessor.from_pretrained(str(root))
    except Exception as exc:
        raise DcamError(
            f"--model diffusion-gemma: cannot load {root} with transformers' DiffusionGemma classes "
            f"({type(exc).__name__}); needs transformers >= 5 with diffusion_gemma and the checkpoint's processor files"
        ) from None
    check_loading_info("diffusion-gemma", info)
    tok = processor.tokenizer
    return DiffusionGemmaAdapter(
        model, HFCodec(tok, (tok.eos_token_id,)), mask_id=tok.pad_token_id, eos_id=tok.eos_token_id, forbid_ids=(tok.pad_token_id,),
        processor=processor, default_prompt="Describe this image in detail.",
    )
