"""What a model family supplies to the capture stage.

A :class:`ModelAdapter` hides how a family builds its multimodal sequence and
runs its forward passes; the capture loop (``stages.capture.run``) only sees
response-token logits, hookable blocks and an image-span layout. A new family
is one file with a subclass plus one entry in :data:`stages.capture.registry.FAMILIES`;
:func:`check_adapter` validates what the subclass declares when the registry loads it.

Adapters touch the model through plain torch modules and attributes, so they
also work inside a model's own environment (its repository's code and pinned
transformers version).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from schemas.errors import DcamError
from schemas.span import SpanLayout
from stages.dmllm.sampler import REMASKING, SCHEDULES

#: The sampler modes a family may declare: full recompute every step, or the prompt encoded once (Prefix-DLM).
MODES = ("full", "prefix-cache")
#: The samplers a family may declare (see :attr:`ModelAdapter.sampler`).
SAMPLERS = ("masked", "uniform-noise")


@dataclass
class Prepared:
    """One sample's model input: the prompt (with the image) and where the image tokens are.

    Attributes
    ----------
    prompt_embeds : Tensor of shape (1, P, d)
        Embeddings of the prompt with image features in place, for continuous-feature models.
    prompt_ids : Tensor of shape (1, P) or None
        Token ids of the prompt, for models whose image is discrete tokens (MMaDA).
    span : SpanLayout
        Image-token span in the full sequence (prompt positions).
    extra : dict
        Anything else the family needs for its forwards (e.g. pixel values).
    """

    prompt_embeds: torch.Tensor | None
    prompt_ids: torch.Tensor | None
    span: SpanLayout
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_len(self) -> int:
        t = self.prompt_embeds if self.prompt_embeds is not None else self.prompt_ids
        return int(t.shape[1])


class ModelAdapter(abc.ABC):
    """Interface of a dMLLM family for capture: the declared protocol every family implements.

    Subclasses set :attr:`family`, :attr:`mask_id`, :attr:`eos_id`, :attr:`gen_length`, override the
    declarations below where the family's upstream differs, and implement the abstract methods. Consumers
    (capture, the faithfulness stage, the CLI) read the declarations by plain attribute access.

    An abstract base class rather than a ``typing.Protocol``: the families share real behaviour
    (:meth:`logits_fn`, :meth:`response_logits_full`, :attr:`default_steps` from :attr:`step_ratio`) and
    defaults for every declaration, which a Protocol cannot carry; and a runtime-checkable Protocol checks
    only that names exist, while :func:`check_adapter` checks their values.

    Attributes
    ----------
    modes : tuple of str
        Sampler modes the family supports (of :data:`MODES`), its own first.
    default_mode : str
        The mode used when none is asked for; one of ``modes``.
    default_steps : int
        Denoising steps by default (a property: ``step_ratio`` x ``gen_length`` unless a family fixes it).
    default_schedule, default_remasking, default_temperature, default_top_p, step_ratio
        The family's upstream sampler defaults.
    sampler : str
        Which sampler generates (of :data:`SAMPLERS`).
    replayable : bool
        Whether a word's score can be recomputed on a perturbed image from what the capture store keeps
        (the faithfulness stage); False for a family whose steps read inputs the store does not keep.
    batched_prompts : bool
        Whether :meth:`full_logits` takes a batch of prompts of one length (many perturbed images in one
        forward); False scores one image per forward, which is always correct.
    """

    family: str = ""
    #: Dream-style models predict the next position: logits for response position p come from p - 1.
    logit_shift: int = 0
    mask_id: int
    eos_id: int
    gen_length: int
    #: Token ids never sampled (mask, image placeholder, ...).
    forbid_ids: tuple[int, ...] = ()
    #: Sampler modes the family supports, its own first (the default).
    modes: tuple[str, ...] = ("full", "prefix-cache")
    default_mode: str = "full"
    #: The family's upstream sampler defaults: commit schedule, remasking, temperature, nucleus, steps per token.
    default_schedule: str = "even"
    default_remasking: str = "low_confidence"
    default_temperature: float = 0.0
    default_top_p: float = 1.0
    step_ratio: float = 1.0
    #: The family's sampler: "masked" (:func:`stages.dmllm.sampler.masked_diffusion_sample`) or "uniform-noise"
    #: (:func:`stages.dmllm.uniform.uniform_noise_sample`; its forwards then take ``conditioning=``, the
    #: previous step's logits, and the adapter has ``vocab_size``).
    sampler: str = "masked"
    #: The faithfulness stage can recompute a word's score on a perturbed image from the stored trajectory.
    replayable: bool = True
    #: ``full_logits`` takes a batch of prompts of one length (prompt embeddings concatenated on axis 0).
    batched_prompts: bool = False

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @property
    def default_steps(self) -> int:
        """Denoising steps by default: ``step_ratio`` of the generation length (LaViDa's ``predict.py``: 0.5)."""
        return max(1, int(self.gen_length * self.step_ratio))

    @property
    def device(self) -> torch.device:
        """The model's device: every tensor handed to the model is built or moved there."""
        return next(self.model.parameters()).device

    # ------------------------------------------------------------- structure
    @abc.abstractmethod
    def blocks(self) -> Sequence[torch.nn.Module]:
        """The transformer blocks that can be hooked, in order."""

    def block_output(self, output: Any) -> torch.Tensor:
        """The hidden state inside a block's forward output (``output[0]`` for tuples)."""
        return output[0] if isinstance(output, (tuple, list)) else output

    def prepare_for_backward(self) -> None:
        """Switch off anything that breaks gradients through hooks (activation checkpointing, ...)."""
        self.model.eval()

    # ------------------------------------------------------------- inputs
    @abc.abstractmethod
    def prepare(self, image: np.ndarray, prompt: str | None = None) -> Prepared:
        """Build the prompt for one RGB image of shape (H, W, 3) uint8."""

    @abc.abstractmethod
    def default_prompt(self) -> str:
        """The prompt used when the dataset gives none."""

    # ------------------------------------------------------------- forwards
    @abc.abstractmethod
    def full_logits(self, prep: Prepared, x: torch.Tensor, *, prefix_dlm_mask: bool = False) -> torch.Tensor:
        """Forward over prompt + response ``x`` (1, G); returns logits for all positions (1, P + G, V).

        ``prefix_dlm_mask`` applies the Prefix-DLM attention mask (prompt rows cannot see
        response columns), under which a full pass equals the prefix-cache passes.
        """

    @abc.abstractmethod
    def prefix_pass(self, prep: Prepared) -> tuple[Any, torch.Tensor | None]:
        """Forward over the prompt alone with a cache (LaViDa Prefix-DLM).

        Returns the cache and the prompt's logits (1, P, V), or None where the family's
        prefix pass computes no logits.
        """

    @abc.abstractmethod
    def answer_logits(self, prep: Prepared, cache: Any, x: torch.Tensor) -> torch.Tensor:
        """Forward over the response ``x`` (1, G) against the prefix cache; logits (1, G, V).

        Must leave ``cache`` as it found it (crop what the step appended).
        """

    def response_logits_full(self, prep: Prepared, x: torch.Tensor) -> torch.Tensor:
        """Logits (1, G, V) for the response positions from a full pass."""
        logits = self.full_logits(prep, x)
        p = prep.prompt_len - self.logit_shift
        return logits[:, p : p + x.shape[1]]

    def logits_fn(self, prep: Prepared, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The sampler's step function for ``mode`` in {"full", "prefix-cache"}."""
        if mode == "full":
            return lambda x: self.response_logits_full(prep, x)
        if mode == "prefix-cache":
            cache, _ = self.prefix_pass(prep)
            return lambda x: self.answer_logits(prep, cache, x)
        raise ValueError(f"mode must be 'full' or 'prefix-cache', got {mode!r}")

    def lm_head_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Vocabulary logits from final hidden states, for TAM's logit-lens map (None if unavailable)."""
        return None

    # ------------------------------------------------------------- text
    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens skipped."""

    @abc.abstractmethod
    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        """Group generated ids into words: [(word, [response positions]), ...], specials dropped."""


def check_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Check what a family's adapter declares; returns it unchanged.

    Parameters
    ----------
    adapter : ModelAdapter
        A loaded adapter (its ``gen_length`` set, so :attr:`~ModelAdapter.default_steps` can be read).

    Returns
    -------
    ModelAdapter
        ``adapter``.

    Raises
    ------
    DcamError
        One line naming the family and every declaration that is missing or out of range.
    """
    name = getattr(adapter, "family", "") or type(adapter).__name__
    if not isinstance(adapter, ModelAdapter):
        raise DcamError(f"family {name}: the adapter {type(adapter).__name__} is not a ModelAdapter")
    problems = []
    if not adapter.family:
        problems.append("family is empty")
    modes = adapter.modes
    if not isinstance(modes, tuple) or not modes or any(m not in MODES for m in modes):
        problems.append(f"modes must be a non-empty tuple of {MODES}, got {modes!r}")
    elif adapter.default_mode not in modes:
        problems.append(f"default_mode {adapter.default_mode!r} is not one of modes {modes}")
    for attr in ("mask_id", "eos_id", "gen_length"):
        if not isinstance(getattr(adapter, attr, None), (int, np.integer)):
            problems.append(f"{attr} must be an int, got {getattr(adapter, attr, None)!r}")
    if isinstance(getattr(adapter, "gen_length", None), (int, np.integer)):  # default_steps may derive from it
        steps = adapter.default_steps
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            problems.append(f"default_steps must be a positive int, got {steps!r}")
    if not adapter.step_ratio > 0:
        problems.append(f"step_ratio must be > 0, got {adapter.step_ratio!r}")
    if adapter.sampler not in SAMPLERS:
        problems.append(f"sampler must be one of {SAMPLERS}, got {adapter.sampler!r}")
    if adapter.default_schedule not in SCHEDULES:
        problems.append(f"default_schedule must be one of {SCHEDULES}, got {adapter.default_schedule!r}")
    if adapter.default_remasking not in REMASKING:
        problems.append(f"default_remasking must be one of {REMASKING}, got {adapter.default_remasking!r}")
    if not adapter.default_temperature >= 0:
        problems.append(f"default_temperature must be >= 0, got {adapter.default_temperature!r}")
    if not 0 < adapter.default_top_p <= 1:
        problems.append(f"default_top_p must be in (0, 1], got {adapter.default_top_p!r}")
    for attr in ("replayable", "batched_prompts"):
        if not isinstance(getattr(adapter, attr), bool):
            problems.append(f"{attr} must be a bool, got {getattr(adapter, attr)!r}")
    if problems:
        raise DcamError(f"family {name}: the adapter {type(adapter).__name__} declares: {'; '.join(problems)}")
    return adapter


def snapshot_cache(cache: Any) -> dict[str, Any]:
    """References to a transformers ``DynamicCache``'s per-layer keys and values (and its token count).

    Both interfaces are read: ``cache.layers`` (transformers >= 4.56, this environment) and the
    ``key_cache`` / ``value_cache`` lists of the families' pinned transformers (LaViDa: 4.50.3).
    """
    if hasattr(cache, "layers"):
        kv = [(layer.keys, layer.values) for layer in cache.layers]
    else:
        kv = list(zip(cache.key_cache, cache.value_cache))
    return {"kv": kv, "seen_tokens": getattr(cache, "_seen_tokens", None)}


def restore_cache(cache: Any, snapshot: dict[str, Any]) -> None:
    """Put back the prefix keys and values after a step appended to them.

    ``cache.crop`` would slice the step's concatenation, keeping every step's graph alive
    through the cache: under gradients memory and backward time would then grow with the
    number of steps. Restoring the prefix tensors drops each step's graph with its logits.
    """
    if hasattr(cache, "layers"):
        for layer, (keys, values) in zip(cache.layers, snapshot["kv"]):
            layer.keys, layer.values = keys, values
    else:
        cache.key_cache[:] = [k for k, _ in snapshot["kv"]]
        cache.value_cache[:] = [v for _, v in snapshot["kv"]]
    if snapshot["seen_tokens"] is not None:
        cache._seen_tokens = snapshot["seen_tokens"]
