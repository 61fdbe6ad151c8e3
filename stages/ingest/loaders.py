"""The names other stages import to read datasets, gathered from the ingest modules.

``stages.ingest`` is split by responsibility: :mod:`.sample` (the record), :mod:`.records` (record-by-record
reading, rejection), :mod:`.masks` (RLE and semantic masks), :mod:`.registry` (format registry, detection,
:func:`load_dataset`), :mod:`.formats` (one module per format) and :mod:`.write` (the ingest stage). Every
loader returns a :class:`LoadResult` ``(samples, rejected)``: file-level problems (a missing or malformed
annotation file) raise :class:`~schemas.errors.DcamError`; a bad record (missing image or mask file, a mask
whose size differs from its image, an empty caption, an RLE that does not decode, a missing field) rejects
that sample with a reason and the others still load. Nothing is skipped silently.
"""

from stages.ingest.formats.coco import load_coco
from stages.ingest.formats.coco_tam import load_coco_tam
from stages.ingest.formats.grandf import load_grandf
from stages.ingest.formats.ingested import read_ingested
from stages.ingest.formats.synthetic import load_synthetic
from stages.ingest.formats.tam_anno import load_tam_anno
from stages.ingest.masks import load_instance_masks, load_mask, rle_counts
from stages.ingest.registry import DatasetFormat, detect_format, format_names, load_dataset, register_format
from stages.ingest.sample import LoadResult, ObjectRecord, Sample
from stages.ingest.write import ingest

__all__ = [
    "DatasetFormat",
    "LoadResult",
    "ObjectRecord",
    "Sample",
    "detect_format",
    "format_names",
    "ingest",
    "load_coco",
    "load_coco_tam",
    "load_dataset",
    "load_grandf",
    "load_instance_masks",
    "load_mask",
    "load_synthetic",
    "load_tam_anno",
    "read_ingested",
    "register_format",
    "rle_counts",
]
