"""The normalised sample record every dataset format is read into, one line of ``samples.jsonl``."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import TypedDict


class CompressedRLE(TypedDict):
    """A COCO compressed RLE: ``{"size": [H, W], "counts": str}``."""

    size: list[int]
    counts: str


class ObjectRecord(BaseModel):
    """One ground-truth object of a sample.

    Attributes
    ----------
    label : int
        Pixel value of the object in the sample's semantic mask (COCO category id; GranDf grounding index + 1).
    name : str
        Category name, or the grounding phrase.
    phrase : str or None
        The grounding phrase (GranDf, TAM anno.json), else None.
    token_positives : tuple of int or None
        ``(char_start, char_end)`` of the phrase in the caption (GranDf), else None.
    mask_rle : dict
        COCO RLE ``{"size": [H, W], "counts": str}`` (compressed, str counts).
    """

    model_config = ConfigDict(frozen=True)

    label: int
    name: str
    phrase: str | None
    token_positives: tuple[int, int] | None
    mask_rle: CompressedRLE


class Sample(BaseModel):
    """A normalised dataset sample; ``model_dump()`` is one line of ``samples.jsonl``.

    Attributes
    ----------
    sample_id : str
        Unique within the dataset, usable as a file name (COCO: ``{image_id:012d}``; GranDf and TAM anno:
        the image file's stem).
    image_path : str
        Absolute path of the image.
    height, width : int
        Image size, checked against the image file.
    captions : list of str
        Reference captions (non-empty).
    objects : list of ObjectRecord
    source : str
        The format it was read from (:func:`stages.ingest.registry.format_names`).
    categories : dict of str to int
        Names a generated word is matched against (``stages.ingest.words.classify_word``): every category of
        the dataset for COCO layouts, the sample's phrases for GranDf and TAM anno.json.
    mask_path : str or None
        Semantic mask PNG when the format ships one (coco-tam, synthetic, tam-anno, ingested samples);
        otherwise :func:`stages.ingest.masks.load_mask` composes the mask from the objects.
    """

    model_config = ConfigDict(frozen=True)

    sample_id: str
    image_path: str
    height: int
    width: int
    captions: list[str]
    objects: list[ObjectRecord]
    source: str
    categories: dict[str, int] = {}
    mask_path: str | None = None


def first_error(error: ValidationError) -> str:
    """A pydantic validation error in one line: where the first problem lies, and what it is."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "record"
    return f"{where}: {first['msg']} ({error.error_count()} problem(s))"


class LoadResult(NamedTuple):
    """Loaded samples and rejected ``(sample_id, reason)`` pairs."""

    samples: list[Sample]
    rejected: list[tuple[str, str]]

    def counts(self) -> str:
        """``"loaded N samples, rejected M"``."""
        return f"loaded {len(self.samples)} samples, rejected {len(self.rejected)}"
