"""Gradient reductions: what the capture stage stores of a hooked block's gradient.

A :class:`Reduction` is a named function of the gradient ``G`` (k, N, D) of k target scores with respect to the
hooked block's output at the N image-grid tokens, and of that output ``A`` (N, D), both float32 torch tensors
on the model's device. It returns one value per target and channel (``per="channel"``, (k, D)), per target and
token (``per="token"``, (k, N)) or per target, token and channel (``per="token-channel"``, (k, N, D)). Base
methods declare the reductions they read (:class:`stages.basemaps.BaseMethod`); the capture stage computes
the union of those of the configured methods, each with its function, and stores it under the reduction's
name as ``L<layer>/<name>`` with a leading attribution-row axis. The full gradient, :data:`GRADS`
(``--store-grads``), is itself a reduction; every other one can be derived from it later with the same
function (:meth:`Reduction.from_arrays`).

Reductions use tensor methods only, so this module (and every base method file) imports without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Reduction", "GRADS", "PER"]

#: What a reduction keeps, and its stored shape after the attribution-row axis.
PER = {"channel": "(T, D)", "token": "(T, N)", "token-channel": "(T, N, D)"}


@dataclass(frozen=True)
class Reduction:
    """A declared gradient reduction (module docstring).

    Attributes
    ----------
    name : str
        The stored array's name (``L<layer>/<name>``).
    per : {"channel", "token", "token-channel"}
        What it keeps per target: shape (T, D), (T, N) or (T, N, D).
    fn : callable
        ``fn(grads, acts)``: ``grads`` (k, N, D) and ``acts`` (N, D) float32 tensors to a (k, D), (k, N) or
        (k, N, D) tensor.
    summary : str
        One line for documentation and errors.
    dtype : str
        The stored dtype.
    """

    name: str
    per: str
    fn: Callable[[Any, Any], Any]
    summary: str
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.per not in PER:
            raise ValueError(f"reduction {self.name!r}: per must be one of {sorted(PER)}, got {self.per!r}")

    def shape(self, n_targets: int, n_tokens: int, n_channels: int) -> tuple[int, ...]:
        """The stored shape of one attribution row."""
        return {"channel": (n_targets, n_channels), "token": (n_targets, n_tokens),
                "token-channel": (n_targets, n_tokens, n_channels)}[self.per]

    def __call__(self, grads, acts):
        """``fn(grads, acts)`` on torch tensors, its shape checked against :attr:`per`."""
        out = self.fn(grads, acts)
        k, n, d = grads.shape
        if tuple(out.shape) != self.shape(k, n, d):
            raise ValueError(f"reduction {self.name!r} returned shape {tuple(out.shape)}, "
                             f"expected {self.shape(k, n, d)} for grads {tuple(grads.shape)}")
        return out

    def from_arrays(self, grads: np.ndarray, acts: np.ndarray) -> np.ndarray:
        """The reduction of stored arrays: ``grads`` (T, N, D) and ``acts`` (N, D), by the same function.

        Both are taken as float32 (as the capture stage takes the hooked tensors), so a reduction derived from
        a ``--store-grads`` capture differs from the one computed during capture only by the float16 rounding
        of the stored gradient and activations.
        """
        import torch

        grads = np.asarray(grads)
        acts = np.asarray(acts)
        if grads.ndim != 3 or acts.ndim != 2 or grads.shape[1:] != acts.shape:
            raise ValueError(f"reduction {self.name!r}: grads must be (T, N, D) and acts (N, D) with the same N and D, "
                             f"got {grads.shape} and {acts.shape}")
        g = torch.from_numpy(np.ascontiguousarray(grads, dtype=np.float32))
        a = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))
        return self(g, a).numpy().astype(self.dtype, copy=False)


def _identity(grads, acts):
    return grads


#: The full gradient (``dcam capture --store-grads``), float16: every other reduction can be derived from it.
GRADS = Reduction("grads", "token-channel", _identity, "the full gradient (--store-grads)", dtype="float16")
