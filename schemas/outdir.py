"""Preparing a stage's output directory without ever losing what the user had there."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from schemas.errors import DcamError
from schemas.manifest import MANIFEST_FILE


def prepare_output_dir(out_dir: Path, *, own_entries: Iterable[str], what: str, overwrite: bool) -> None:
    """Make ``out_dir`` an empty directory.

    An earlier output of the same kind is removed only with ``overwrite``, and only when the
    directory holds nothing but that output's own entries (``own_entries``): anything else there
    belongs to the user and the call refuses. The manifest goes first, so an interrupted
    overwrite never leaves a manifest over partial data.
    """
    own = frozenset(own_entries) | {MANIFEST_FILE}
    if out_dir.exists() and not out_dir.is_dir():
        raise DcamError(f"{out_dir} is a file, not a directory; choose another output directory")
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not entries:
        out_dir.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise DcamError(f"{out_dir} is not empty; choose an empty directory or pass --overwrite to replace the {what} there")
    foreign = [name for name in entries if name not in own]
    if foreign:
        raise DcamError(
            f"{out_dir} holds files that are not part of a {what} ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); refusing to overwrite it, choose another directory"
        )
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    for name in entries:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
