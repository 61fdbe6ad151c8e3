"""Uniform-noise block diffusion with self-conditioning (DiffusionGemma, transformers'
``generation_diffusion_gemma.py``): one canvas.

The canvas starts as random vocabulary tokens. Each step runs the denoiser on the current canvas with the
previous step's processed logits as self-conditioning input (none at the first step), divides the logits by
a temperature that falls linearly from ``t_max`` to ``t_min`` (``LinearTemperatureScheduleLogitsProcessor``;
the step counter runs N..1), draws a token per position from the tempered distribution, accepts the
lowest-entropy positions while the sum of their entropies minus the largest stays within ``entropy_bound``
(``EntropyBoundSampler.accept_canvas``), keeps the accepted draws and re-noises every other position with
fresh random tokens. The answer is the argmax of the last step's logits, as upstream returns it.

What the capture needs from this loop is recorded in a :class:`~stages.dmllm.sampler.Trajectory`:
``states[s]`` the canvas the denoiser saw at step s, ``conditioning[s]`` its self-conditioning input (so a
replay of step s is the same computation), and, per position, the step from which the argmax kept the final
token (``unmask_step``: when the model settled on the word) with its probability then (``confidence``).
Upstream's adaptive early stop is not applied: all ``steps`` run. Random draws come from a CPU generator and
are moved to the model's device (upstream draws with ``torch.multinomial`` / ``randint`` on the device: same
distributions, another random stream).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from stages.dmllm.sampler import Trajectory, uniform_on

#: DiffusionGemma's generation defaults (``_get_default_generation_params``).
T_MIN, T_MAX, ENTROPY_BOUND = 0.4, 0.8, 0.1


def random_tokens(shape: tuple[int, ...], vocab_size: int, device: torch.device | str,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Uniform random token ids drawn on the CPU and moved to ``device``."""
    return torch.randint(0, vocab_size, shape, generator=generator).to(device)


def entropy_bound_accept(logits: torch.Tensor, bound: float) -> torch.Tensor:
    """Positions accepted under the entropy bound (``EntropyBoundSampler.accept_canvas``).

    The k lowest-entropy positions are accepted, k the largest with
    ``sum of their entropies - the largest of them <= bound``.

    Parameters
    ----------
    logits : Tensor of shape (1, G, V)

    Returns
    -------
    BoolTensor of shape (1, G)
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).nan_to_num().sum(-1)
    ordered, order = entropy.sort(dim=-1)
    within = ordered.cumsum(-1) - ordered <= bound
    return torch.zeros_like(within).scatter(-1, order, within)


def uniform_noise_sample(
    step_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    *,
    gen_length: int,
    vocab_size: int,
    steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    t_min: float = T_MIN,
    t_max: float = T_MAX,
    entropy_bound: float = ENTROPY_BOUND,
) -> Trajectory:
    """Denoise one canvas of ``gen_length`` tokens in ``steps`` steps (module docstring).

    Parameters
    ----------
    step_fn : callable
        ``step_fn(x, conditioning)``: the denoiser's raw logits (1, G, V) for canvas ``x`` (1, G) and the
        previous step's processed logits (1, G, V), None at the first step.
    gen_length, vocab_size, steps : int
    generator : torch.Generator, optional
        CPU generator: every random draw (initial canvas, token draws, re-noising).
    device : torch.device or str
        The model's device.
    t_min, t_max, entropy_bound : float
        Temperature at the last and first steps; the acceptance bound.

    Returns
    -------
    Trajectory
        On ``device``, with ``conditioning`` (step s's self-conditioning input, None at step 0).
    """
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    with torch.no_grad():
        x = random_tokens((1, gen_length), vocab_size, device, generator)
        states, argmaxes, probs_of, conditioning = [x[0].clone()], [], [], []
        processed = None
        for cur in range(steps, 0, -1):
            conditioning.append(processed)
            raw = step_fn(x, processed).detach()
            if raw.shape[:2] != (1, gen_length):
                raise ValueError(f"step_fn: returned shape {tuple(raw.shape)}, expected (1, {gen_length}, V)")
            processed = raw / (t_min + (t_max - t_min) * cur / steps)
            gumbel = -torch.log(-torch.log(uniform_on(processed.shape, device, generator)))
            drawn = (processed.double() + gumbel).argmax(-1)
            accepted = entropy_bound_accept(processed, entropy_bound)
            noise = random_tokens((1, gen_length), vocab_size, device, generator)
            x = torch.where(accepted, drawn, noise)
            argmaxes.append(processed.argmax(-1)[0])
            probs_of.append(torch.softmax(processed.float(), dim=-1)[0])
            states.append(x[0].clone())
        final = argmaxes[-1]
        # The step from which the argmax kept the final token at each position.
        settled = torch.stack([a == final for a in argmaxes])  # (S, G)
        unsettled_after = (~settled).flip(0).cumsum(0).flip(0) > 0  # some later-or-equal step differs
        unmask_step = (unsettled_after.sum(0)).long()
        positions = torch.arange(gen_length, device=final.device)
        confidence = torch.stack(probs_of)[unmask_step, positions, final].float()
        transfer = [torch.nonzero(unmask_step == s).flatten() for s in range(steps)]
    return Trajectory(states=torch.stack(states), unmask_step=unmask_step, confidence=confidence, transfer=transfer,
                      final=final, conditioning=conditioning)
