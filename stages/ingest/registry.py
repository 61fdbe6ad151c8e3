"""The dataset-format registry: every format registers itself here; detection and loading walk it.

A format is a :class:`DatasetFormat`: a name, a ``detect(probe)`` predicate over the files present and a
``load(request)`` returning a :class:`~stages.ingest.sample.LoadResult`. The built-in formats live one per
file in :mod:`stages.ingest.formats`, whose import list is also the detection order. Adding a format is
one file there (calling :func:`register_format`) plus its line in that list.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from schemas.errors import DcamError
from stages.ingest.records import check_limit, read_json
from stages.ingest.sample import LoadResult


@dataclass(frozen=True)
class LoadRequest:
    """What :func:`load_dataset` was asked to read (see its parameters)."""

    path: Path | None
    limit: int | None = None
    instances: Path | None = None
    captions: Path | None = None
    images: Path | None = None
    allow_outside_paths: bool = False

    def need_path(self, fmt: str) -> Path:
        """The dataset path; a :class:`DcamError` when the format needs one and none was given."""
        if self.path is None:
            raise DcamError(f"format {fmt} needs a dataset PATH")
        return self.path


class Probe:
    """The files a format's ``detect`` looks at: the path, and its JSON parsed once for all formats."""

    def __init__(self, path: Path | None, instances: Path | None = None):
        self.path = path
        self.instances = instances
        self.is_dir = path is not None and path.is_dir()
        self.is_file = path is not None and path.is_file()

    def has(self, relative: str) -> bool:
        """Whether the directory holds the file ``relative``."""
        return self.is_dir and (self.path / relative).is_file()

    @cached_property
    def json(self) -> Any:
        """The parsed JSON file (only read for a file path); a :class:`DcamError` when it is malformed."""
        return read_json(self.path)


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset format.

    Attributes
    ----------
    name : str
        The ``--format`` value and :attr:`Sample.source`.
    detect : callable (Probe) -> bool
        Whether the files present are this format.
    load : callable (LoadRequest) -> LoadResult
    looks_like : str
        What ``detect`` looks for, in words (the message when no format matches).
    reads_artifact : bool, default False
        The dataset is a diffusion-cam artifact with a manifest, recorded as the ingest's input.
    """

    name: str
    detect: Callable[[Probe], bool]
    load: Callable[[LoadRequest], LoadResult]
    looks_like: str
    reads_artifact: bool = False


_FORMATS: dict[str, DatasetFormat] = {}


def register_format(fmt: DatasetFormat) -> DatasetFormat:
    """Add a format after those registered before it (detection tries them in that order).

    Raises
    ------
    ValueError
        If a format of that name is registered already.
    """
    if fmt.name in _FORMATS:
        raise ValueError(f"dataset format {fmt.name!r} is registered already")
    _FORMATS[fmt.name] = fmt
    return fmt


def _registered() -> dict[str, DatasetFormat]:
    importlib.import_module("stages.ingest.formats")  # registers the built-in formats on first use

    return _FORMATS


def format_names() -> tuple[str, ...]:
    """Names of the registered formats, in detection order."""
    return tuple(_registered())


def get_format(name: str) -> DatasetFormat:
    """The registered format ``name``; a ValueError naming the known ones otherwise."""
    formats = _registered()
    if name not in formats:
        raise ValueError(f"fmt: unknown format {name!r}; expected one of {', '.join(formats)}")
    return formats[name]


def detect_format(path: str | os.PathLike | None, *, instances: str | os.PathLike | None = None) -> str:
    """Tell the dataset format from the files present: the first registered format whose ``detect`` agrees.

    Parameters
    ----------
    path : str or os.PathLike or None
        Dataset directory or annotation file.
    instances : str or os.PathLike, optional
        A raw COCO instances file given apart (``--instances``), which makes it ``coco``.

    Returns
    -------
    str
        One of :func:`format_names`.

    Raises
    ------
    DcamError
        If the path is missing or matches no format.
    """
    formats = _registered()
    probe = Probe(None if path is None else Path(path), None if instances is None else Path(instances))
    if instances is None and not (probe.is_dir or probe.is_file):
        raise DcamError(f"dataset not found: {path}")
    for fmt in formats.values():
        if fmt.detect(probe):
            return fmt.name
    kinds = "; ".join(f"{f.name}: {f.looks_like}" for f in formats.values())
    raise DcamError(f"{path}: cannot tell the dataset format ({kinds}); for raw COCO pass "
                    "--instances/--captions/--images")


def resolve_format(path, fmt: str | None, instances=None) -> str:
    """``fmt`` checked against the registry, or the detected format when None."""
    return detect_format(path, instances=instances) if fmt is None else get_format(fmt).name


def load_dataset(
    path: str | os.PathLike | None,
    *,
    fmt: str | None = None,
    limit: int | None = None,
    instances: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    allow_outside_paths: bool | None = None,
) -> LoadResult:
    """Load any registered dataset format, detecting the format unless ``fmt`` is given.

    Parameters
    ----------
    path : str or os.PathLike or None
        Dataset directory or annotation file; for raw COCO the instances JSON (or None with ``instances``).
    fmt : str, optional
        Format (:func:`format_names`); default :func:`detect_format`.
    limit : int, optional
        Read at most this many records.
    instances, captions, images : str or os.PathLike, optional
        Raw COCO files (``images`` is also GranDf's image directory).
    allow_outside_paths : bool, optional
        Read images and masks that the annotations place outside the dataset folder (an absolute path, or
        one climbing out with ``..``); otherwise such a sample is rejected. Default: whether the environment
        sets ``DCAM_ALLOW_OUTSIDE_PATHS=1``.

    Returns
    -------
    LoadResult
    """
    if allow_outside_paths is None:
        allow_outside_paths = os.environ.get("DCAM_ALLOW_OUTSIDE_PATHS") == "1"
    name = resolve_format(path, fmt, instances)
    check_limit(limit)
    as_path = (lambda p: None if p is None else Path(p))
    request = LoadRequest(path=as_path(path), limit=limit, instances=as_path(instances), captions=as_path(captions),
                          images=as_path(images), allow_outside_paths=allow_outside_paths)
    return _registered()[name].load(request)
