"""Versioned on-disk contracts of diffusion-cam.

Every artifact a stage writes is a directory holding ``manifest.json`` (a
:class:`~schemas.manifest.StageManifest`) plus the stage's data files. The
layout of each artifact kind is described once, in ``schemas/LAYOUT.md``;
every reader and writer goes through the helpers of this package.
"""

from schemas.errors import DcamError, SchemaVersionError
from schemas.manifest import (
    ARTIFACT_SCHEMA_VERSIONS,
    InputRef,
    SampleStatus,
    StageManifest,
    read_manifest,
    write_manifest,
)

__all__ = [
    "ARTIFACT_SCHEMA_VERSIONS",
    "DcamError",
    "InputRef",
    "SampleStatus",
    "SchemaVersionError",
    "StageManifest",
    "read_manifest",
    "write_manifest",
]
