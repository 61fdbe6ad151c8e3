"""Verified reads: recompute the digests an artifact records and name what does not match.

Every artifact's manifest records a ``content_digest``. A capture store's is the digest of its samples'
digests, each sample records the digest of its arrays (one per array, ``array_digests``) and of its content
attributes, and the manifest lists every sample's digest; every other artifact's is
:func:`~schemas.manifest.digest_files` over its data files. Readers check what they read against these
before using it (:class:`IntegrityError` fails that sample or artifact in one line); ``dcam inspect
--verify`` recomputes all of them (:func:`verify_artifact`).
"""

from __future__ import annotations

from pathlib import Path

from schemas.errors import DcamError
from schemas.manifest import MANIFEST_FILE, StageManifest, digest_files, read_manifest


class IntegrityError(DcamError):
    """An artifact's bytes do not match the digest recorded for them (corruption or tampering)."""


def mismatch(what: str, recorded: str, found: str) -> IntegrityError:
    """The one-line error for a digest that does not match."""
    return IntegrityError(f"{what} does not match its recorded digest (recorded {recorded[:12]}, found {found[:12]})")


#: Artifacts verified by this process: (path, kind, manifest's mtime) -> manifest. A published artifact is
#: immutable, so a run reading one many times (a dataset, once per chain and shard) hashes it once; a later
#: run (another process) hashes it again.
_VERIFIED: dict[tuple[str, str | None, int], StageManifest] = {}


def verified_manifest(path: str | Path, kind: str | None = None) -> StageManifest | None:
    """The manifest of the artifact at ``path`` once its files match its ``content_digest``.

    A capture store is checked sample by sample as it is read (:meth:`schemas.capture.CaptureStore.sample`),
    not here: only the consistency of its manifest is (:func:`schemas.capture.finished_manifest`). A
    directory without a manifest (a raw dataset, which its readers' keys digest whole) returns None.

    Raises
    ------
    IntegrityError
        If the files do not match.
    """
    path = Path(path)
    if not (path / MANIFEST_FILE).is_file() and not (path / "zarr.json").is_file():
        return None
    if (path / "zarr.json").is_file():
        from schemas.capture import finished_manifest

        manifest = finished_manifest(path)
        if manifest is None:
            raise DcamError(f"{path}: the capture run did not finish (no {MANIFEST_FILE}); rerun 'dcam capture'")
        return manifest
    key = (str(path.resolve()), kind, (path / MANIFEST_FILE).stat().st_mtime_ns)
    if key in _VERIFIED:
        return _VERIFIED[key]
    manifest = read_manifest(path, kind)
    found = digest_files(path)
    if found != manifest.content_digest:
        raise mismatch(f"{manifest.kind} artifact {path}", manifest.content_digest, found)
    _VERIFIED[key] = manifest
    return manifest


def verify_artifact(path: str | Path, *, deep: bool = False) -> list[str]:
    """Recompute every digest of the artifact at ``path``; one line per problem (none: it is intact).

    With ``deep``, also the artifacts it was computed from (recursively), and whether each recorded input
    digest is still the digest of that input.
    """
    problems: list[str] = []
    seen: set[Path] = set()
    todo = [Path(path)]
    while todo:
        p = todo.pop(0).resolve()
        if p in seen:
            continue
        seen.add(p)
        try:
            manifest = _verify_one(p, problems)
        except DcamError as e:
            problems.append(f"{p}: {e}")
            continue
        if not deep or manifest is None:
            continue
        for name, ref in manifest.inputs.items():
            src = Path(ref.path)
            if not src.exists():
                problems.append(f"{p}: input {name} {src} no longer exists")
                continue
            try:
                found = read_manifest(src).content_digest
            except DcamError as e:
                problems.append(f"{p}: input {name}: {e}")
                continue
            if found != ref.content_digest:
                problems.append(f"{p}: input {name} {src} has changed since (recorded {ref.content_digest[:12]}, "
                                f"now {found[:12]})")
            todo.append(src)
    return problems


def _verify_one(path: Path, problems: list[str]) -> StageManifest | None:
    if (path / "zarr.json").is_file():
        from schemas.capture import verify_store

        problems.extend(f"{path}: {line}" for line in verify_store(path))
        return read_manifest(path, "capture") if (path / MANIFEST_FILE).is_file() else None
    manifest = read_manifest(path)
    found = digest_files(path)
    if found != manifest.content_digest:
        problems.append(f"{path}: content digest mismatch: manifest records {manifest.content_digest[:12]}, "
                        f"the files give {found[:12]}")
    return manifest
