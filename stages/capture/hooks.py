"""Forward hooks that keep block outputs in the autograd graph.

:class:`BlockRecorder` is a context manager: hooks are registered on entry and
always removed on exit, also when the body raises, and the recorded tensors are
dropped with them, so nothing accumulates across samples.

Under :func:`frozen_weights` nothing below the first hooked block needs a graph:
the hook makes that block's output a leaf that requires grad, so the graph (its
memory and its backward) starts there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch


@dataclass
class Record:
    """One hooked forward: which layer, the block's output hidden state (1, L, D), in the graph."""

    layer: int
    hidden: torch.Tensor

    @property
    def seq_len(self) -> int:
        return int(self.hidden.shape[1])


class BlockRecorder:
    """Record the outputs of ``blocks[layer]`` for each ``layer`` in ``layers`` on every forward.

    Parameters
    ----------
    blocks : sequence of Module
        The model's transformer blocks.
    layers : sequence of int
        Indices into ``blocks``.
    output_fn : callable
        Extracts the hidden state from a block's output (``output[0]`` for tuples).
    """

    def __init__(self, blocks: Sequence[torch.nn.Module], layers: Sequence[int], output_fn):
        self.blocks = blocks
        self.layers = list(layers)
        self.output_fn = output_fn
        self.records: list[Record] = []
        self._handles: list = []

    def __enter__(self) -> "BlockRecorder":
        for layer in self.layers:
            self._handles.append(self.blocks[layer].register_forward_hook(self._hook(layer)))
        return self

    def _hook(self, layer: int):
        def hook(_module, _inputs, output):
            hidden = self.output_fn(output)
            if torch.is_grad_enabled() and not hidden.requires_grad:
                hidden.requires_grad_()  # nothing below needs a graph (frozen weights): it starts here
            self.records.append(Record(layer, hidden))

        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.records.clear()

    def take(self) -> list[Record]:
        """Return the records since the last call and forget them."""
        out, self.records = self.records, []
        return out

    @property
    def active(self) -> int:
        return len(self._handles)


@contextlib.contextmanager
def frozen_weights(model: torch.nn.Module) -> Iterator[None]:
    """Weights that require no gradient inside the block, as they were after it.

    Attribution differentiates scores with respect to hooked activations only; with the weights
    frozen no forward keeps a graph for them, nor for the layers below the first hooked block.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
