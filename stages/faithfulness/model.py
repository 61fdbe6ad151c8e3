"""The model side of the faithfulness stage: re-score perturbed images, recompute attributions.

Both work through the capture stage's :class:`~stages.capture.adapter.ModelAdapter`, so they run for the toy
model and every family. A word is scored exactly as its attribution row was: the same response token state
(the state *before* the selected step, in which the word is still masked) and the same target definition
(:func:`stages.capture.targets.target_scores`). In ``prefix-cache`` captures the forward is a full pass under
the Prefix-DLM mask, which equals the prefix-cache passes (the toy's test pins it); the image rows then cannot
see the answer, as in the cached pass.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from schemas.span import grid_token_index
from stages.capture.adapter import ModelAdapter, Prepared
from stages.capture.targets import Target, target_class_ids, target_scores

def refuse_self_conditioned(adapter: ModelAdapter) -> None:
    """Refuse a family whose every step also reads the previous step's logits (DiffusionGemma's
    self-conditioning): the capture keeps that input only while it replays, so a word's score cannot be
    recomputed on a perturbed image at the same state."""
    from schemas.errors import DcamError

    if not adapter.replayable:  # declared by the adapter (stages.capture.adapter.ModelAdapter)
        raise DcamError(f"faithfulness: the {adapter.family} family self-conditions each step on the previous "
                        "step's logits, which the capture store does not keep; its scores cannot be recomputed "
                        "on perturbed images")


def _device(adapter: ModelAdapter) -> torch.device:
    return next(adapter.model.parameters()).device


def _stack_prepared(preps: Sequence[Prepared]) -> Prepared:
    first = preps[0]
    embeds = torch.cat([p.prompt_embeds for p in preps]) if first.prompt_embeds is not None else None
    ids = torch.cat([p.prompt_ids for p in preps]) if first.prompt_ids is not None else None
    return Prepared(prompt_embeds=embeds, prompt_ids=ids, span=first.span, extra=dict(first.extra))


def _banned(adapter: ModelAdapter) -> list[int]:
    return sorted({int(adapter.mask_id), *(int(i) for i in adapter.forbid_ids)})


def word_probabilities(resp_logits: torch.Tensor, targets: Sequence[Target], banned: Sequence[int]) -> torch.Tensor:
    """Per target, the mean probability of its generated tokens (B, T), with the ids the sampler never draws
    masked out as it does. The probability, unlike the logit, does not depend on the logits' offset, so a
    curve normalised by its unperturbed value is comparable across words (RISE scores class probabilities)."""
    logits = resp_logits.float().clone()
    logits[..., list(banned)] = float("-inf")
    probs = torch.softmax(logits, dim=-1)  # (B, G, V)
    out = []
    for t in targets:
        pos = torch.as_tensor(t.positions, dtype=torch.long, device=probs.device)
        ids = torch.as_tensor(t.token_ids, dtype=torch.long, device=probs.device)
        out.append(probs[:, pos, ids].mean(dim=1))
    return torch.stack(out, dim=1)


class PerturbationScorer:
    """Scores of a sample's targets on many perturbed copies of its image, at one token state.

    Parameters
    ----------
    adapter : ModelAdapter
    mode : {"full", "prefix-cache"}
        The capture's mode.
    prompt : str or None
        The capture's prompt.
    batch_size : int
        Perturbed images per forward (adapters that declare ``batched_prompts``; others take one).
    """

    def __init__(self, adapter: ModelAdapter, *, mode: str, prompt: str | None, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        refuse_self_conditioned(adapter)
        self.adapter = adapter
        self.prefix_dlm = mode == "prefix-cache"
        self.prompt = prompt
        # families whose full_logits take a batch of prompts of one length (declared ``batched_prompts``) put
        # many perturbed images through one forward; every other family is scored one image per forward
        self.batch = batch_size if adapter.batched_prompts else 1
        self.banned = _banned(adapter)
        self.forwards = 0

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, state: np.ndarray, targets: Sequence[Target]) -> dict[str, np.ndarray]:
        """Scores of ``targets`` for each image.

        Parameters
        ----------
        images : ndarray of shape (B, H, W, 3), uint8
        state : ndarray of shape (G,), int
            The response token state.
        targets : sequence of Target

        Returns
        -------
        dict
            ``score`` (B, T): the attribution score (:func:`~stages.capture.targets.target_scores`);
            ``prob`` (B, T): :func:`word_probabilities`.
        """
        ad = self.adapter
        device = _device(ad)
        x = torch.as_tensor(np.asarray(state), dtype=torch.long, device=device).unsqueeze(0)
        scores, probs = [], []
        for i in range(0, len(images), self.batch):
            chunk = images[i : i + self.batch]
            preps = [ad.prepare(np.ascontiguousarray(im), self.prompt) for im in chunk]
            prep = _stack_prepared(preps) if len(preps) > 1 else preps[0]
            logits = ad.full_logits(prep, x.expand(len(preps), -1), prefix_dlm_mask=self.prefix_dlm)
            p = prep.prompt_len - ad.logit_shift
            resp = logits[:, p : p + x.shape[1]]
            scores.append(torch.stack([target_scores(r, targets) for r in resp]).float().cpu().numpy())
            probs.append(word_probabilities(resp, targets, self.banned).cpu().numpy())
            self.forwards += len(preps)
        return {"score": np.concatenate(scores), "prob": np.concatenate(probs)}


def attribution_arrays(adapter: ModelAdapter, image: np.ndarray, state: np.ndarray, targets: Sequence[Target],
                       *, layer: int, mode: str, prompt: str | None,
                       reductions: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The stored capture arrays of one attribution row, recomputed in memory with the adapter's current weights.

    The same quantities :mod:`stages.capture.core` stores (``acts`` (N, D), ``tam_logits`` (T, N) and the
    gradient reductions, grid order), each reduction by its registered function
    (:data:`stages.basemaps.REDUCTIONS`), so every base method and chain applies to them; the
    model-randomisation check uses it to compare a randomised model's maps with the trained model's at the same
    token state and targets (Adebayo et al. 2018 keep input and target fixed).

    Parameters
    ----------
    reductions : sequence of str, optional
        Names of the reductions to compute; default: every registered base method's (not the full gradient).
    """
    from stages.basemaps import default_reductions, get_reduction
    from stages.capture.hooks import BlockRecorder

    device = _device(adapter)
    x = torch.as_tensor(np.asarray(state), dtype=torch.long, device=device).unsqueeze(0)
    with torch.no_grad():
        prep = adapter.prepare(np.ascontiguousarray(image), prompt)
    grid_abs = torch.as_tensor(prep.span.start + grid_token_index(prep.span), dtype=torch.long, device=device)
    class_ids = torch.as_tensor(target_class_ids(targets), dtype=torch.long, device=device)
    with torch.enable_grad(), BlockRecorder(adapter.blocks(), [layer], adapter.block_output) as rec:
        logits = adapter.full_logits(prep, x, prefix_dlm_mask=mode == "prefix-cache")
        hidden = rec.take()[0].hidden
        p = prep.prompt_len - adapter.logit_shift
        sc = target_scores(logits[0, p : p + x.shape[1]], targets)
        grads = torch.stack([torch.autograd.grad(sc[i], hidden, retain_graph=i < len(targets) - 1)[0]
                             for i in range(len(targets))])
    a = hidden[0, grid_abs].detach().float()
    g = grads[:, 0, grid_abs].float()
    out: dict[str, Any] = {"acts": a, "tam_logits": logits[0, grid_abs][:, class_ids].detach().float().T}
    for name in default_reductions() if reductions is None else reductions:
        out[name] = get_reduction(name)(g, a)
    return {k: v.cpu().numpy() for k, v in out.items()}


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The vocabulary projection, where the model exposes one."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if head is not None else getattr(model, "lm_head", None)


def cascade_modules(adapter: ModelAdapter) -> list[tuple[str, list[torch.nn.Module]]]:
    """Adebayo et al.'s cascading randomisation order, from the output down: the output head, then each block
    from the top. Entry ``k`` lists everything randomised at depth ``k + 1`` (cumulative)."""
    levels: list[tuple[str, list[torch.nn.Module]]] = []
    done: list[torch.nn.Module] = []
    head = output_head(adapter.model)
    if head is not None:
        done = [head]
        levels.append(("head", list(done)))
    blocks = list(adapter.blocks())
    for i in reversed(range(len(blocks))):
        done = done + [blocks[i]]
        levels.append((f"block{i}", list(done)))
    return levels


@torch.no_grad()
def reinitialise(modules: Sequence[torch.nn.Module], *, seed: int) -> None:
    """Re-initialise the weights of ``modules`` in place, seeded: every submodule with ``reset_parameters``
    uses its own initialiser (Linear: Kaiming uniform), any other weight of 2+ dimensions is drawn from
    N(0, 0.02) and 1-D weights (norm gains) are reset to one, biases to zero."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    state = torch.get_rng_state()
    torch.manual_seed(int(seed))  # reset_parameters draws from the global generator
    try:
        for module in modules:
            for sub in module.modules():
                own = list(sub.named_parameters(recurse=False))
                if not own:
                    continue
                if callable(getattr(sub, "reset_parameters", None)):
                    sub.reset_parameters()
                    continue
                for name, p in own:
                    if p.ndim >= 2:
                        p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02).to(p))
                    elif name == "bias":
                        p.zero_()
                    else:
                        p.fill_(1.0)
    finally:
        torch.set_rng_state(state)
