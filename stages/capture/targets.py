"""Targets: what response score each Grad-CAM map explains.

One target per generated word (its sub-tokens grouped) plus one for the whole
response. Two score definitions, recorded in the capture:

``logit`` (default; the paper's intent)
    The sum over the target's tokens of the logit of the generated token at its
    response position. A capture evaluates it at every attribution step; the
    ``unmask-step`` selection policy then picks the step at which the target was
    unmasked.
``contrastive`` (the official code, ``method.md`` §1.3)
    The vocabulary sum of the logits at the 2nd generated position minus the same
    at the 1st. One target per sample. Unlike the official code, positions index
    the response itself, not the un-expanded prompt (the official index bug).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

SCORES = ("logit", "contrastive")


@dataclass(frozen=True)
class Target:
    """One explained quantity.

    Attributes
    ----------
    index : int
    kind : {"word", "response", "contrastive"}
    text : str
        The word, the whole response, or a description.
    positions : tuple of int
        Response positions the score reads.
    token_ids : tuple of int
        Generated ids at those positions.
    unmask_step : int
        Step at which the last of its tokens was unmasked.
    """

    index: int
    kind: str
    text: str
    positions: tuple[int, ...]
    token_ids: tuple[int, ...]
    unmask_step: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["positions"] = list(self.positions)
        d["token_ids"] = list(self.token_ids)
        return d


def build_targets(
    words: Sequence[tuple[str, list[int]]],
    final_ids: Sequence[int],
    unmask_step: Sequence[int],
    *,
    score: str = "logit",
    response_text: str = "",
) -> list[Target]:
    """Targets for a generated response.

    Parameters
    ----------
    words : list of (word, positions)
        The adapter's word grouping of the generated ids.
    final_ids : sequence of int, length G
        The generated ids.
    unmask_step : sequence of int, length G
        Step at which each response position was unmasked.
    score : {"logit", "contrastive"}
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score == "contrastive":
        if len(final_ids) < 2:
            raise ValueError("the contrastive score needs at least 2 generated tokens")
        return [
            Target(0, "contrastive", "vocab-sum logits: token 2 - token 1", (1, 0),
                   (int(final_ids[1]), int(final_ids[0])), int(max(unmask_step[0], unmask_step[1])))
        ]
    targets = []
    for word, pos in words:
        targets.append(
            Target(len(targets), "word", word, tuple(pos), tuple(int(final_ids[p]) for p in pos),
                   int(max(unmask_step[p] for p in pos)))
        )
    if targets:
        allpos = tuple(p for t in targets for p in t.positions)
        targets.append(
            Target(len(targets), "response", response_text, allpos, tuple(int(final_ids[p]) for p in allpos),
                   int(max(unmask_step[p] for p in allpos)))
        )
    return targets


def target_scores(resp_logits: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Scores (T,) of the targets from response logits (G, V) of one forward."""
    out = []
    for t in targets:
        if t.kind == "contrastive":
            p_target, p_distractor = t.positions
            out.append(resp_logits[p_target].sum() - resp_logits[p_distractor].sum())
        else:
            pos = torch.as_tensor(t.positions, dtype=torch.long, device=resp_logits.device)
            ids = torch.as_tensor(t.token_ids, dtype=torch.long, device=resp_logits.device)
            out.append(resp_logits[pos, ids].sum())
    return torch.stack(out)


def target_class_ids(targets: Sequence[Target]) -> list[int]:
    """The class id whose logit TAM maps for each target (the first token of the word)."""
    return [t.token_ids[0] for t in targets]
