"""Bounds on inputs, so that a hostile or broken input fails in one line within a fixed memory budget.

Each limit has a default and an environment variable that changes it:

=========================  ===========================  ==========  =============================================
limit                      variable                     default     what exceeds it
=========================  ===========================  ==========  =============================================
``image_pixels``           ``DCAM_MAX_IMAGE_PIXELS``    100000000   an image (or mask) of more pixels: that sample
                                                                    is rejected before it is decoded
``polygon_coordinate``     ``DCAM_MAX_POLYGON_COORD``   100000      a polygon coordinate that is not finite or
                                                                    larger in magnitude: that annotation's sample
                                                                    is rejected before rasterisation
``steps``                  ``DCAM_MAX_STEPS``           4096        ``--steps`` / ``capture.steps``: the capture
                                                                    refuses to start
``nesting_depth``          ``DCAM_MAX_NESTING_DEPTH``   64          a run config nested deeper: refused
``yaml_aliases``           ``DCAM_MAX_YAML_ALIASES``    100         a run config with more YAML aliases: refused
                                                                    before it is built
``yaml_nodes``             ``DCAM_MAX_YAML_NODES``      100000      a run config of more nodes once its aliases
                                                                    are expanded (an "alias bomb" needs only a
                                                                    few aliases): refused before it is built
``array_bytes``            ``DCAM_MAX_ARRAY_BYTES``     4 GiB       a ``.npy`` input (``refine``, ``score-map``)
                                                                    whose header claims a larger array, or more
                                                                    bytes than the file holds: refused before any
                                                                    memory is allocated
=========================  ===========================  ==========  =============================================

A JSON annotation file nested deeper than Python's parser can follow is refused in one line as well; so is
an image beyond PIL's own guard (about 179M pixels), whatever ``DCAM_MAX_IMAGE_PIXELS`` says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from schemas.errors import DcamError

_ENV = {
    "image_pixels": "DCAM_MAX_IMAGE_PIXELS",
    "polygon_coordinate": "DCAM_MAX_POLYGON_COORD",
    "steps": "DCAM_MAX_STEPS",
    "nesting_depth": "DCAM_MAX_NESTING_DEPTH",
    "yaml_aliases": "DCAM_MAX_YAML_ALIASES",
    "yaml_nodes": "DCAM_MAX_YAML_NODES",
    "array_bytes": "DCAM_MAX_ARRAY_BYTES",
}


@dataclass(frozen=True)
class Limits:
    """The bounds in force (see the module docstring)."""

    image_pixels: int = 100_000_000
    polygon_coordinate: float = 100_000.0
    steps: int = 4096
    nesting_depth: int = 64
    yaml_aliases: int = 100
    yaml_nodes: int = 100_000
    array_bytes: int = 4 << 30


def limits() -> Limits:
    """The defaults, with each ``DCAM_MAX_*`` variable that is set in the environment.

    Raises
    ------
    DcamError
        If a variable is not a positive number.
    """
    values = {}
    for f in fields(Limits):
        raw = os.environ.get(_ENV[f.name])
        if raw is None:
            continue
        try:
            value = float(raw) if f.type == "float" else int(raw)
        except ValueError:
            value = 0
        if not value > 0:
            raise DcamError(f"{_ENV[f.name]}={raw!r}: must be a positive number")
        values[f.name] = value
    return Limits(**values)


def check_pixels(height: int, width: int, what: str) -> None:
    """Refuse an image of more than ``image_pixels`` pixels (before it is decoded).

    Raises
    ------
    DcamError
    """
    bound = limits().image_pixels
    if height * width > bound:
        raise DcamError(f"{what} is {width}x{height} = {height * width} pixels, more than the limit of {bound} "
                        f"({_ENV['image_pixels']})")


def load_npy(path, what: str):
    """A ``.npy`` array, its header checked first: no pickles, and no more bytes than the limit or the file.

    Raises
    ------
    DcamError
        One line naming ``what`` (the option) and the file.
    """
    import numpy as np

    try:  # a memory map reads the header and checks the file holds the bytes it claims, allocating nothing
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy's header parser raises ValueError, SyntaxError or tokenize's TokenError
        raise DcamError(f"{what}: {path} is not a readable .npy array (pickled, truncated or damaged): {e}") from None
    bound = limits().array_bytes
    if mapped.nbytes > bound:
        raise DcamError(f"{what}: {path} holds an array of shape {mapped.shape} ({mapped.nbytes} bytes), more than "
                        f"the limit of {bound} ({_ENV['array_bytes']})")
    return np.array(mapped)


def check_yaml(text: str, where: str) -> None:
    """Refuse YAML nested deeper than ``nesting_depth``, with more than ``yaml_aliases`` aliases or more
    than ``yaml_nodes`` nodes once its aliases are expanded, from its parse events alone (nothing is built).

    Raises
    ------
    DcamError
        Naming the limit and its variable; or for YAML that does not parse.
    """
    import yaml

    bound = limits()
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    stack: list[list] = [[None, 0]]  # open collections: [anchor, expanded size so far]
    aliases = 0

    def add(n: int) -> None:
        stack[-1][1] += n
        if sum(level[1] for level in stack) > bound.yaml_nodes:
            raise DcamError(f"{where}: more than {bound.yaml_nodes} YAML nodes once aliases are expanded "
                            f"(DCAM_MAX_YAML_NODES); refusing it")

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([event.anchor, 1])
            if len(stack) - 1 > bound.nesting_depth:
                raise DcamError(f"{where}: nested deeper than {bound.nesting_depth} levels "
                                "(DCAM_MAX_NESTING_DEPTH); refusing it")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = stack.pop()
            if anchor is not None:
                sizes[anchor] = size
            add(size)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            add(1)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > bound.yaml_aliases:
                raise DcamError(f"{where}: more than {bound.yaml_aliases} YAML aliases (DCAM_MAX_YAML_ALIASES); "
                                "refusing it")
            add(sizes.get(event.anchor, 1))

