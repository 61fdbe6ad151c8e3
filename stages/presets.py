"""Named explain presets: a base method, a post-processing chain and a threshold, as data.

A preset says how a map is made from the stored capture arrays:
``base`` (a :data:`stages.basemaps.BASE_METHODS` name) with ``base_options``, then the
:mod:`stages.refine` modules in order under one ``profile`` with per-module ``params``,
then an optional ``threshold`` (values below it set to 0). :func:`apply_preset` runs one.

Ablation presets follow the rows of the paper's ablation table (``method.md`` §1.7):
"Baseline", "+AKD", "+DACG", "+CBA", "+SICD", "Full", each module alone. The official
code's ablation modes differ: ``gaussian_only``, ``confidence_only`` and
``background_only`` always run SICD too, and there is no SICD-only mode
(``method.md`` §1.5). We follow the table, under the reference profile (the code that
produced it), and keep the official clip + min-max ``normalize`` step, which the code
runs in every mode but ``baseline``. The official modes are those presets' chains with
``"sicd"`` appended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from stages.basemaps import get_base_method
from stages.refine import MapContext, check_profile
from stages.refine.chain import apply_chain, get_module

OFFICIAL_ORDER = ("akd", "dacg", "cba", "normalize", "sicd")


@dataclass(frozen=True)
class Preset:
    """A named recipe: base map, post-processing chain, threshold."""

    name: str
    base: str
    modules: tuple[str, ...]
    profile: str = "reference"
    base_options: Mapping[str, object] = field(default_factory=dict)
    params: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    threshold: float | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        get_base_method(self.base)
        for name in self.modules:
            get_module(name)
        check_profile(self.profile)


_DIFFUSION_BASE = MappingProxyType({"normalize": True})

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "diffusion-cam", "diffusion-cam-base", OFFICIAL_ORDER, "paper", _DIFFUSION_BASE,
            summary="Diffusion-CAM as the paper describes it: official base, AKD/DACG/CBA/normalize/SICD, paper profile",
        ),
        Preset(
            "diffusion-cam-reference", "diffusion-cam-base", OFFICIAL_ORDER, "reference", _DIFFUSION_BASE,
            summary="Diffusion-CAM as the official code computes it (all_methods mode)",
        ),
        Preset(
            "gradcam", "gradcam", ("normalize",), "reference", {"relu": True},
            summary="plain Grad-CAM: ReLU(sum_d mean(grad)_d A_d), min-max normalised",
        ),
        Preset(
            "llava-cam", "llava-cam", (), "reference", {"relu": True, "normalize": "max"}, threshold=0.5,
            summary="LLaVA-CAM: mean_c(mean(ReLU grad)_c F_c), ReLU, / max, zero below 0.5",
        ),
        Preset(
            "tam", "tam", ("normalize", "rank-filter"), "reference", params={"rank-filter": {"size": 3}},
            summary="TAM: class logit clipped at 0, min-max (image only), rank Gaussian filter k=3",
        ),
        Preset(
            "grad-norm", "grad-norm", ("normalize",), "reference",
            summary="gradient norm per token, min-max normalised: a base map not dominated by token norm (not a CAM)",
        ),
        Preset(
            "ablation-baseline", "diffusion-cam-base", (), "reference", _DIFFUSION_BASE, threshold=0.4,
            summary="ablation 'Baseline': official base map, no modules, zero below 0.4 (official baseline mode)",
        ),
        Preset(
            "ablation-akd", "diffusion-cam-base", ("akd", "normalize"), "reference", _DIFFUSION_BASE,
            summary="ablation '+AKD' (official gaussian_only adds SICD)",
        ),
        Preset(
            "ablation-dacg", "diffusion-cam-base", ("dacg", "normalize"), "reference", _DIFFUSION_BASE,
            summary="ablation '+DACG' (official confidence_only adds SICD)",
        ),
        Preset(
            "ablation-cba", "diffusion-cam-base", ("cba", "normalize"), "reference", _DIFFUSION_BASE,
            summary="ablation '+CBA' (official background_only adds SICD)",
        ),
        Preset(
            "ablation-sicd", "diffusion-cam-base", ("normalize", "sicd"), "reference", _DIFFUSION_BASE,
            summary="ablation '+SICD' (no official mode)",
        ),
        Preset(
            "ablation-full", "diffusion-cam-base", OFFICIAL_ORDER, "reference", _DIFFUSION_BASE,
            summary="ablation 'Full' (official all_methods)",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Look up a preset; ``ValueError`` names it and lists the known presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def apply_preset(
    preset: str | Preset,
    arrays: Mapping[str, object],
    grid: tuple[int, int],
    *,
    contexts: MapContext | Sequence[MapContext] | None = None,
) -> np.ndarray:
    """Compute a preset's maps from the stored capture arrays of one sample and layer.

    Parameters
    ----------
    preset : str, Preset or ChainSpec
        A chain spec (:class:`stages.explain.runner.ChainSpec`, same fields) applies the same way.
    arrays : mapping of str to ndarray
        Stored arrays (``acts``, ``alpha``, ``alpha_pos``, ``gxa``, ``tam_logits``, ...),
        see :mod:`stages.basemaps`.
    grid : tuple of int (h, w)
    contexts : MapContext, sequence of T MapContext, or None
        One per target map, or one shared.

    Returns
    -------
    maps : ndarray of shape (T, h, w), float32
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    maps = get_base_method(preset.base)(arrays, grid, **preset.base_options)
    maps = apply_chain(maps, preset.modules, profile=preset.profile, params=preset.params, contexts=contexts)
    if preset.threshold is not None:
        maps = np.where(maps < preset.threshold, np.float32(0), maps)
    return maps.astype(np.float32, copy=False)
