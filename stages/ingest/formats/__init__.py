"""The built-in dataset formats, one module each (its ``FORMAT``), and their registry entries.

The order of the entries below is the detection order (:func:`stages.ingest.registry.detect_format`
returns the first format whose ``detect`` agrees): ``coco`` first, so that ``--instances`` decides;
``synthetic`` before ``coco-tam``, whose layout it extends with a manifest. To add a format, write one
module with a :class:`~stages.ingest.registry.DatasetFormat` and add it to the tuple below.
"""

from stages.ingest.formats import coco, coco_tam, grandf, ingested, synthetic, tam_anno
from stages.ingest.registry import register_format

for _module in (coco, synthetic, coco_tam, tam_anno, ingested, grandf):
    register_format(_module.FORMAT)
