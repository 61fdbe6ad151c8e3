"""The stage manifest that every artifact carries (``manifest.json``).

A manifest records what produced an artifact (stage name and version, the
config), what it was produced from (the content digests of the upstream
artifacts), what it contains (a content digest, per-sample status) and how
(timings, library and code versions). The Prefect flows derive cache keys from
manifests and ``dcam inspect`` prints the lineage they form.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.atomic import write_text_atomic  # the one atomic writer (0666 less the umask, O_NOFOLLOW)
from schemas.errors import DcamError, SchemaVersionError

#: Version of the manifest document itself.
MANIFEST_SCHEMA_VERSION = "1.0"

#: Current schema version of each artifact kind. Readers accept the same major version.
ARTIFACT_SCHEMA_VERSIONS: dict[str, str] = {
    "dataset": "1.0",
    "capture": "1.0",
    "selection": "1.0",
    "maps": "1.0",
    "scores": "1.0",
    "report": "1.0",
    "faithfulness": "1.0",
}

MANIFEST_FILE = "manifest.json"


class SampleStatus(BaseModel):
    """Outcome of one sample in one stage."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str
    status: Literal["ok", "failed"]
    reason: str | None = None
    seconds: float | None = None
    digest: str | None = Field(default=None, description="the sample's digest (capture stores)")


class InputRef(BaseModel):
    """An upstream artifact this one was computed from."""

    model_config = ConfigDict(extra="forbid")

    path: str
    kind: str
    content_digest: str


class StageManifest(BaseModel):
    """Provenance and contents of one artifact directory."""

    model_config = ConfigDict(extra="forbid")

    manifest_schema_version: str = MANIFEST_SCHEMA_VERSION
    kind: str = Field(description="artifact kind, a key of ARTIFACT_SCHEMA_VERSIONS")
    schema_version: str = Field(description="schema version of the artifact's data files")
    stage: str
    stage_version: str
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, InputRef] = Field(default_factory=dict)
    content_digest: str = ""
    samples: list[SampleStatus] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    library_versions: dict[str, str] = Field(default_factory=dict)
    code_version: str = ""
    created: str = ""

    @property
    def n_ok(self) -> int:
        return sum(s.status == "ok" for s in self.samples)

    @property
    def n_failed(self) -> int:
        return sum(s.status == "failed" for s in self.samples)

    def failed(self) -> list[SampleStatus]:
        return [s for s in self.samples if s.status == "failed"]


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def check_version(what: str, found: str, expected: str, path: str | None = None) -> None:
    """Raise :class:`SchemaVersionError` unless ``found`` has ``expected``'s major version."""
    if _major(found) != _major(expected):
        raise SchemaVersionError(what, found, expected, path)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that affect numerics or formats.

    Read from the package metadata once per process (:func:`_library_versions`); each call returns a fresh
    copy, so a caller may change it.
    """
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "numpy", "scipy", "scikit-image", "zarr", "pandas", "prefect"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["diffusion-cam"] = metadata.version("diffusion-cam")
    except metadata.PackageNotFoundError:
        pass
    return out


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the code (with ``-dirty`` when the tree has changes), or ``unknown``.

    Computed once per process, at the first call: it costs two ``git`` subprocesses (7 to 15 ms), and a
    process runs the code it imported, so an edit of the tree after that does not change what it runs.
    """
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def digest_json(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj`` (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def digest_files(root: str | os.PathLike, patterns: tuple[str, ...] = ("**/*",), exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> str:
    """sha256 over the relative paths and bytes of the files under ``root``."""
    root = Path(root)
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    for p in files:
        rel = p.relative_to(root).as_posix()
        if rel in exclude:
            continue
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike, manifest: StageManifest) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename), so it is either absent or whole."""
    directory = Path(directory)
    if not manifest.created:
        manifest = manifest.model_copy(update={"created": now_iso()})
    if not manifest.library_versions:
        manifest = manifest.model_copy(update={"library_versions": library_versions()})
    if not manifest.code_version:
        manifest = manifest.model_copy(update={"code_version": code_version()})
    return write_text_atomic(directory / MANIFEST_FILE, manifest.model_dump_json(indent=2))


def read_manifest(directory: str | os.PathLike, kind: str | None = None) -> StageManifest:
    """Read and validate the manifest of an artifact directory.

    Raises
    ------
    DcamError
        If there is no manifest or it is malformed, or it is of another kind.
    SchemaVersionError
        If the manifest or the artifact was written under an incompatible schema version.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise DcamError(f"{directory} is not a diffusion-cam artifact: no {MANIFEST_FILE} there")
    try:
        text = path.read_text()
    except OSError as e:  # another user's manifest of mode 0600 (written before manifests followed the umask)
        raise DcamError(f"cannot read {path}: {e.strerror}") from None
    return parse_manifest(text, str(directory), kind)


def parse_manifest(text: str | bytes, where: str, kind: str | None = None) -> StageManifest:
    """Validate the text of the manifest of the artifact at ``where`` (a directory or a URL); see
    :func:`read_manifest`."""
    path = f"{where.rstrip('/')}/{MANIFEST_FILE}"
    directory = where
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise DcamError(f"{path} is not valid JSON: {e}") from None
    found = str(raw.get("manifest_schema_version", "?"))
    check_version("the manifest", found, MANIFEST_SCHEMA_VERSION, str(path))
    try:
        manifest = StageManifest.model_validate(raw)
    except Exception as e:  # pydantic.ValidationError, shortened to its first line
        first = str(e).splitlines()[0]
        raise DcamError(f"{path} is not a valid manifest: {first}") from None
    if kind is not None and manifest.kind != kind:
        raise DcamError(f"{directory} holds a '{manifest.kind}' artifact, expected '{kind}'")
    expected = ARTIFACT_SCHEMA_VERSIONS.get(manifest.kind)
    if expected is not None:
        check_version(f"the {manifest.kind} artifact", manifest.schema_version, expected, str(directory))
    return manifest


def input_ref(directory: str | os.PathLike, kind: str | None = None) -> InputRef:
    """An :class:`InputRef` to an existing artifact, read from its manifest."""
    m = read_manifest(directory, kind)
    return InputRef(path=str(Path(directory).resolve()), kind=m.kind, content_digest=m.content_digest)
