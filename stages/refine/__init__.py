"""Diffusion-CAM post-processing modules (AKD, DACG, CBA, SICD) and their shared plumbing.

Each module is a pure function ``f(cam, *, profile=..., context=None, **params)`` over a
map of shape (h, w) or a stack of shape (n, h, w) that returns the same shape and never
mutates its input. Two profiles:

``"reference"``
    Reproduces the official code (``predict.py::apply_cam_postprocess``, ``method.md`` §1.5),
    constants and quirks included.
``"paper"``
    Follows the paper's stated intent where the code diverges; each divergence is
    documented in the module's docstring.

The registry, the chain runner and the per-sample :class:`MapContext` re-export live in
:mod:`stages.refine.chain`; ``from stages.refine import MODULES, apply_chain`` also works.
This file holds what every module shares: the context dataclass, input validation and a
per-map percentile on a sorted stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

PROFILES = ("reference", "paper")

#: English function words (determiners, prepositions, conjunctions, pronouns, auxiliaries),
#: the "repeated tokens" of the paper's SICD figure ("a", "in", "of", "and").
DEFAULT_FUNCTION_WORDS = frozenset(
    """a an the this that these those some any each every no
    in on at of to from by with without for into onto over under above below behind near
    between through across along around about against among beside up down out off
    and or but nor so yet as than if while because
    it its it's they them their there here he she his her him we our you your i my me
    is are was were be been being am has have had do does did will would can could
    should may might must shall""".split()
)


@dataclass(frozen=True)
class MapContext:
    """What a post-processing module may know about one map besides its values.

    Attributes
    ----------
    generated_ids : sequence of int or None
        The full generated response ids, repeated EOS/padding included, as the official
        SICD uses them (``method.md`` §1.5(d)).
    words : sequence of str or None
        The generated words, in order (paper-profile SICD).
    function_words : frozenset of str
        Lower-case words treated as interference by the paper-profile SICD.
    num_steps : int or None
        Number of denoising steps of the generation (paper-profile AKD).
    seed : int
        Seed of the AKD jitter (the official code draws it unseeded).
    raw_max : float or None
        Maximum of the map before post-processing; the official chain clips to
        ``[0, raw_max]`` before its min-max step. :func:`stages.refine.chain.apply_chain`
        fills it from the chain's input when it is None.
    """

    generated_ids: Sequence[int] | None = None
    words: Sequence[str] | None = None
    function_words: frozenset[str] = DEFAULT_FUNCTION_WORDS
    num_steps: int | None = None
    seed: int = 0
    raw_max: float | None = None


def check_profile(profile: str) -> str:
    """Validate a profile name."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


def as_stack(cam, name: str = "cam") -> tuple[np.ndarray, bool, np.dtype]:
    """Validate a map or stack and return a float64 (n, h, w) copy.

    Returns
    -------
    stack : ndarray of shape (n, h, w), float64
        A new array (the caller's input is never written to).
    single : bool
        Whether the input was a single (h, w) map.
    dtype : numpy dtype
        The dtype to give the output: the input's if floating, else float64.
    """
    cam = np.asarray(cam)
    if cam.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (h, w) or (n, h, w), got {cam.shape}")
    if min(cam.shape) == 0:
        raise ValueError(f"{name} must not be empty, got shape {cam.shape}")
    if not (np.issubdtype(cam.dtype, np.floating) or np.issubdtype(cam.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {cam.dtype}")
    stack = np.array(cam, dtype=np.float64, ndmin=3)
    if not np.all(np.isfinite(stack)):
        raise ValueError(f"{name} contains NaN or infinite values")
    dtype = cam.dtype if np.issubdtype(cam.dtype, np.floating) else np.dtype(np.float64)
    return stack, cam.ndim == 2, dtype


def from_stack(stack: np.ndarray, single: bool, dtype: np.dtype) -> np.ndarray:
    """Undo :func:`as_stack`: drop the stack axis of a single map and restore the dtype."""
    out = stack[0] if single else stack
    return out.astype(dtype, copy=False)


def contexts_for(context, n: int) -> list[MapContext]:
    """One :class:`MapContext` per map from None, one shared context or a sequence of n."""
    if context is None:
        return [MapContext()] * n
    if isinstance(context, MapContext):
        return [context] * n
    contexts = list(context)
    if len(contexts) != n or not all(isinstance(c, MapContext) for c in contexts):
        raise ValueError(f"context must be a MapContext or a sequence of {n} MapContext (one per map), got {len(contexts)} items")
    return contexts


def sorted_percentile(sorted_values: np.ndarray, start: np.ndarray, count: np.ndarray, q: float) -> np.ndarray:
    """Per-row percentile of a slice of each row of a row-sorted array.

    Equals ``np.percentile(sorted_values[i, start[i]:start[i] + count[i]], q)`` (linear
    interpolation, NumPy's default) for every row i, without a Python loop. Rows with
    ``count == 0`` give 0.

    Parameters
    ----------
    sorted_values : ndarray of shape (n, m)
        Each row sorted ascending.
    start, count : ndarray of shape (n,), int
    q : float
        Percentile in [0, 100].

    Returns
    -------
    values : ndarray of shape (n,)
    """
    rows = np.arange(sorted_values.shape[0])
    pos = q / 100.0 * np.maximum(count - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    t = pos - lo
    last = sorted_values.shape[1] - 1
    a = sorted_values[rows, np.minimum(start + lo, last)]
    b = sorted_values[rows, np.minimum(start + hi, last)]
    # NumPy's lerp: a + (b - a) t, computed from b's side when t >= 0.5.
    diff = b - a
    value = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    return np.where(count > 0, value, 0.0)


def __getattr__(name: str):
    # The registry imports every module, and every module imports this file, so the
    # chain is loaded on first use rather than at import (no import cycle).
    if name in ("MODULES", "apply_chain", "RefineStep", "get_module"):
        from stages.refine import chain

        return getattr(chain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
