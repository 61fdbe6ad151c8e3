"""Synthetic grounded dataset: coloured shapes with exact masks and left-to-right captions.

:func:`render_scene` renders one scene in memory (pure, numpy only); :func:`write_dataset` writes a
deterministic set of scenes in the COCO Caption layout of TAM (``schemas/LAYOUT.md``, ``dataset``).
"""

from stages.synth.render import (
    CATEGORIES,
    COLOURS,
    MAX_OBJECTS,
    SHAPES,
    Scene,
    SceneObject,
    caption_for,
    parse_caption,
    render_scene,
)
from stages.synth.write import write_dataset

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "MAX_OBJECTS",
    "SHAPES",
    "Scene",
    "SceneObject",
    "caption_for",
    "parse_caption",
    "render_scene",
    "write_dataset",
]
