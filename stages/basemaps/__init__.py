"""Grad-CAM family base maps at token-grid resolution (pure functions over stored arrays)."""

from stages.basemaps.methods import (
    BASE_METHODS,
    BaseMethod,
    diffusion_cam_base,
    get_base_method,
    grad_cam,
    grad_cam_from_weights,
    grad_x_act,
    llava_cam,
    tam_map,
)

__all__ = [
    "BASE_METHODS",
    "BaseMethod",
    "diffusion_cam_base",
    "get_base_method",
    "grad_cam",
    "grad_cam_from_weights",
    "grad_x_act",
    "llava_cam",
    "tam_map",
]
