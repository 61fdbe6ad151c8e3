"""Train the toy dMLLM on freshly rendered synthetic scenes with LLaDA's masked-diffusion SFT objective.

Objective (LLaDA, Nie et al. 2025, SFT; LaViDa §3): for each sample draw ``t ~ U(0, 1)``, mask every answer
position independently with probability ``p = (1 - eps) t + eps`` (the prompt and image are never masked),
and minimise the cross-entropy on the masked positions weighted by ``1 / p``, summed and divided by the
number of answer positions in the batch.

So that both inference modes of :meth:`ToyDMLLM.make_logits_fn` work, each sample is trained either fully
bidirectional (LLaDA-V / MMaDA inference) or under LaViDa's Prefix-DLM mask (prompt rows cannot see the
answer), chosen per sample.

Everything random flows from one seed: ``torch.manual_seed`` for the initialisation, a numpy Generator for
the scenes (rendered in a fixed order) and a torch Generator for masking, so a run reproduces the bundled
weights on the same machine and thread count.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stages.synth import render_scene
from stages.toy.model import ToyConfig, ToyDMLLM


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of a training run (the defaults produced the bundled weights).

    Attributes
    ----------
    seed : int
        Seeds initialisation, scenes and masks.
    steps, batch_size : int
    lr, weight_decay : float
        AdamW; the learning rate warms up linearly for ``warmup`` steps then follows a cosine to 0.
    warmup : int
    mask_eps : float
        Least masking probability (LLaDA's ``eps``). Larger than LLaDA's 1e-3 so that the ``1 / p`` weight
        of a rarely masked answer stays below 20 and no single token dominates a small batch's gradient.
    prefix_dlm_fraction : float
        Share of samples trained under the Prefix-DLM mask; the rest are fully bidirectional.
    jpeg_prob : float
        Share of scenes passed through a JPEG round trip (the datasets store JPEG).
    jpeg_quality : tuple of 2 int
        Inclusive range of the JPEG quality.
    max_objects : int
        Scenes hold 1..max_objects objects.
    single_object_prob : float
        Share of scenes forced to hold one object (the rest are uniform over 1..max_objects). Shape is the
        slowest thing to learn, and one-object scenes give its gradient without the left-to-right binding.
    threads : int
        torch intra-op threads during training. Fixed because bit-for-bit reproduction needs the same
        thread count; 1 because on a shared 2-core machine two OpenMP threads lose 2-5x to other processes
        (measured: 2.3 s vs 5.0 s per step under load), while uncontended they gain little at this size.
    """

    seed: int = 0
    steps: int = 1600
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    mask_eps: float = 0.05
    prefix_dlm_fraction: float = 0.5
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (75, 95)
    max_objects: int = 3
    single_object_prob: float = 0.3
    threads: int = 1

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.prefix_dlm_fraction <= 1.0:
            raise ValueError(f"prefix_dlm_fraction: must be in [0, 1], got {self.prefix_dlm_fraction}")
        if not 0.0 <= self.single_object_prob <= 1.0:
            raise ValueError(f"single_object_prob: must be in [0, 1], got {self.single_object_prob}")
        if not 0.0 < self.mask_eps < 1.0:
            raise ValueError(f"mask_eps: must be in (0, 1), got {self.mask_eps}")


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode ``image`` (H, W, 3) uint8 as JPEG (4:4:4, like the dataset writer) and decode it."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality), subsampling=0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def answer_ids(model: ToyDMLLM, caption: str) -> list[int]:
    """The answer target: the caption's ids padded with ``<eos>`` to ``model.gen_length``."""
    ids = model.tokenizer.encode(caption)
    if len(ids) > model.gen_length:
        raise ValueError(f"caption: {caption!r} has {len(ids)} tokens, more than gen_length {model.gen_length}")
    return ids + [model.tokenizer.eos_id] * (model.gen_length - len(ids))


def make_batch(model: ToyDMLLM, rng: np.random.Generator, recipe: TrainRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``recipe.batch_size`` scenes.

    Returns
    -------
    pixel_values : Tensor of shape (B, 3, S, S)
    answers : LongTensor of shape (B, gen_length)
    """
    pixels, answers = [], []
    for _ in range(recipe.batch_size):
        single = rng.random() < recipe.single_object_prob
        scene = render_scene(rng, max_objects=1 if single else recipe.max_objects)
        image = scene.image
        if rng.random() < recipe.jpeg_prob:
            image = jpeg_round_trip(image, rng.integers(recipe.jpeg_quality[0], recipe.jpeg_quality[1] + 1))
        pixels.append(model.preprocess(image))
        answers.append(answer_ids(model, scene.caption))
    return torch.cat(pixels), torch.tensor(answers)


def masked_diffusion_loss(
    model: ToyDMLLM,
    pixel_values: torch.Tensor,
    answers: torch.Tensor,
    *,
    generator: torch.Generator,
    mask_eps: float,
    prefix_dlm_fraction: float,
) -> torch.Tensor:
    """LLaDA's SFT loss on one batch (module docstring).

    Parameters
    ----------
    pixel_values : Tensor of shape (B, 3, S, S)
    answers : LongTensor of shape (B, G)
    generator : torch.Generator
        Draws the masking ratios, the masks and the attention choice.

    Returns
    -------
    Tensor, scalar
    """
    batch, g = answers.shape
    t = torch.rand(batch, 1, generator=generator)
    p_mask = (1.0 - mask_eps) * t + mask_eps
    masked = torch.rand(batch, g, generator=generator) < p_mask
    noisy = torch.where(masked, torch.full_like(answers, model.tokenizer.mask_id), answers)

    attention = model.prefix_dlm_mask(batch).clone()
    bidirectional = torch.rand(batch, generator=generator) >= prefix_dlm_fraction
    attention[bidirectional] = True

    prefix, _ = model.embed_prompt(pixel_values)
    logits, _ = model.lm_forward(torch.cat([prefix, model.embed_tokens(noisy)], dim=1), attention_mask=attention)
    answer_logits = logits[:, prefix.shape[1] :]
    token_loss = F.cross_entropy(answer_logits[masked], answers[masked], reduction="none")
    return (token_loss / p_mask.expand(-1, g)[masked]).sum() / (batch * g)


def one_pass_accuracy(model: ToyDMLLM, pixel_values: torch.Tensor, answers: torch.Tensor) -> float:
    """Share of samples whose whole answer is the argmax of one fully masked, bidirectional pass."""
    with torch.no_grad():
        prefix, _ = model.embed_prompt(pixel_values)
        masks = torch.full_like(answers, model.tokenizer.mask_id)
        logits, _ = model.lm_forward(torch.cat([prefix, model.embed_tokens(masks)], dim=1))
        guess = logits[:, prefix.shape[1] :].argmax(-1)
    return (guess == answers).all(-1).float().mean().item()


def learning_rate(step: int, recipe: TrainRecipe) -> float:
    """Linear warm-up then cosine decay to 0, at ``step`` (0-based)."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1.0 + np.cos(np.pi * progress))


def train(
    recipe: TrainRecipe = TrainRecipe(),
    config: ToyConfig | None = None,
    *,
    on_step: Callable[[int, float, float | None], None] | None = None,
    eval_every: int = 100,
) -> ToyDMLLM:
    """Train a :class:`ToyDMLLM` from scratch.

    Parameters
    ----------
    recipe : TrainRecipe
    config : ToyConfig, optional
        Model dimensions; default :class:`ToyConfig()`.
    on_step : callable, optional
        Called after every step with ``(step, loss, accuracy)``; ``accuracy`` is the one-pass exact match
        on 128 held-out scenes every ``eval_every`` steps and None otherwise.

    Returns
    -------
    ToyDMLLM
        In eval mode; ``config.training`` records the recipe, the wall and CPU time (the CPU time, summed over
        threads, shows how much of the wall time went to other processes on a shared machine) and the last
        held-out accuracy.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        return _train(recipe, config, on_step=on_step, eval_every=eval_every)
    finally:
        torch.set_num_threads(threads)


def _train(recipe, config, *, on_step, eval_every) -> ToyDMLLM:
    torch.manual_seed(recipe.seed)
    model = ToyDMLLM(config or ToyConfig())
    scenes = np.random.default_rng(recipe.seed)
    masks = torch.Generator().manual_seed(recipe.seed)
    held_out = make_batch(model, np.random.default_rng([recipe.seed, 1]), TrainRecipe(batch_size=128))

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.99),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    accuracy = None
    model.train()
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        pixel_values, answers = make_batch(model, scenes, recipe)
        loss = masked_diffusion_loss(
            model,
            pixel_values,
            answers,
            generator=masks,
            mask_eps=recipe.mask_eps,
            prefix_dlm_fraction=recipe.prefix_dlm_fraction,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step_accuracy = None
        if (step + 1) % eval_every == 0 or step + 1 == recipe.steps:
            model.eval()
            accuracy = step_accuracy = one_pass_accuracy(model, *held_out)
            model.train()
        if on_step is not None:
            on_step(step, loss.item(), step_accuracy)
    model.eval()
    model.config.training = {
        "recipe": asdict(recipe),
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "torch_threads": torch.get_num_threads(),
        "one_pass_exact_match": accuracy,
    }
    return model
