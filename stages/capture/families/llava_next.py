"""The LLaVA-NeXT side that LaViDa and LLaDA-V share: anyres geometry and the adapter base classes.

Image side (``llava/model/llava_arch.py::prepare_inputs_labels_for_multimodal``, ``llava/mm_utils.py``),
re-implemented here so the adapters know the layout they build:

1. anyres: pick the pinpoint resolution that keeps the most of the image (least waste on ties), resize
   keeping aspect and pad to it, cut it into views of the tower's size; a base view is the whole image
   resized to one view. Views are row-major.
2. SigLIP (select layer -2) -> ``mlp2x_gelu`` per view (``encode_images``).
3. Optional 2-D pooling of every view, base included (LaViDa: bilinear to ``ceil(side / 2)``, 27x27 ->
   14x14; LLaDA-V: none).
4. ``spatial_unpad``: the high-res views are merged into one grid, the padding rows/columns are cropped
   (``unpad_image``), and the ``image_newline`` embedding is appended after every grid row.
   (``anyres_max_N``, LLaDA-V: the merged grid is bilinearly shrunk when it holds more than N views' worth.)
5. The image tokens are [base view (row-major), grid rows each followed by a newline token]; they replace
   the single ``-200`` placeholder of the prompt.

:class:`LlavaFamilyAdapter` builds that sequence; :class:`HFTrunkAdapter` runs it through an HF-style
decoder (``embed_tokens``, ``layers``, ``norm``, ``lm_head``) with a Prefix-DLM cache. The family files
(:mod:`.lavida`, :mod:`.llada_v`) say which trunk, pooling, cap and sampler defaults they use.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from schemas.errors import DcamError
from schemas.span import SpanLayout
from stages.capture.adapter import ModelAdapter, Prepared, restore_cache, snapshot_cache
from stages.capture.families import REPLICA_PROMPT, no_hub_loads

#: LLaVA's ``IMAGE_TOKEN_INDEX``: the placeholder id replaced by the image tokens.
IMAGE_TOKEN_INDEX = -200
#: SigLIP normalisation (the so400m processor: mean 0.5, std 0.5).
_MEAN = 0.5
_STD = 0.5


# ================================================================================ anyres geometry
def parse_pinpoints(pinpoints: Any, view: int) -> list[tuple[int, int]]:
    """LLaVA's ``image_grid_pinpoints`` as (width, height) pairs: a list, a literal string, or ``"(1x1),...,(6x6)"``."""
    if isinstance(pinpoints, str) and "x" in pinpoints:
        found = re.findall(r"\((\d+)x(\d+)\)", pinpoints)
        (a0, b0), (a1, b1) = tuple(map(int, found[0])), tuple(map(int, found[-1]))
        return [(i * view, j * view) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    if isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    return [(int(w), int(h)) for w, h in pinpoints]


def select_best_resolution(size_wh: tuple[int, int], resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The resolution that keeps the most image pixels, then wastes the fewest (LLaVA ``select_best_resolution``)."""
    w0, h0 = size_wh
    best, best_eff, best_waste = None, -1, float("inf")
    for w, h in resolutions:
        scale = min(w / w0, h / h0)
        eff = min(int(w0 * scale) * int(h0 * scale), w0 * h0)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (w, h), eff, waste
    return best


def _resize(image: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))


def resize_and_pad(image: np.ndarray, target_wh: tuple[int, int]) -> np.ndarray:
    """Resize keeping the aspect ratio to fit ``target_wh`` and centre it on black (LLaVA ``resize_and_pad_image``)."""
    h0, w0 = image.shape[:2]
    tw, th = target_wh
    if tw / w0 < th / h0:
        nw, nh = tw, min(math.ceil(h0 * tw / w0), th)
    else:
        nh, nw = th, min(math.ceil(w0 * th / h0), tw)
    canvas = np.zeros((th, tw, 3), dtype=np.uint8)
    y, x = (th - nh) // 2, (tw - nw) // 2
    canvas[y : y + nh, x : x + nw] = _resize(image, nw, nh)
    return canvas


def anyres_pixels(image: np.ndarray, view: int, pinpoints: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Base view + high-res views of an RGB image.

    Returns
    -------
    pixel_values : Tensor of shape (1 + nph * npw, 3, view, view), float32, normalised
    grid : (npw, nph)
        Views across and down.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    h0, w0 = image.shape[:2]
    bw, bh = select_best_resolution((w0, h0), pinpoints)
    padded = resize_and_pad(image, (bw, bh))
    views = [_resize(image, view, view)]
    for y in range(0, bh, view):
        for x in range(0, bw, view):
            views.append(padded[y : y + view, x : x + view])
    arr = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float().div(255.0)
    return (arr - _MEAN) / _STD, (bw // view, bh // view)


def unpad_grid(tensor: torch.Tensor, original_wh: tuple[int, int]) -> torch.Tensor:
    """Crop the padding rows or columns of a merged (C, H, W) grid (LLaVA ``unpad_image``)."""
    w0, h0 = original_wh
    _, h, w = tensor.shape
    if w0 / h0 > w / h:
        new_h = int(h0 * (w / w0))
        pad = (h - new_h) // 2
        return tensor[:, pad : h - pad, :]
    new_w = int(w0 * (h / h0))
    pad = (w - new_w) // 2
    return tensor[:, :, pad : w - pad]


def merge_spatial_unpad(
    features: torch.Tensor,
    views_wh: tuple[int, int],
    image_wh: tuple[int, int],
    newline: torch.Tensor,
    *,
    max_views: int | None = None,
    pooling: str = "none",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Base view + merged high-res grid with a newline token per row (``spatial_unpad``).

    Parameters
    ----------
    features : Tensor of shape (1 + nph * npw, side * side, D)
        Per-view features (pooled or not), base view first.
    views_wh : (npw, nph)
    image_wh : (width, height) of the original image
    newline : Tensor of shape (D,)
    max_views : int, optional
        ``anyres_max_N``: shrink the grid bilinearly when it holds more than ~N views' worth.
    pooling : str
        How the views were pooled, recorded in the layout (the shrink is appended when it happens).

    Returns
    -------
    tokens : Tensor of shape (N, D)
    layout : dict
        ``base_tokens``, ``base_grid``, ``grid_h``, ``grid_w``, ``newline_per_row``, ``pooling`` for
        :class:`SpanLayout`.
    """
    v, n, d = features.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"views hold {n} tokens, not a square grid")
    npw, nph = views_wh
    if v != 1 + npw * nph:
        raise ValueError(f"expected {1 + npw * nph} views (base + {nph}x{npw}), got {v}")
    base = features[0]
    grid = features[1:].view(nph, npw, side, side, d).permute(4, 0, 2, 1, 3).reshape(d, nph * side, npw * side)
    grid = unpad_grid(grid, image_wh)
    if max_views is not None:
        _, h, w = grid.shape
        times = math.sqrt(h * w / (max_views * side**2))
        if times > 1.1:
            grid = F.interpolate(grid[None], [int(h // times), int(w // times)], mode="bilinear")[0]
            pooling = f"{pooling}+anyres_max_{max_views}-bilinear" if pooling != "none" else f"anyres_max_{max_views}-bilinear"
    _, h, w = grid.shape
    grid = torch.cat((grid, newline.to(grid.dtype)[:, None, None].expand(d, h, 1)), dim=-1)
    tokens = torch.cat((base, grid.flatten(1, 2).transpose(0, 1)), dim=0)
    layout = dict(base_tokens=n, base_grid=(side, side), grid_h=h, grid_w=w, newline_per_row=True, pooling=pooling)
    return tokens, layout


# ================================================================================ shared adapter
class LlavaFamilyAdapter(ModelAdapter):
    """A LLaVA-NeXT-style dMLLM: continuous image features spliced in at the ``-200`` placeholder.

    Subclasses say how to embed tokens and run the trunk; the image layout lives here.
    """

    #: 2-D pool every view (LaViDa) or not (LLaDA-V).
    pool_views: bool = True
    #: ``anyres_max_N`` grid cap (LLaDA-V: 4), None for plain anyres.
    max_views: int | None = None
    modes: tuple[str, ...] = ("prefix-cache", "full")
    default_mode: str = "prefix-cache"

    def __init__(self, model, codec, *, mask_id: int, eos_id: int, gen_length: int, forbid_ids=(), prompt_ids=None,
                 default_prompt: str = REPLICA_PROMPT):
        super().__init__(model)
        self.codec = codec
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.gen_length = gen_length
        self.forbid_ids = tuple(forbid_ids)
        self._prompt_ids = prompt_ids
        self._default_prompt = default_prompt

    # ------------------------------------------------------------- structure
    def lm(self):
        return self.model.get_model()

    @property
    def dtype(self) -> torch.dtype:
        return self.lm().image_newline.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------- inputs
    def default_prompt(self) -> str:
        return self._default_prompt

    def prompt_token_ids(self, prompt: str) -> list[int]:
        """Prompt ids with one ``IMAGE_TOKEN_INDEX`` placeholder."""
        if self._prompt_ids is not None:
            return self._prompt_ids(prompt)
        return [self.codec.tokenizer.bos_id, IMAGE_TOKEN_INDEX, *self.codec.encode(prompt)]

    def pools(self) -> bool:
        return self.pool_views

    def image_tokens(self, image: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        """Image tokens (N, d) in sequence order and their layout fields."""
        tower = self.model.get_vision_tower()
        pinpoints = parse_pinpoints(self.model.config.image_grid_pinpoints, tower.image_size)
        pixel_values, views_wh = anyres_pixels(image, tower.image_size, pinpoints)
        feats = self.model.encode_images(pixel_values.to(self.device, self.dtype))
        pooling = "none"
        if self.pools():
            feats = self.model.get_2dPool(feats)
            pooling = f"{self.model.config.mm_spatial_pool_mode}-2x2"
        h, w = image.shape[:2]
        return merge_spatial_unpad(
            feats, views_wh, (w, h), self.lm().image_newline, max_views=self.max_views, pooling=pooling
        )

    def prepare(self, image: np.ndarray, prompt: str | None = None) -> Prepared:
        ids = self.prompt_token_ids(prompt or self.default_prompt())
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise DcamError(f"{self.family}: the prompt must hold exactly one image placeholder")
        cut = ids.index(IMAGE_TOKEN_INDEX)
        tokens, layout = self.image_tokens(np.asarray(image))
        before = torch.tensor([ids[:cut]], device=self.device)
        after = torch.tensor([ids[cut + 1 :]], device=self.device)
        embeds = torch.cat([self.embed(before), tokens[None].to(self.dtype), self.embed(after)], dim=1)
        span = SpanLayout(start=cut, end=cut + tokens.shape[0], **layout)
        return Prepared(prompt_embeds=embeds, prompt_ids=None, span=span)

    def prepare_for_backward(self) -> None:
        self.model.eval()
        lm = self.lm()
        # transformers >= 5 renamed it; the families' pinned 4.x only has the old name
        disable = getattr(lm, "activation_checkpointing_disable", None) or getattr(lm, "gradient_checkpointing_disable", None)
        if disable is not None:
            disable()

    # ------------------------------------------------------------- text
    def decode(self, ids: Sequence[int]) -> str:
        return self.codec.decode(ids)

    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        return self.codec.word_groups(ids)


# ================================================================================ HF-style trunks
class HFTrunkAdapter(LlavaFamilyAdapter):
    """A LLaVA family whose trunk is an HF-style decoder (``embed_tokens``, ``layers``, ``norm``) + ``lm_head``."""

    def blocks(self) -> Sequence[torch.nn.Module]:
        return self.lm().layers

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm().embed_tokens(ids)

    def _logits(self, embeds: torch.Tensor, cache: Any = None, **kw) -> torch.Tensor:
        lm = self.lm()
        if cache is not None:
            # transformers >= 5.x names the cache argument ``cache``; the families' pinned 4.x ``past_key_values``
            kw["cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"] = cache
        hidden = lm(inputs_embeds=embeds, **kw).last_hidden_state
        return self.model.lm_head(hidden)

    def full_logits(self, prep: Prepared, x: torch.Tensor, *, prefix_dlm_mask: bool = False) -> torch.Tensor:
        if prefix_dlm_mask:
            cache, prompt_logits = self.prefix_pass(prep)
            resp = self.trunk_answer_logits(prep, cache, x)
            return torch.cat([prompt_logits, resp], dim=1)
        return self._logits(torch.cat([prep.prompt_embeds, self.embed(x)], dim=1))

    def prefix_pass(self, prep: Prepared) -> tuple[Any, torch.Tensor]:
        from transformers import DynamicCache

        cache = DynamicCache()
        logits = self._logits(prep.prompt_embeds, cache, use_cache=True)
        prep.extra["prefix_kv"] = snapshot_cache(cache)
        return cache, logits

    def trunk_answer_logits(self, prep: Prepared, cache: Any, x: torch.Tensor) -> torch.Tensor:
        """The trunk's logits (1, G, V) for the response ``x`` against the prefix cache, as computed (no
        shift); the cache is left holding the prefix only."""
        p, g = prep.prompt_len, x.shape[1]
        positions = torch.arange(p, p + g, device=x.device).unsqueeze(0)
        logits = self._logits(self.embed(x), cache, position_ids=positions, use_cache=True)
        restore_cache(cache, prep.extra["prefix_kv"])  # drop the step's keys and values (and their graph)
        return logits

    def answer_logits(self, prep: Prepared, cache: Any, x: torch.Tensor) -> torch.Tensor:
        return self.trunk_answer_logits(prep, cache, x)

    def lm_head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.lm().norm(hidden))


# ================================================================================ prompts of a checkpoint
def llava_prompt_builder(tokenizer, template: str):
    """Prompt builder from the repository's own conversation template and ``tokenizer_image_token``."""
    with no_hub_loads():  # LaViDa's conversation.py loads a tokenizer from the hub when imported
        from llava.constants import DEFAULT_IMAGE_TOKEN  # type: ignore
        from llava.conversation import conv_templates  # type: ignore
        from llava.mm_utils import tokenizer_image_token  # type: ignore

    def build(question: str) -> list[int]:
        conv = conv_templates[template].copy()
        conv.tokenizer = tokenizer  # else the template loads one from the hub (copy() drops it), as DCAM sets it
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
        conv.append_message(conv.roles[1], None)
        return list(tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX))

    return build

