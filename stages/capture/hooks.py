"""Forward hooks that keep block outputs in the autograd graph.

:class:`BlockRecorder` is a context manager: hooks are registered on entry and
always removed on exit, also when the body raises, and the recorded tensors are
dropped with them, so nothing accumulates across samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
            self.records.append(Record(layer, self.output_fn(output)))

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
