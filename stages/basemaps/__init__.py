"""Base maps at token-grid resolution (pure functions over stored arrays) and their registry.

One file per base method (``gradcam.py``, ``gradcam_pp.py``, ``diffusion_cam.py``, ``llava_cam.py``,
``grad_x_act.py``, ``grad_norm.py``, ``tam.py``), each with its function and the gradient reductions it
declares (:mod:`stages.basemaps.reductions`); :data:`BASE_METHODS` below has one entry per method. Adding a
method: its file, and its entry here. The arrays a method reads, already gathered to row-major grid order
(:func:`schemas.span.tokens_to_grid` decides that order; methods only reshape ``N == h * w`` grid tokens to
``(h, w)``):

``acts`` (N, D)
    Activations of the hooked block at the N image-grid tokens (stored per layer).
``tam_logits`` (T, N)
    The model's own logit of the target class at each image position (lm_head of the final hidden state;
    raw, unclipped; TAM, ``method.md`` §2.1; stored per sample).
a :class:`~stages.basemaps.reductions.Reduction` of the gradient
    ``alpha``, ``alpha_pos``, ``alpha_pp`` (T, D), ``gxa``, ``gnorm`` (T, N), ``grads`` (T, N, D): stored per
    layer by the capture stage, which computes the union of what the configured methods declare
    (:func:`reductions_for`).

Maps are raw and signed by default, as Captum's ``LayerGradCam`` returns them; ReLU, normalisation and
thresholds are explicit options (``anchors.md`` §0.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from stages.basemaps.diffusion_cam import ALPHA_POS, diffusion_cam_base
from stages.basemaps.grad_norm import GNORM, grad_norm
from stages.basemaps.grad_x_act import GXA, grad_x_act
from stages.basemaps.gradcam import ALPHA, grad_cam, grad_cam_from_weights
from stages.basemaps.gradcam_pp import ALPHA_PP, grad_cam_pp
from stages.basemaps.llava_cam import llava_cam
from stages.basemaps.reductions import GRADS, Reduction
from stages.basemaps.tam import tam_map

__all__ = [
    "BASE_METHODS",
    "BaseMethod",
    "REDUCTIONS",
    "Reduction",
    "default_reductions",
    "diffusion_cam_base",
    "get_base_method",
    "get_reduction",
    "grad_cam",
    "grad_cam_from_weights",
    "grad_cam_pp",
    "grad_norm",
    "grad_x_act",
    "llava_cam",
    "reductions_for",
    "tam_map",
]


@dataclass(frozen=True)
class BaseMethod:
    """A registered base method: the arrays it reads, in the order ``compute`` takes them, and how to compute it.

    ``inputs`` holds stored array names (``"acts"``, ``"tam_logits"``) and the gradient
    :class:`~stages.basemaps.reductions.Reduction` objects the method declares. Calling it with a mapping of
    arrays (by name) and the grid returns a (T, h, w) float32 stack; keyword options are passed to ``compute``.
    """

    name: str
    inputs: tuple[str | Reduction, ...]
    compute: Callable[..., np.ndarray]
    summary: str

    @property
    def needs(self) -> tuple[str, ...]:
        """The names of the arrays it reads."""
        return tuple(i.name if isinstance(i, Reduction) else i for i in self.inputs)

    @property
    def reductions(self) -> tuple[Reduction, ...]:
        """The gradient reductions it reads (what the capture stage must store for it)."""
        return tuple(i for i in self.inputs if isinstance(i, Reduction))

    def missing(self, arrays: Mapping[str, object]) -> list[str]:
        """Names of needed arrays that ``arrays`` lacks."""
        return [k for k in self.needs if arrays.get(k) is None]

    def __call__(self, arrays: Mapping[str, object], grid, **options) -> np.ndarray:
        lacking = self.missing(arrays)
        if lacking:
            raise ValueError(f"base method {self.name!r} needs arrays {list(self.needs)}; the capture lacks {lacking}")
        return self.compute(*(arrays[k] for k in self.needs), grid, **options).astype(np.float32, copy=False)


BASE_METHODS: dict[str, BaseMethod] = {
    m.name: m
    for m in (
        BaseMethod("gradcam", ("acts", ALPHA), grad_cam_from_weights, "Grad-CAM: sum_d mean(grad)_d * A_d (signed)"),
        BaseMethod("gradcam-pp", ("acts", ALPHA_PP), grad_cam_pp, "Grad-CAM++: sum_d w_d * A_d, w from positive gradients weighted per position (signed)"),
        BaseMethod("diffusion-cam-base", ("acts", ALPHA_POS), diffusion_cam_base, "official base: mean_c ReLU(mean(ReLU grad)_c * A_c)"),
        BaseMethod("llava-cam", ("acts", ALPHA_POS), llava_cam, "LLaVA-CAM: mean_c mean(ReLU grad)_c * A_c"),
        BaseMethod("grad-x-act", (GXA,), grad_x_act, "sum_d grad_d * A_d per token"),
        BaseMethod("grad-norm", (GNORM,), grad_norm, "||grad||_2 per token (not activation-weighted; not dominated by token norm)"),
        BaseMethod("tam", ("tam_logits",), tam_map, "TAM: target-class logit per position, clipped at 0"),
    )
}


def _registered_reductions() -> dict[str, Reduction]:
    out: dict[str, Reduction] = {GRADS.name: GRADS}
    for method in BASE_METHODS.values():
        for r in method.reductions:
            if out.setdefault(r.name, r) is not r:
                raise ValueError(f"base method {method.name!r} declares a second reduction named {r.name!r}")
    return dict(sorted(out.items()))


#: Every declared gradient reduction by name (``grads``, the full gradient, included).
REDUCTIONS: dict[str, Reduction] = _registered_reductions()


def get_base_method(name: str) -> BaseMethod:
    """Look up a base method by name; ``ValueError`` lists the known names."""
    try:
        return BASE_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown base method {name!r}; known: {', '.join(BASE_METHODS)}") from None


def get_reduction(name: str) -> Reduction:
    """Look up a gradient reduction by its stored name; ``ValueError`` lists the known names."""
    try:
        return REDUCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown gradient reduction {name!r}; known: {', '.join(REDUCTIONS)}") from None


def reductions_for(methods: Iterable[str]) -> tuple[str, ...]:
    """The sorted names of the gradient reductions the base methods ``methods`` read (their union).

    Examples
    --------
    >>> reductions_for(["llava-cam", "gradcam", "diffusion-cam-base", "tam"])
    ('alpha', 'alpha_pos')
    """
    return tuple(sorted({r.name for m in methods for r in get_base_method(m).reductions}))


def default_reductions() -> tuple[str, ...]:
    """What a capture stores when no methods are named: the reductions of every registered base method."""
    return reductions_for(BASE_METHODS)
