"""Caption accuracy of the toy dMLLM on a synthetic dataset in COCO layout.

Scoring (per image, objects compared left to right): the i-th ``a <colour> <shape>`` phrase of the
generated caption is compared with the i-th ground-truth object (instances sorted by bounding-box centre x,
the order of the captions). ``colour_accuracy`` and ``shape_accuracy`` are the shares of ground-truth objects
whose colour / shape word is right; an object the caption does not mention counts wrong.
``count_accuracy`` is the share of images with the right number of phrases, and ``caption_exact_match`` the
share whose caption equals the reference caption word for word.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schemas.errors import DcamError
from stages.dmllm.sampler import Trajectory, masked_diffusion_sample
from stages.synth import COLOURS, SHAPES
from stages.toy.model import ToyDMLLM

CAPTIONS_FILE = "annotations/captions_val2014.json"
INSTANCES_FILE = "annotations/instances_minival2014.json"
IMAGE_DIR = "image"


@dataclass(frozen=True)
class Sample:
    """One evaluation image: its file, reference caption and objects ``(colour, shape)`` left to right."""

    image_id: int
    path: Path
    caption: str
    objects: tuple[tuple[str, str], ...]


def load_samples(data_dir: str | Path, *, limit: int | None = None) -> list[Sample]:
    """Read a COCO-layout synthetic dataset (``schemas/LAYOUT.md``, ``dataset``), images in id order.

    Raises
    ------
    DcamError
        If an annotation file is missing or an instance has no ``colour``.
    """
    data_dir = Path(data_dir)
    for name in (CAPTIONS_FILE, INSTANCES_FILE):
        if not (data_dir / name).is_file():
            raise DcamError(f"--data: {data_dir / name} not found (expected a dataset written by 'dcam data synth')")
    captions = json.loads((data_dir / CAPTIONS_FILE).read_text())
    instances = json.loads((data_dir / INSTANCES_FILE).read_text())
    shape_of = {c["id"]: c["name"] for c in instances["categories"]}
    objects: dict[int, list[tuple[float, str, str]]] = {}
    for ann in instances["annotations"]:
        if "colour" not in ann:
            raise DcamError(f"--data: instance {ann.get('id')} in {data_dir / INSTANCES_FILE} has no 'colour'")
        x, _, w, _ = ann["bbox"]
        objects.setdefault(ann["image_id"], []).append((x + w / 2.0, ann["colour"], shape_of[ann["category_id"]]))
    caption_of = {c["image_id"]: c["caption"] for c in captions["annotations"]}
    samples = []
    for image in sorted(captions["images"], key=lambda im: im["id"]):
        found = sorted(objects.get(image["id"], []))
        samples.append(
            Sample(
                image_id=image["id"],
                path=data_dir / IMAGE_DIR / image["file_name"],
                caption=caption_of[image["id"]],
                objects=tuple((colour, shape) for _, colour, shape in found),
            )
        )
    return samples[:limit] if limit is not None else samples


def read_objects(caption: str) -> list[tuple[str | None, str | None]]:
    """The ``(colour, shape)`` of each phrase of a generated caption, left to right; a missing word is None.

    Phrases are separated by ``,`` and ``and``; unlike :func:`stages.synth.parse_caption` this never fails, so
    malformed output is scored word by word.

    Examples
    --------
    >>> read_objects("a red circle , a square and a blue cross")
    [('red', 'circle'), (None, 'square'), ('blue', 'cross')]
    """
    phrases: list[list[str]] = [[]]
    for word in caption.split():
        if word in (",", "and"):
            phrases.append([])
        else:
            phrases[-1].append(word)
    found = []
    for words in phrases:
        if not words:
            continue
        colour = next((w for w in words if w in COLOURS), None)
        shape = next((w for w in words if w in SHAPES), None)
        found.append((colour, shape))
    return found


def score_captions(generated: Sequence[str], samples: Sequence[Sample]) -> dict[str, float | int]:
    """Accuracy of ``generated`` captions against ``samples`` (module docstring).

    Returns
    -------
    dict
        ``caption_exact_match``, ``colour_accuracy``, ``shape_accuracy``, ``count_accuracy`` (floats in
        [0, 1]), ``count`` (number of images) and ``objects`` (number of ground-truth objects).
    """
    if len(generated) != len(samples):
        raise ValueError(f"generated: {len(generated)} captions for {len(samples)} samples")
    if not samples:
        raise ValueError("samples: nothing to score")
    exact = colour = shape = count = objects = 0
    for caption, sample in zip(generated, samples):
        found = read_objects(caption)
        exact += caption.split() == sample.caption.split()
        count += len(found) == len(sample.objects)
        for i, (true_colour, true_shape) in enumerate(sample.objects):
            got_colour, got_shape = found[i] if i < len(found) else (None, None)
            colour += got_colour == true_colour
            shape += got_shape == true_shape
        objects += len(sample.objects)
    n = len(samples)
    return {
        "caption_exact_match": exact / n,
        "colour_accuracy": colour / max(objects, 1),
        "shape_accuracy": shape / max(objects, 1),
        "count_accuracy": count / n,
        "count": n,
        "objects": objects,
    }


def generate_caption(
    model: ToyDMLLM,
    image: np.ndarray,
    *,
    mode: str = "full",
    steps: int | None = None,
    block_length: int | None = None,
) -> tuple[str, Trajectory]:
    """Greedy low-confidence masked-diffusion caption of one image.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    mode : {"full", "prefix-cache"}
        See :meth:`ToyDMLLM.make_logits_fn`.
    steps, block_length : int, optional
        Default ``model.gen_length`` each (one token per step, one block).

    Returns
    -------
    caption : str
        Decoded answer without special tokens.
    trajectory : Trajectory
    """
    steps = model.gen_length if steps is None else steps
    block_length = model.gen_length if block_length is None else block_length
    tok = model.tokenizer
    with torch.no_grad():
        logits_fn = model.make_logits_fn(model.preprocess(image), mode=mode)
        trajectory = masked_diffusion_sample(
            logits_fn,
            gen_length=model.gen_length,
            mask_id=tok.mask_id,
            steps=steps,
            block_length=block_length,
            forbid_ids=(tok.pad_id, tok.bos_id, tok.image_id),
        )
    return tok.decode(trajectory.final), trajectory


def evaluate(
    model: ToyDMLLM,
    samples: Sequence[Sample],
    *,
    mode: str = "full",
    steps: int | None = None,
    block_length: int | None = None,
    on_sample: Callable[[], None] | None = None,
) -> dict:
    """Caption every sample and score the captions (:func:`score_captions`), plus ``mode`` and ``seconds``."""
    from PIL import Image

    start = time.perf_counter()
    generated = []
    for sample in samples:
        image = np.asarray(Image.open(sample.path).convert("RGB"))
        caption, _ = generate_caption(model, image, mode=mode, steps=steps, block_length=block_length)
        generated.append(caption)
        if on_sample is not None:
            on_sample()
    result = score_captions(generated, samples)
    result.update(mode=mode, seconds=round(time.perf_counter() - start, 2))
    return result
