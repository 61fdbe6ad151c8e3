"""Ingest stage: dataset formats -> normalised samples (:mod:`.loaders` gathers the names), and
word-to-object matching (:mod:`.words`)."""

from stages.ingest.loaders import (
    DatasetFormat,
    LoadResult,
    ObjectRecord,
    Sample,
    detect_format,
    format_names,
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
    register_format,
)
from stages.ingest.words import classify_word, grounding_at, normalise_word

__all__ = [
    "DatasetFormat",
    "LoadResult",
    "ObjectRecord",
    "Sample",
    "classify_word",
    "detect_format",
    "format_names",
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
    "register_format",
]
