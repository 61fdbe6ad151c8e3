"""Masked-diffusion sampling with low-confidence remasking (LLaDA, Nie et al. 2025, Alg. 5; semi-autoregressive
blocks as in LLaDA's ``generate.py``, reused by LaViDa, LLaDA-V and MMaDA).

The sampler knows nothing about the model: it calls ``logits_fn(x)`` on the current answer state ``x`` of shape
(1, gen_length) and gets logits of shape (1, gen_length, V). It records the whole trajectory (state before
every step, which positions were unmasked when and with what confidence) so a capture stage can replay any
step with gradients.

Per step, within the current block: predict every masked position (argmax of the logits, with Gumbel noise
when ``temperature > 0``), score each prediction (its softmax probability for ``"low_confidence"``, a uniform
draw for ``"random"``, the negative entropy of the tempered, top-p filtered distribution for Dream's
``"entropy"``, :func:`entropy_predictions`), and commit the ``k`` highest-scoring masked positions of the
block, where ``k`` follows the schedule: LLaDA's even split of the block's masked count over its steps
(:func:`num_transfer_tokens`), LaViDa's ``shift`` schedule (:func:`shift_transfer_tokens`) or Dream's
(:func:`dream_transfer_tokens`).
Positions after the current block score −inf and are never committed early.

Devices: every tensor the sampler builds lives on ``device`` (the model's); the noise is drawn from a CPU
generator and moved there, so one seed gives one trajectory on any device. The loop never reads a value back
to the host (a block's masked count is its length: later positions are never committed early).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

REMASKING = ("low_confidence", "random", "entropy")
#: How a block's masked count is split over its steps.
SCHEDULES = ("even", "shift", "dream")
#: LaViDa's ``predict.py`` shift (``schedule_kwargs=dict(shift=3)``).
SHIFT = 3.0


@dataclass
class Trajectory:
    """What :func:`masked_diffusion_sample` did.

    Attributes
    ----------
    states : LongTensor of shape (steps + 1, gen_length)
        ``states[s]`` is the answer before step ``s``; ``states[steps]`` is the final answer.
    unmask_step : LongTensor of shape (gen_length,)
        Step at which each position was committed.
    confidence : FloatTensor of shape (gen_length,)
        The score (probability for ``"low_confidence"``) each position had when it was committed.
    transfer : list of LongTensor
        ``transfer[s]`` holds the positions committed at step ``s`` (ascending).
    final : LongTensor of shape (gen_length,)
        The answer: ``states[-1]`` for this sampler (the last step's argmax for the uniform-noise one).
    conditioning : list of (Tensor or None)
        Samplers with self-conditioning (:mod:`stages.dmllm.uniform`): step s's conditioning input, which a
        replay of step s needs; empty otherwise. Left on the model's device by :meth:`to`.
    """

    states: torch.Tensor
    unmask_step: torch.Tensor
    confidence: torch.Tensor
    transfer: list[torch.Tensor]
    final: torch.Tensor
    conditioning: list = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Number of denoising steps."""
        return len(self.transfer)

    def to(self, device: torch.device | str) -> "Trajectory":
        """The same trajectory with its tokens and scores on ``device`` (``"cpu"`` to read it back); the
        conditioning inputs stay where the model reads them."""
        return Trajectory(
            states=self.states.to(device), unmask_step=self.unmask_step.to(device),
            confidence=self.confidence.to(device), transfer=[t.to(device) for t in self.transfer],
            final=self.final.to(device), conditioning=self.conditioning,
        )


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """How many of a block's masked positions to commit at each of its steps (LLaDA ``get_num_transfer_tokens``).

    The count is split evenly; the remainder goes to the first steps.

    Examples
    --------
    >>> num_transfer_tokens(8, 3)
    [3, 3, 2]
    """
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    base, remainder = divmod(num_masked, steps)
    return [base + 1 if i < remainder else base for i in range(steps)]


def uniform_on(shape: Sequence[int], device: torch.device | str, generator: torch.Generator | None) -> torch.Tensor:
    """Float64 uniform draws of ``shape`` from ``generator`` on the CPU, moved to ``device``.

    Drawing on the CPU makes a seed give the same numbers on every device (a CUDA generator draws others,
    and a CPU generator cannot draw on CUDA).
    """
    return torch.rand(tuple(shape), dtype=torch.float64, generator=generator).to(device)


def shift_transfer_tokens(num_masked: int, steps: int, shift: float = SHIFT) -> list[int]:
    """How many positions to commit at each step under LaViDa's ``shift`` schedule.

    LaViDa ``generate.py`` (``get_num_transfer_tokens_sch``, ``logit_normal_schedule``): the fraction
    unmasked after step i of k = min(steps, num_masked) is ``sigma(t) = shift t / (1 + (shift - 1) t)`` at
    ``t = i / k``; each step commits the increase of ``floor(sigma * num_masked)``, at least 1, the excess taken
    off the largest-first steps one at a time in order; the counts run in reverse (few first, many last).
    Steps beyond ``num_masked`` commit nothing.

    Examples
    --------
    >>> shift_transfer_tokens(8, 4)
    [1, 1, 2, 4]
    """
    k = min(steps, num_masked)
    if k == 0:
        return [0] * steps
    t = torch.linspace(0, 1, k + 1)  # float32, as upstream
    cumulative = (shift * t / (1 + (shift - 1) * t) * num_masked).to(torch.int64)
    counts = (cumulative[1:] - cumulative[:-1]).clamp(min=1).tolist()
    excess, j = sum(counts) - num_masked, 0
    while excess > 0:
        if counts[j % k] > 1:
            counts[j % k] -= 1
            excess -= 1
        j += 1
    return counts[::-1] + [0] * (steps - k)


def dream_transfer_tokens(num_masked: int, steps: int, eps: float = 1e-3) -> list[int]:
    """How many positions to commit at each step under Dream's schedule (``generation_utils._sample``).

    Time runs from 1 to ``eps`` in ``steps`` equal intervals; the step from ``t`` to ``s`` commits
    ``int(m * (1 - s / t))`` of the ``m`` positions still masked, the last step all that remain.

    Examples
    --------
    >>> dream_transfer_tokens(8, 4)
    [1, 2, 2, 3]
    """
    t = torch.linspace(1, eps, steps + 1)  # float32, as upstream
    counts, left = [], num_masked
    for i in range(steps):
        k = left if i == steps - 1 else int(torch.tensor(left) * (1 - t[i + 1] / t[i]))
        counts.append(k)
        left -= k
    return counts


def transfer_schedule(num_masked: int, steps: int, schedule: str = "even") -> list[int]:
    """Commit counts of a block's steps under ``schedule`` (one of :data:`SCHEDULES`)."""
    if schedule == "shift":
        return shift_transfer_tokens(num_masked, steps)
    if schedule == "dream":
        return dream_transfer_tokens(num_masked, steps)
    if schedule == "even":
        return num_transfer_tokens(num_masked, steps)
    raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep, per row, the most probable tokens up to and including the one whose cumulative
    probability first exceeds ``top_p``; the others get −inf."""
    if top_p >= 1:
        return logits
    ordered, order = logits.sort(dim=-1, descending=True)
    beyond = torch.softmax(ordered, dim=-1).cumsum(-1) > top_p
    drop = torch.zeros_like(beyond)
    drop[..., 1:] = beyond[..., :-1]
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


def entropy_predictions(logits: torch.Tensor, temperature: float, top_p: float,
                        generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``entropy`` algorithm (``sample_tokens(..., neg_entropy=True)``): tokens and their scores.

    The logits are divided by ``temperature`` (when > 0) and nucleus-filtered (``top_p``); a token is drawn
    from the resulting distribution (Gumbel-max with :func:`uniform_on`'s CPU draws, where Dream samples a
    ``Categorical``: the same distribution, another random stream) or taken greedily at temperature 0; its
    score is the distribution's negative entropy, so the most certain positions are committed first.

    Returns
    -------
    x0 : LongTensor, logits' shape without the last axis
    score : float64 tensor of the same shape
    """
    scaled = logits.to(torch.float64)
    if temperature > 0:
        scaled = scaled / temperature
    scaled = top_p_filter(scaled, top_p)
    probs = torch.softmax(scaled, dim=-1)
    if temperature > 0:
        x0 = (scaled - torch.log(-torch.log(uniform_on(scaled.shape, scaled.device, generator)))).argmax(-1)
    else:
        x0 = probs.argmax(-1)
    return x0, (probs * torch.log(probs + 1e-10)).sum(-1)


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel-max perturbation of ``logits`` as in LLaDA: ``exp(logits) / (-log u) ** temperature`` in float64.

    Its argmax is a sample from ``softmax(logits / temperature)``; ``temperature == 0`` returns ``logits``.
    ``u`` comes from :func:`uniform_on` (CPU generator, moved to the logits' device).
    """
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    u = uniform_on(logits.shape, logits.device, generator)
    return logits.exp() / (-torch.log(u)) ** temperature


def validate_schedule(
    *, gen_length: int, steps: int, block_length: int, temperature: float = 0.0, remasking: str = "low_confidence",
    schedule: str = "even", top_p: float = 1.0,
) -> int:
    """Check the sampler's schedule arguments and return the number of blocks.

    Raises
    ------
    ValueError
        Naming the bad parameter (see :func:`masked_diffusion_sample`).
    """
    if gen_length < 1:
        raise ValueError(f"gen_length: must be >= 1, got {gen_length}")
    if block_length < 1 or gen_length % block_length:
        raise ValueError(f"block_length: must divide gen_length {gen_length}, got {block_length}")
    num_blocks = gen_length // block_length
    if steps < 1 or steps % num_blocks:
        raise ValueError(f"steps: must be a positive multiple of the number of blocks {num_blocks}, got {steps}")
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking: expected one of {REMASKING}, got {remasking!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
    return num_blocks


def masked_diffusion_sample(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    gen_length: int,
    mask_id: int,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    generator: torch.Generator | None = None,
    forbid_ids: Sequence[int] = (),
    grad: bool = False,
    device: torch.device | str = "cpu",
    schedule: str = "even",
    top_p: float = 1.0,
) -> Trajectory:
    """Fill ``gen_length`` masked positions in ``steps`` steps (module docstring).

    Parameters
    ----------
    logits_fn : callable
        ``logits_fn(x)``, ``x`` LongTensor of shape (1, gen_length) → logits of shape (1, gen_length, V).
    gen_length : int
        Answer length.
    mask_id : int
        The mask token; the answer starts as all ``mask_id``. It can never be predicted.
    steps : int
        Total denoising steps; a multiple of the number of blocks. A block with more steps than positions
        commits nothing at its last steps, as in LLaDA.
    block_length : int
        Semi-autoregressive block size; divides ``gen_length`` (``gen_length`` = one block).
    temperature : float
        0 = greedy; > 0 samples with Gumbel noise drawn from ``generator``.
    remasking : {"low_confidence", "random", "entropy"}
        How the committed positions are chosen among the block's masked ones (``entropy``: Dream's, with its
        own token draw, :func:`entropy_predictions`).
    generator : torch.Generator, optional
        Source of all randomness (Gumbel noise, random scores); the same seed gives the same trajectory.
    forbid_ids : sequence of int
        Further token ids that may not be predicted (their logits are set to −inf), besides ``mask_id``.
    grad : bool
        False (default) runs under ``torch.no_grad()``; True leaves the caller's grad mode alone.
    device : torch.device or str
        The model's device: the answer state and everything derived from it live there.
    schedule : {"even", "shift", "dream"}
        How many positions each step of a block commits (:func:`transfer_schedule`).
    top_p : float
        Nucleus filtering of the ``entropy`` algorithm's distribution (1 = none).

    Returns
    -------
    Trajectory
        On ``device`` (``trajectory.to("cpu")`` reads it back).

    Raises
    ------
    ValueError
        If ``block_length`` does not divide ``gen_length``, the number of blocks does not divide ``steps``, or
        another argument is out of range (the message names it).
    """
    num_blocks = validate_schedule(
        gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature, remasking=remasking,
        schedule=schedule, top_p=top_p,
    )
    steps_per_block = steps // num_blocks
    banned = sorted({int(mask_id), *(int(i) for i in forbid_ids)})

    with contextlib.nullcontext() if grad else torch.no_grad():
        x = torch.full((1, gen_length), mask_id, dtype=torch.long, device=device)
        states = [x[0].clone()]
        transfer: list[torch.Tensor] = []
        unmask_step = torch.full((gen_length,), -1, dtype=torch.long, device=device)
        confidence = torch.zeros(gen_length, dtype=torch.float32, device=device)
        position = torch.arange(gen_length, device=device)
        for block in range(num_blocks):
            lo, hi = block * block_length, (block + 1) * block_length
            # The block is all masked when it starts: positions after a block are never committed early.
            for k in transfer_schedule(block_length, steps_per_block, schedule):
                step = len(transfer)
                logits = logits_fn(x).detach()
                if logits.shape[:2] != (1, gen_length):
                    raise ValueError(f"logits_fn: returned shape {tuple(logits.shape)}, expected (1, {gen_length}, V)")
                logits = logits.clone()
                logits[..., banned] = float("-inf")
                if remasking == "entropy":
                    x0, score = entropy_predictions(logits, temperature, top_p, generator)
                else:
                    x0 = add_gumbel_noise(logits, temperature, generator).argmax(-1)
                if remasking == "low_confidence":
                    score = torch.softmax(logits.to(torch.float64), dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
                elif remasking == "random":
                    score = uniform_on(x0.shape, device, generator)
                masked = x == mask_id
                score = torch.where(masked & (position < hi), score, torch.full_like(score, float("-inf")))
                chosen = torch.topk(score[0], k).indices.sort().values
                x = x.clone()
                x[0, chosen] = x0[0, chosen]
                unmask_step[chosen] = step
                confidence[chosen] = score[0, chosen].float()
                transfer.append(chosen)
                states.append(x[0].clone())
    final = x[0].clone()
    return Trajectory(
        states=torch.stack(states), unmask_step=unmask_step, confidence=confidence, transfer=transfer, final=final
    )
