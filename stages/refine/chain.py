"""Registry of post-processing modules and the chain runner.

Adding a module is one file with a pure function plus one entry in :data:`MODULES`.
The official order (``method.md`` §1.5) is ``akd, dacg, cba, normalize, sicd``:
the clip to ``[0, max(raw)]`` and min-max step sits between CBA and SICD.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from stages.refine import PROFILES, MapContext, as_stack, check_profile, contexts_for, from_stack
from stages.refine.akd import adaptive_kernel_denoise
from stages.refine.cba import background_attenuate
from stages.refine.dacg import confidence_gate
from stages.refine.normalize import clip_and_rescale
from stages.refine.rank_filter import rank_gaussian_filter
from stages.refine.sicd import causal_debias

__all__ = ["MapContext", "RefineStep", "MODULES", "PROFILES", "get_module", "apply_chain"]


@dataclass(frozen=True)
class RefineStep:
    """A registered module: its function and a one-line summary (shown by ``dcam refine --help``).

    The chain passes ``profile`` and ``context`` to the function only when its
    signature has them.
    """

    name: str
    func: Callable[..., np.ndarray]
    summary: str

    def __call__(self, maps: np.ndarray, *, profile: str, context, **params) -> np.ndarray:
        signature = inspect.signature(self.func)
        extra = {k: v for k, v in (("profile", profile), ("context", context)) if k in signature.parameters}
        try:
            signature.bind(maps, **extra, **params)
        except TypeError as e:
            raise ValueError(f"bad parameters for module {self.name!r}: {e}") from None
        return self.func(maps, **extra, **params)


MODULES: dict[str, RefineStep] = {
    s.name: s
    for s in (
        RefineStep("akd", adaptive_kernel_denoise, "Adaptive Kernel Denoising: rank Gaussian filter, adaptive window (official k is always 3)"),
        RefineStep("dacg", confidence_gate, "Distribution-Aware Confidence Gating: smooth values below a percentile threshold (official: no-op)"),
        RefineStep("cba", background_attenuate, "Contextual Background Attenuation: scale values below delta by 0.5..1, foreground untouched"),
        RefineStep("normalize", clip_and_rescale, "clip to [0, max of the chain's input] and min-max normalise (official step between CBA and SICD)"),
        RefineStep("sicd", causal_debias, "Single-Instance Causal Debiasing: subtract least-squares share of a repeated-token interference map"),
        RefineStep("rank-filter", rank_gaussian_filter, "TAM's rank Gaussian filter with a fixed window (param size, default 3)"),
    )
}


def get_module(name: str) -> RefineStep:
    """Look up a module; ``ValueError`` names it and lists the known ones."""
    try:
        return MODULES[name]
    except KeyError:
        raise ValueError(f"unknown module {name!r}; known modules: {', '.join(MODULES)}") from None


def apply_chain(
    maps,
    modules: Sequence[str],
    *,
    profile: str = "reference",
    params: Mapping[str, Mapping[str, object]] | None = None,
    contexts: MapContext | Sequence[MapContext] | None = None,
) -> np.ndarray:
    """Apply post-processing modules in the given order.

    Parameters
    ----------
    maps : ndarray of shape (n, h, w) or (h, w)
        Base maps at token-grid resolution.
    modules : sequence of str
        Names from :data:`MODULES`, applied left to right; may be empty.
    profile : {"reference", "paper"}
        Passed to every module that has profiles.
    params : mapping of module name to keyword parameters, optional
        E.g. ``{"dacg": {"delta_sigma": 0.2}, "rank-filter": {"size": 5}}``.
    contexts : MapContext, sequence of n MapContext, or None
        Per-map context, or one shared by all maps. Contexts whose ``raw_max`` is None
        get the maximum of their map in ``maps`` (the official ``max(raw)`` that the
        ``normalize`` step clips to).

    Returns
    -------
    refined : ndarray, same shape as ``maps``
        The input is not modified.
    """
    check_profile(profile)
    if isinstance(modules, str):
        raise ValueError(f"modules must be a sequence of module names, got the string {modules!r}")
    steps = [get_module(name) for name in modules]
    params = dict(params or {})
    stray = sorted(set(params) - set(modules))
    if stray:
        raise ValueError(f"params given for {stray}, which the chain {list(modules)} does not run")
    stack, single, dtype = as_stack(maps, "maps")
    peaks = stack.max(axis=(1, 2))
    per_map = [
        c if c.raw_max is not None else dataclasses.replace(c, raw_max=float(peak))
        for c, peak in zip(contexts_for(contexts, stack.shape[0]), peaks)
    ]
    out = stack
    for step in steps:
        out = step(out, profile=profile, context=per_map, **params.get(step.name, {}))
    return from_stack(out, single, dtype)
