"""Train the toy dMLLM on freshly rendered synthetic scenes with LLaDA's masked-diffusion SFT objective.

Objective (LLaDA, Nie et al. 2025, SFT; LaViDa §3): for each sample draw ``t ~ U(0, 1)``, mask every answer
position independently with probability ``p = (1 - eps) t + eps`` (the prompt and image are never masked),
and minimise the cross-entropy on the masked positions weighted by ``1 / p``, summed and divided by the
number of answer positions in the batch.

On top of it, an auxiliary loss (:func:`patch_labels`, :class:`AuxHead`) asks each image token, after
``aux_layer`` LM blocks, for the colour, shape and left-to-right rank of the object it lies on. It is a
training aid only: the head is not part of the model or its weights. Without it, the caption loss alone
never taught shape in the 30-minute budget (shape stayed at chance in every caption-only run); with it,
shape and the left-to-right binding are learned (numbers in the README and ``config.json``).

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
from torch import nn
from PIL import Image

from stages.synth import COLOURS, MAX_OBJECTS, SHAPES, Scene, render_scene
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
        Share of scenes forced to hold one object (the rest are uniform over 1..max_objects). 0 by default:
        with the auxiliary patch loss shape is learned anyway, and the errors left are left-to-right binding
        errors (a colour of another object), which only scenes with several objects teach.
    aux_weight : float
        Weight of the auxiliary patch loss (:func:`patch_labels`); 0 trains on the caption loss alone.
    aux_layer : int
        The auxiliary head reads the image-token hidden states after this many LM blocks.
    threads : int
        torch intra-op threads during training. Fixed because bit-for-bit reproduction needs the same
        thread count. 2, the cores of the target machine: uncontended, a step takes 0.53 s on 2 threads
        against 0.69 s on 1 (measured); on a busy machine 2 threads can lose 2-5x, so train on a quiet one.
    """

    seed: int = 0
    steps: int = 2600
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    mask_eps: float = 0.05
    prefix_dlm_fraction: float = 0.5
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (75, 95)
    max_objects: int = 3
    single_object_prob: float = 0.0
    aux_weight: float = 1.0
    aux_layer: int = 2
    threads: int = 2

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.prefix_dlm_fraction <= 1.0:
            raise ValueError(f"prefix_dlm_fraction: must be in [0, 1], got {self.prefix_dlm_fraction}")
        if not 0.0 <= self.single_object_prob <= 1.0:
            raise ValueError(f"single_object_prob: must be in [0, 1], got {self.single_object_prob}")
        if self.aux_weight < 0.0:
            raise ValueError(f"aux_weight: must be >= 0, got {self.aux_weight}")
        if self.aux_layer < 1:
            raise ValueError(f"aux_layer: must be >= 1, got {self.aux_layer}")
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


#: Classes of the auxiliary patch targets: background + colours, background + shapes, background + ordinal.
AUX_CLASSES: tuple[int, int, int] = (1 + len(COLOURS), 1 + len(SHAPES), 1 + MAX_OBJECTS)

#: Least share of a patch an object must cover for the patch to be labelled with that object.
AUX_MIN_COVER = 0.25


def patch_labels(scene: Scene, grid: tuple[int, int]) -> np.ndarray:
    """Per-patch targets of the auxiliary loss: the colour, shape and left-to-right rank of the object in each patch.

    A patch takes the object that covers most of it, if that object covers at least :data:`AUX_MIN_COVER`
    of it; otherwise it is background (class 0 of every target).

    Why: the caption loss alone gives a few tokens of signal per image, and a tiny LM trained for minutes
    learns to read colour from one salient patch but never to pool an object's patches into its shape
    (shape stayed at chance in every caption-only run). Asking each image token, half-way up the LM, to
    name its own object's colour, shape and rank among the objects makes the image tokens gather their
    object's outline from their neighbours, where a later caption token can read it by rank. The head is
    used in training only and is not part of the saved model.

    Returns
    -------
    ndarray of shape (3, grid[0] * grid[1]), int64
        Rows: colour (1 + index in COLOURS), shape (1 + index in SHAPES), rank (1 = leftmost), row-major.
    """
    h, w = scene.image.shape[:2]
    gh, gw = grid
    cover = np.stack(
        [o.mask.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3)).reshape(-1) for o in scene.objects]
    )  # (objects, patches)
    best = cover.argmax(axis=0)
    inside = cover.max(axis=0) >= AUX_MIN_COVER
    labels = np.zeros((3, gh * gw), dtype=np.int64)
    for rank, o in enumerate(scene.objects):
        here = inside & (best == rank)
        labels[0, here] = 1 + COLOURS.index(o.colour)
        labels[1, here] = 1 + SHAPES.index(o.shape)
        labels[2, here] = 1 + rank
    return labels


def make_batch(
    model: ToyDMLLM, rng: np.random.Generator, recipe: TrainRecipe
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render ``recipe.batch_size`` scenes.

    Returns
    -------
    pixel_values : Tensor of shape (B, 3, S, S)
    answers : LongTensor of shape (B, gen_length)
    labels : LongTensor of shape (B, 3, grid[0] * grid[1])
        :func:`patch_labels` of each scene.
    """
    pixels, answers, labels = [], [], []
    for _ in range(recipe.batch_size):
        single = rng.random() < recipe.single_object_prob
        scene = render_scene(rng, size=model.config.image_size, max_objects=1 if single else recipe.max_objects)
        image = scene.image
        if rng.random() < recipe.jpeg_prob:
            image = jpeg_round_trip(image, rng.integers(recipe.jpeg_quality[0], recipe.jpeg_quality[1] + 1))
        pixels.append(model.preprocess(image))
        answers.append(answer_ids(model, scene.caption))
        labels.append(patch_labels(scene, model.grid))
    return torch.cat(pixels), torch.tensor(answers), torch.from_numpy(np.stack(labels))


class AuxHead(nn.Module):
    """Training-only linear heads over image-token hidden states: colour, shape and rank of the patch's object."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, sum(AUX_CLASSES))

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean of the three cross-entropies; ``hidden`` (B, N, d), ``labels`` (B, 3, N).

        Colour and shape are scored on object patches only (background patches, most of the image, would
        otherwise dominate them); rank is scored everywhere, its class 0 marking background.
        """
        colour, shape, rank = (lg.flatten(0, 1) for lg in self.proj(hidden).split(AUX_CLASSES, dim=-1))
        colour_labels, shape_labels, rank_labels = (lb.flatten() for lb in labels.unbind(1))
        total = F.cross_entropy(rank, rank_labels)
        if (colour_labels > 0).any():
            total = total + F.cross_entropy(colour, colour_labels, ignore_index=0)
            total = total + F.cross_entropy(shape, shape_labels, ignore_index=0)
        return total / 3


def masked_diffusion_loss(
    model: ToyDMLLM,
    pixel_values: torch.Tensor,
    answers: torch.Tensor,
    *,
    generator: torch.Generator,
    mask_eps: float,
    prefix_dlm_fraction: float,
    labels: torch.Tensor | None = None,
    aux_head: AuxHead | None = None,
    aux_layer: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA's SFT loss on one batch (module docstring), and the auxiliary patch loss.

    Parameters
    ----------
    pixel_values : Tensor of shape (B, 3, S, S)
    answers : LongTensor of shape (B, G)
    generator : torch.Generator
        Draws the masking ratios, the masks and the attention choice.
    labels : LongTensor of shape (B, 3, N), optional
        :func:`patch_labels`; with ``aux_head``, the auxiliary loss is computed on the samples trained under
        the Prefix-DLM mask, whose image tokens cannot see the (partly unmasked) answer.
    aux_head : AuxHead, optional
    aux_layer : int
        Number of LM blocks before the hidden states the auxiliary head reads.

    Returns
    -------
    loss : Tensor, scalar
        The masked-diffusion loss.
    aux_loss : Tensor, scalar
        The auxiliary loss, 0 without ``aux_head`` or without a Prefix-DLM sample in the batch.
    """
    batch, g = answers.shape
    t = torch.rand(batch, 1, generator=generator)
    p_mask = (1.0 - mask_eps) * t + mask_eps
    masked = torch.rand(batch, g, generator=generator) < p_mask
    noisy = torch.where(masked, torch.full_like(answers, model.tokenizer.mask_id), answers)

    attention = model.prefix_dlm_mask(batch).clone()
    bidirectional = torch.rand(batch, generator=generator) >= prefix_dlm_fraction
    attention[bidirectional] = True

    prefix, (start, end) = model.embed_prompt(pixel_values)
    seen: list[torch.Tensor] = []
    handle = None
    if aux_head is not None:
        handle = model.language_model.layers[aux_layer - 1].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        logits, _ = model.lm_forward(torch.cat([prefix, model.embed_tokens(noisy)], dim=1), attention_mask=attention)
    finally:
        if handle is not None:
            handle.remove()
    answer_logits = logits[:, prefix.shape[1] :]
    token_loss = F.cross_entropy(answer_logits[masked], answers[masked], reduction="none")
    loss = (token_loss / p_mask.expand(-1, g)[masked]).sum() / (batch * g)
    aux_loss = loss.new_zeros(())
    prefix_rows = ~bidirectional
    if aux_head is not None and labels is not None and prefix_rows.any():
        aux_loss = aux_head.loss(seen[0][prefix_rows, start:end], labels[prefix_rows])
    return loss, aux_loss


def one_pass_metrics(model: ToyDMLLM, pixel_values: torch.Tensor, answers: torch.Tensor) -> dict[str, float]:
    """Accuracy of one fully masked, bidirectional pass's argmax.

    Returns
    -------
    dict
        ``exact`` (share of samples whose whole answer is right), ``colour`` and ``shape`` (share of colour
        and shape words of the answers predicted right).
    """
    tok = model.tokenizer
    with torch.no_grad():
        prefix, _ = model.embed_prompt(pixel_values)
        masks = torch.full_like(answers, tok.mask_id)
        logits, _ = model.lm_forward(torch.cat([prefix, model.embed_tokens(masks)], dim=1))
        guess = logits[:, prefix.shape[1] :].argmax(-1)
    right = guess == answers
    colour_ids = torch.tensor(tok.encode(" ".join(COLOURS)))
    shape_ids = torch.tensor(tok.encode(" ".join(SHAPES)))
    is_colour, is_shape = torch.isin(answers, colour_ids), torch.isin(answers, shape_ids)
    return {
        "exact": right.all(-1).float().mean().item(),
        "colour": right[is_colour].float().mean().item(),
        "shape": right[is_shape].float().mean().item(),
    }


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
        Called after every step with ``(step, losses, metrics)``: ``losses`` holds ``loss`` (masked
        diffusion) and ``aux`` (auxiliary patch loss); ``metrics`` is :func:`one_pass_metrics` on 128
        held-out scenes every ``eval_every`` steps and None otherwise.

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
    if recipe.aux_layer > model.config.num_layers:
        raise ValueError(f"aux_layer: {recipe.aux_layer} is past the model's {model.config.num_layers} LM blocks")
    aux_head = AuxHead(model.config.hidden_size) if recipe.aux_weight > 0 else None
    scenes = np.random.default_rng(recipe.seed)
    masks = torch.Generator().manual_seed(recipe.seed)
    held_out_pixels, held_out_answers, _ = make_batch(model, np.random.default_rng([recipe.seed, 1]), TrainRecipe(batch_size=128))

    named = list(model.named_parameters()) + ([] if aux_head is None else list(aux_head.named_parameters(prefix="aux")))
    params = [p for _, p in named]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.99),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = None
    model.train()
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        pixel_values, answers, labels = make_batch(model, scenes, recipe)
        loss, aux_loss = masked_diffusion_loss(
            model,
            pixel_values,
            answers,
            generator=masks,
            mask_eps=recipe.mask_eps,
            prefix_dlm_fraction=recipe.prefix_dlm_fraction,
            labels=labels,
            aux_head=aux_head,
            aux_layer=recipe.aux_layer,
        )
        optimizer.zero_grad(set_to_none=True)
        (loss + recipe.aux_weight * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step_metrics = None
        if (step + 1) % eval_every == 0 or step + 1 == recipe.steps:
            model.eval()
            metrics = step_metrics = one_pass_metrics(model, held_out_pixels, held_out_answers)
            model.train()
        if on_step is not None:
            on_step(step, {"loss": loss.item(), "aux": aux_loss.item()}, step_metrics)
    model.eval()
    model.config.training = {
        "recipe": asdict(recipe),
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "torch_threads": torch.get_num_threads(),
        "one_pass_exact_match": None if metrics is None else metrics["exact"],
        "one_pass_colour": None if metrics is None else metrics["colour"],
        "one_pass_shape": None if metrics is None else metrics["shape"],
    }
    return model
