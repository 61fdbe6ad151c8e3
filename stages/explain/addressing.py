"""Content-addressed artifact paths and the ``computed`` / ``cached`` decision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.manifest import MANIFEST_FILE, digest_json, read_manifest


def artifact_key(stage: str, stage_version: str, config: dict[str, Any], input_digests: dict[str, str]) -> str:
    """Digest identifying a stage output: stage, its version, its config and its inputs' content."""
    return digest_json({"stage": stage, "version": stage_version, "config": config, "inputs": input_digests})


def artifact_dir(root: str | Path, stage: str, key: str) -> Path:
    """``ROOT/<stage>/<key[:16]>``."""
    return Path(root) / stage / key[:16]


def dataset_digest(dataset: str | Path) -> str:
    """Content digest of a dataset: its manifest's, or the digest of its files when it has none."""
    from schemas.errors import DcamError
    from schemas.manifest import digest_files

    try:
        return read_manifest(dataset).content_digest
    except DcamError:
        return digest_files(dataset)


def is_done(path: Path, kind: str | None = None) -> bool:
    """True when ``path`` holds a complete artifact (its manifest is written last)."""
    if not (path / MANIFEST_FILE).exists():
        return False
    read_manifest(path, kind)  # raises on a schema mismatch rather than silently reusing it
    return True


@dataclass(frozen=True)
class StageResult:
    """What a stage run reports: where its artifact is and whether it was computed now."""

    stage: str
    path: str
    status: str  # "computed" | "cached"
    content_digest: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
