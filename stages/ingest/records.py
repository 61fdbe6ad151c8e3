"""Reading annotation files record by record: a bad record is rejected with a reason, the others load.

The helpers every dataset format (:mod:`stages.ingest.formats`) shares: JSON and image-header reads,
path confinement to the dataset folder, and :func:`collect`, which turns a record's failure into a
rejection reason.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from schemas.errors import DcamError
from schemas.limits import check_pixels
from stages.ingest.sample import LoadResult, Sample


class Rejected(Exception):
    """A record that cannot become a sample; the message is the reason."""


def read_json(path: Path, what: str = "annotation file") -> Any:
    """The parsed JSON file at ``path``; a one-line :class:`DcamError` when it is missing or malformed."""
    if not path.is_file():
        raise DcamError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DcamError(f"{path} is malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DcamError(f"{path} is not UTF-8 text: {e}") from None
    except RecursionError:
        raise DcamError(f"{path} is nested deeper than the JSON parser follows; refusing it") from None


def image_size(path: Path, what: str) -> tuple[int, int]:
    """(H, W) of an image file, reading only its header; one of more pixels than the limit is rejected
    (:func:`schemas.limits.check_pixels`)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise Rejected(f"{what} file missing: {path}")
    try:
        with warnings.catch_warnings():  # PIL warns above 89M pixels; the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
        check_pixels(h, w, f"{what} {path.name}")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise Rejected(f"{what} file unreadable: {path}: {e}") from None
    except DcamError as e:
        raise Rejected(str(e)) from None
    return h, w


def caption_text(text: Any, where: str) -> str:
    """``text`` when it is a non-empty string, else a rejection naming ``where``."""
    if not isinstance(text, str):
        raise Rejected(f"{where} is not a string")
    if not text.strip():
        raise Rejected(f"{where} is empty")
    return text


def inside(base: Path, name: str, what: str, allow: bool) -> Path:
    """``base / name``, refused (that sample) when the name leaves ``base`` (absolute, or climbing out with
    ``..``) unless ``allow``. Lexical: a symbolic link the dataset's owner placed inside is followed."""
    path = Path(base) / name
    root = os.path.normpath(os.path.abspath(base))
    if not allow and os.path.commonpath([root, os.path.normpath(os.path.abspath(path))]) != root:
        raise Rejected(f"{what} path {name!r} lies outside the dataset folder {base}; pass --allow-outside-paths "
                       "(or set DCAM_ALLOW_OUTSIDE_PATHS=1) to read it")
    return path


def check_size(declared: tuple[int, int], actual: tuple[int, int], what: str) -> None:
    """Reject a file whose size differs from the one the annotation declares."""
    if tuple(declared) != tuple(actual):
        raise Rejected(f"{what} is {actual[0]}x{actual[1]} but the annotation says {declared[0]}x{declared[1]}")


def collect(records: Iterable[tuple[str, Callable[[], Sample]]], limit: int | None, *, file: str, items: str,
            ) -> LoadResult:
    """Build samples record by record, turning a record's failure into a rejection reason.

    Parameters
    ----------
    records : iterable of (sample_id, build)
        ``build()`` returns the sample or raises :class:`Rejected` (or a KeyError, TypeError, ValueError,
        IndexError of a malformed record).
    limit : int or None
        Build at most this many records (rejected ones count).
    file, items : str
        Name the records in messages: ``{file}: {items}[i]``.

    Returns
    -------
    LoadResult

    Raises
    ------
    DcamError
        If two records have the same (canonical) sample id, naming both: which of them the annotations
        meant cannot be told.
    """
    samples: list[Sample] = []
    rejected: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for count, (sample_id, build) in enumerate(records):
        if limit is not None and count >= limit:
            break
        if sample_id in seen:
            raise DcamError(f"duplicate sample id {sample_id}: {file}: {items}[{seen[sample_id]}] and {items}[{count}] "
                            "both map to it; give every record its own id")
        seen[sample_id] = count
        try:
            if not sample_id or "/" in sample_id or "\\" in sample_id or sample_id.startswith("."):
                raise Rejected(f"sample id {sample_id!r} is not usable as a file name")
            samples.append(build())
        except Rejected as e:
            rejected.append((sample_id, str(e)))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            rejected.append((sample_id, f"malformed record: {detail}"))
    return LoadResult(samples, rejected)


def reject(reason: str) -> Callable[[], Sample]:
    """A builder for a record that is known to be bad."""

    def build() -> Sample:
        raise Rejected(reason)

    return build


def check_limit(limit: int | None) -> None:
    """A ``limit`` is None or an integer >= 1 (a ValueError naming it otherwise)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: must be an integer >= 1 or None, got {limit!r}")
