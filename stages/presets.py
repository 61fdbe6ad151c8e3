"""Named explain presets: a base method, a post-processing chain and a threshold, as data.

A preset says how a map is made from the stored capture arrays:
``base`` (a :data:`stages.basemaps.BASE_METHODS` name) with ``base_options``, then the
:mod:`stages.refine` modules in order under one ``profile`` with per-module ``params``,
then an optional ``threshold`` (values below it set to 0). A preset is a
:class:`stages.chain.Chain` (the one chain type); :meth:`~stages.chain.Chain.maps` runs one in memory.

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

from typing import Any, Sequence

from stages.chain import Chain

OFFICIAL_ORDER = ("akd", "dacg", "cba", "normalize", "sicd")


def _preset(name: str, base: str, modules: Sequence[str], profile: str = "reference",
            base_options: dict[str, Any] | None = None, params: dict[str, dict[str, Any]] | None = None,
            threshold: float | None = None, summary: str = "") -> Chain:
    return Chain(name=name, base=base, modules=tuple(modules), profile=profile, base_options=dict(base_options or {}),
                 params=dict(params or {}), threshold=threshold, summary=summary)


_DIFFUSION_BASE = {"normalize": True}

PRESETS: dict[str, Chain] = {
    p.name: p
    for p in (
        _preset(
            "diffusion-cam", "diffusion-cam-base", OFFICIAL_ORDER, "paper", _DIFFUSION_BASE,
            summary="Diffusion-CAM as the paper describes it: official base, AKD/DACG/CBA/normalize/SICD, paper profile",
        ),
        _preset(
            "diffusion-cam-reference", "diffusion-cam-base", OFFICIAL_ORDER, "reference", _DIFFUSION_BASE,
            summary="Diffusion-CAM as the official code computes it (all_methods mode)",
        ),
        _preset(
            "gradcam", "gradcam", ("normalize",), "reference", {"relu": True},
            summary="plain Grad-CAM: ReLU(sum_d mean(grad)_d A_d), min-max normalised",
        ),
        _preset(
            "llava-cam", "llava-cam", (), "reference", {"relu": True, "normalize": "max"}, threshold=0.5,
            summary="LLaVA-CAM: mean_c(mean(ReLU grad)_c F_c), ReLU, / max, zero below 0.5",
        ),
        _preset(
            "tam", "tam", ("normalize", "rank-filter"), "reference", params={"rank-filter": {"size": 3}},
            summary="TAM: class logit clipped at 0, min-max (image only), rank Gaussian filter k=3",
        ),
        _preset(
            "gradcam-pp", "gradcam-pp", ("normalize",), "reference", {"relu": True},
            summary="Grad-CAM++: ReLU(sum_d w_d A_d), w_d = sum_n a_nd ReLU(grad)_nd (Chattopadhay et al.), min-max",
        ),
        _preset(
            "grad-norm", "grad-norm", ("normalize",), "reference",
            summary="gradient norm per token, min-max normalised: a base map not dominated by token norm (not a CAM)",
        ),
        _preset(
            "ablation-baseline", "diffusion-cam-base", (), "reference", _DIFFUSION_BASE, threshold=0.4,
            summary="ablation 'Baseline': official base map, no modules, zero below 0.4 (official baseline mode)",
        ),
        _preset(
            "ablation-akd", "diffusion-cam-base", ("akd", "normalize"), "reference", _DIFFUSION_BASE,
            summary="ablation '+AKD' (official gaussian_only adds SICD)",
        ),
        _preset(
            "ablation-dacg", "diffusion-cam-base", ("dacg", "normalize"), "reference", _DIFFUSION_BASE,
            summary="ablation '+DACG' (official confidence_only adds SICD)",
        ),
        _preset(
            "ablation-cba", "diffusion-cam-base", ("cba", "normalize"), "reference", _DIFFUSION_BASE,
            summary="ablation '+CBA' (official background_only adds SICD)",
        ),
        _preset(
            "ablation-sicd", "diffusion-cam-base", ("normalize", "sicd"), "reference", _DIFFUSION_BASE,
            summary="ablation '+SICD' (no official mode)",
        ),
        _preset(
            "ablation-full", "diffusion-cam-base", OFFICIAL_ORDER, "reference", _DIFFUSION_BASE,
            summary="ablation 'Full' (official all_methods)",
        ),
    )
}


def get_preset(name: str) -> Chain:
    """Look up a preset; ``ValueError`` names it and lists the known presets."""
    try:
        return PRESETS[name].model_copy(deep=True)  # a copy: a caller that edits its dicts cannot change the preset
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
