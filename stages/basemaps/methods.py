"""Base CAM maps at token-grid resolution, computed from stored capture arrays.

Every function here is pure and works on the arrays the capture stage stores per
sample, layer and (step) row, already gathered to row-major grid order
(:func:`schemas.span.tokens_to_grid` decides that order; these functions only
reshape ``N == h * w`` grid tokens to ``(h, w)``):

``acts`` (N, D)
    Activations of the hooked block at the N image-grid tokens.
``alpha`` (T, D)
    Per-target channel weights: spatial mean over the grid of the gradient.
``alpha_pos`` (T, D)
    Spatial mean over the grid of ``ReLU(gradient)`` (the official Diffusion-CAM
    and LLaVA-CAM weights, ``method.md`` §1.4 and §3).
``gxa`` (T, N)
    Sum over channels of gradient times activation.
``tam_logits`` (T, N)
    The model's own logit of the target class at each image position (lm_head of
    the final hidden state; raw, unclipped; TAM, ``method.md`` §2.1).
``grads`` (T, N, D), optional
    The full gradient.

Maps are raw and signed by default, as Captum's ``LayerGradCam`` returns them; ReLU,
normalisation and thresholds are explicit options (``anchors.md`` §0.1).

:data:`BASE_METHODS` names each method, the arrays it needs and how to run it on a
mapping of stored arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

__all__ = [
    "grad_cam",
    "grad_cam_from_weights",
    "diffusion_cam_base",
    "llava_cam",
    "grad_x_act",
    "grad_norm",
    "tam_map",
    "BaseMethod",
    "BASE_METHODS",
    "get_base_method",
]


def _grid(grid, n_tokens: int) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be a pair (h, w) of positive integers, got {grid!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"grid must be a pair (h, w) of positive integers, got {grid!r}")
    if h * w != n_tokens:
        raise ValueError(f"grid {h}x{w} holds {h * w} tokens but the arrays have {n_tokens} grid tokens")
    return h, w


def _real(array, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in ndims:
        allowed = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {allowed}, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array.astype(np.float32, copy=False)


def _acts_and_weights(acts, weights, weights_name: str) -> tuple[np.ndarray, np.ndarray]:
    acts = _real(acts, "acts", (2,))
    weights = _real(weights, weights_name, (2,))
    if weights.shape[1] != acts.shape[1]:
        raise ValueError(
            f"{weights_name} has {weights.shape[1]} channels but acts has {acts.shape[1]} (shapes {weights.shape} and {acts.shape})"
        )
    return acts, weights


def grad_cam_from_weights(acts, alpha, grid, *, relu: bool = False) -> np.ndarray:
    """Grad-CAM from stored channel weights: ``map_t = sum_d alpha[t, d] * acts[:, d]``.

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    alpha : ndarray of shape (T, D)
        Channel weights per target, the spatial mean of the gradient (Selvaraju et al. 2017, eq. 1).
    grid : tuple of int (h, w)
        Token grid; ``h * w`` must equal N.
    relu : bool
        Apply the ReLU of the original Grad-CAM (eq. 2). Off by default: the map is signed.

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
        Equals :func:`grad_cam` on the full gradient whose spatial mean is ``alpha``.
    """
    acts, alpha = _acts_and_weights(acts, alpha, "alpha")
    h, w = _grid(grid, acts.shape[0])
    cam = (alpha @ acts.T).reshape(alpha.shape[0], h, w)
    return np.maximum(cam, 0) if relu else cam


def grad_cam(acts, grads, grid, *, relu: bool = False) -> np.ndarray:
    """Grad-CAM of one layer: channel weights are the spatial mean of the gradient.

    ``alpha_d = mean_n grads[n, d]`` and ``map = sum_d alpha_d * acts[:, d]``
    (Selvaraju et al. 2017, eq. 1-2; pytorch-grad-cam ``GradCAM`` without its baked-in
    ReLU and min-max scaling).

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    grads : ndarray of shape (N, D) or (T, N, D)
        Gradient of the target score(s) with respect to ``acts``.
    grid : tuple of int (h, w)
        Token grid; ``h * w`` must equal N.
    relu : bool
        Apply the ReLU of the original Grad-CAM. Off by default: the map is signed.

    Returns
    -------
    cam : ndarray of shape (h, w) or (T, h, w), float32
        One map per target; no target axis when ``grads`` has none.
    """
    grads = _real(grads, "grads", (2, 3))
    acts = _real(acts, "acts", (2,))
    if grads.shape[-2:] != acts.shape:
        raise ValueError(f"grads must have shape (N, D) = {acts.shape} on its last two axes, got {grads.shape}")
    alpha = grads.mean(axis=-2, dtype=np.float64).astype(np.float32)
    cam = grad_cam_from_weights(acts, alpha.reshape(-1, acts.shape[1]), grid, relu=relu)
    return cam[0] if grads.ndim == 2 else cam


def _min_max_official(cam: np.ndarray) -> np.ndarray:
    # predict.py: (cam - min) / (max + 1e-8), per map; note max, not max - min.
    lo = cam.min(axis=(-2, -1), keepdims=True)
    hi = cam.max(axis=(-2, -1), keepdims=True)
    return ((cam - lo) / (hi + np.float32(1e-8))).astype(np.float32)


def diffusion_cam_base(acts, alpha_pos, grid, *, normalize: bool = False) -> np.ndarray:
    """The official Diffusion-CAM base map: ``mean_c ReLU(alpha+_c * A_c)``.

    ``method.md`` §1.4: the channel weights come from the positive-clamped gradient,
    and the ReLU is taken per channel *before* a channel mean (not the usual
    ``ReLU(sum_c alpha_c A_c)``). Because ``alpha+ >= 0``,
    ``ReLU(alpha+_c A_c) = alpha+_c ReLU(A_c)``, so the map is computed exactly as
    ``ReLU(acts) @ alpha+ / D`` without a (T, N, D) temporary.

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    alpha_pos : ndarray of shape (T, D)
        Spatial mean of ``ReLU(gradient)`` per target; must be non-negative.
    grid : tuple of int (h, w)
    normalize : bool
        Apply the official ``(cam - min) / (max + 1e-8)`` per map (note the
        denominator is the maximum, not the range, as in ``predict.py``).

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
        Non-negative by construction.
    """
    acts, alpha_pos = _acts_and_weights(acts, alpha_pos, "alpha_pos")
    if np.any(alpha_pos < 0):
        raise ValueError("alpha_pos must be non-negative (it is the spatial mean of ReLU(gradient))")
    h, w = _grid(grid, acts.shape[0])
    cam = (alpha_pos @ np.maximum(acts, 0).T / np.float32(acts.shape[1])).reshape(-1, h, w)
    return _min_max_official(cam) if normalize else cam


def llava_cam(acts, alpha_pos, grid, *, relu: bool = False, normalize: str | None = None, threshold: float | None = None) -> np.ndarray:
    """LLaVA-CAM (``method.md`` §3): ``mean_c(alpha+_c * F_c)``.

    The original (``demo_smooth_grad_threshold.py``) then applies ReLU, divides by
    the maximum and zeroes values below 0.5; here each step is an option, so
    ``relu=True, normalize="max", threshold=0.5`` reproduces it.

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Activations at the N grid tokens, row-major grid order.
    alpha_pos : ndarray of shape (T, D)
        Spatial mean of ``ReLU(gradient)`` per target.
    grid : tuple of int (h, w)
    relu : bool
        Clip negative values to 0.
    normalize : {None, "max"}
        ``"max"`` divides each map by its maximum (maps whose maximum is not positive
        are left as they are, where the original would divide by zero).
    threshold : float or None
        Set values below ``threshold`` to 0 (after the other steps).

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
    """
    if normalize not in (None, "max"):
        raise ValueError(f"normalize must be None or 'max', got {normalize!r}")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number or None, got {threshold!r}")
    acts, alpha_pos = _acts_and_weights(acts, alpha_pos, "alpha_pos")
    h, w = _grid(grid, acts.shape[0])
    cam = (alpha_pos @ acts.T / np.float32(acts.shape[1])).reshape(-1, h, w)
    if relu:
        cam = np.maximum(cam, 0)
    if normalize == "max":
        peak = cam.max(axis=(1, 2), keepdims=True)
        cam = np.where(peak > 0, cam / np.where(peak > 0, peak, 1), cam)
    if threshold is not None:
        cam = np.where(cam < threshold, np.float32(0), cam)
    return cam.astype(np.float32, copy=False)


def grad_x_act(gxa, grid, *, relu: bool = False) -> np.ndarray:
    """Gradient x activation, summed over channels, per grid token (HiResCAM-style).

    Parameters
    ----------
    gxa : ndarray of shape (T, N)
        ``sum_d grad[t, n, d] * acts[n, d]`` as stored by the capture stage.
    grid : tuple of int (h, w)
    relu : bool
        Clip negative values to 0 (LayerCAM-like display); off by default.

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
    """
    gxa = _real(gxa, "gxa", (2,))
    h, w = _grid(grid, gxa.shape[1])
    cam = gxa.reshape(-1, h, w)
    return np.maximum(cam, 0) if relu else cam.copy()


def grad_norm(gnorm, grid) -> np.ndarray:
    """Gradient norm per grid token: how strongly the target's score responds to each token, whatever its size.

    Not a CAM: no activation weighting. Offered as a base map that is not dominated by token norm. In a pre-norm
    transformer every block reads a token through RMSNorm, so the gradient is nearly orthogonal to the token's
    activation and ``sum_c alpha_c A_c`` loses the signal, while the gradient's mass still lies where the target
    looked (``docs/embedded_default.md``: on the embedded toy it points at the named object for 0.78 to 0.88 of
    words at blocks 0 and 1, against 0.16 to 0.43 for Grad-CAM and 0 for the official base).

    Parameters
    ----------
    gnorm : ndarray of shape (T, N)
        ``||grad[t, n, :]||_2`` as stored by the capture stage.
    grid : tuple of int (h, w)

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32, >= 0
    """
    gnorm = _real(gnorm, "gnorm", (2,))
    h, w = _grid(grid, gnorm.shape[1])
    return gnorm.reshape(-1, h, w).copy()


def tam_map(tam_logits, grid) -> np.ndarray:
    """TAM's raw activation map: the target class logit per image position, clipped at 0.

    ``method.md`` §2.1: ``scores = lm_head(h_last)[:, cls]`` clipped at ``>= 0``. The
    joint image/text min-max normalisation, rank Gaussian filter and ECI of TAM are
    separate steps (:mod:`stages.refine`).

    Parameters
    ----------
    tam_logits : ndarray of shape (T, N)
        Raw logit of each target's class at each grid token.
    grid : tuple of int (h, w)

    Returns
    -------
    cam : ndarray of shape (T, h, w), float32
    """
    tam_logits = _real(tam_logits, "tam_logits", (2,))
    h, w = _grid(grid, tam_logits.shape[1])
    return np.maximum(tam_logits.reshape(-1, h, w), 0)


@dataclass(frozen=True)
class BaseMethod:
    """A registered base method: the stored arrays it needs and how to compute it.

    Calling it with a mapping of stored arrays and the grid returns a (T, h, w)
    float32 stack; keyword options are passed to the underlying function.
    """

    name: str
    needs: tuple[str, ...]
    compute: Callable[..., np.ndarray]
    summary: str

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
        BaseMethod("gradcam", ("acts", "alpha"), grad_cam_from_weights, "Grad-CAM: sum_d mean(grad)_d * A_d (signed)"),
        BaseMethod("diffusion-cam-base", ("acts", "alpha_pos"), diffusion_cam_base, "official base: mean_c ReLU(mean(ReLU grad)_c * A_c)"),
        BaseMethod("llava-cam", ("acts", "alpha_pos"), llava_cam, "LLaVA-CAM: mean_c mean(ReLU grad)_c * A_c"),
        BaseMethod("grad-x-act", ("gxa",), grad_x_act, "sum_d grad_d * A_d per token"),
        BaseMethod("grad-norm", ("gnorm",), grad_norm, "||grad||_2 per token (not activation-weighted; not dominated by token norm)"),
        BaseMethod("tam", ("tam_logits",), tam_map, "TAM: target-class logit per position, clipped at 0"),
    )
}


def get_base_method(name: str) -> BaseMethod:
    """Look up a base method by name; ``ValueError`` lists the known names."""
    try:
        return BASE_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown base method {name!r}; known: {', '.join(BASE_METHODS)}") from None
