"""Ingest stage: dataset loaders (:mod:`.loaders`) and word-to-object matching (:mod:`.words`)."""

from stages.ingest.loaders import (
    FORMATS,
    LoadResult,
    ObjectRecord,
    Sample,
    detect_format,
    ingest,
    load_coco,
    load_coco_tam,
    load_dataset,
    load_grandf,
    load_instance_masks,
    load_mask,
    load_synthetic,
    load_tam_anno,
    read_ingested,
)
from stages.ingest.words import classify_word, grounding_at, normalise_word

__all__ = [
    "FORMATS",
    "LoadResult",
    "ObjectRecord",
    "Sample",
    "classify_word",
    "detect_format",
    "grounding_at",
    "ingest",
    "load_coco",
    "load_coco_tam",
    "load_dataset",
    "load_grandf",
    "load_instance_masks",
    "load_mask",
    "load_synthetic",
    "load_tam_anno",
    "normalise_word",
    "read_ingested",
]
