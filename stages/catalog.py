"""The artifact catalog: where a stage output lives, whether it exists, and how it is published.

Every stage output lives at ``ROOT/<stage>/<key[:16]>`` where the key digests the stage, its version, its
config and its inputs' content digests (:func:`artifact_key`). A stage whose output exists is ``cached``; a
changed parameter changes that stage's key and so every key after it, and only those stages are ``computed``.
Outputs are written to a temporary directory and renamed into place (:func:`materialize`), so a killed run
never leaves a partial artifact at a final path, and two runs racing on the same root never both publish one.
At a URL root (``s3://...``, :class:`schemas.storage.ArtifactRoot`) the output is computed in the local mirror
and uploaded.

This module is the one owner of: artifact addressing (:func:`artifact_key`, :func:`artifact_dir`), input
digests (:func:`dataset_digest`, :func:`capture_digest`), the done test (:func:`is_done`), computing-or-reusing
and atomic publication (:func:`materialize`), and the run description ``run.json`` (:func:`write_run_record`).
The stages themselves (:mod:`stages.graph` lists them) never decide where they write.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from schemas.errors import DcamError
from schemas.lock import sweep_temporaries, temporary_dir
from schemas.manifest import MANIFEST_FILE, StageManifest, digest_json, read_manifest
from schemas.storage import ArtifactRoot, as_root, write_text_atomic
from schemas.verify import verified_manifest

RUN_FILE = "run.json"


def artifact_key(stage: str, stage_version: str, config: dict[str, Any], input_digests: dict[str, str]) -> str:
    """Digest identifying a stage output: stage, its version, its config and its inputs' content."""
    return digest_json({"stage": stage, "version": stage_version, "config": config, "inputs": input_digests})


def artifact_dir(root: str | Path, stage: str, key: str) -> Path:
    """``ROOT/<stage>/<key[:16]>``."""
    return Path(root) / stage / key[:16]


def dataset_digest(dataset: str | Path) -> str:
    """Content digest of a dataset: its manifest's, or the digest of its files when it has none."""
    from schemas.manifest import digest_files

    try:
        return read_manifest(dataset).content_digest
    except DcamError:
        return digest_files(dataset)


def capture_manifest(store_path: str | Path, root: "ArtifactRoot | str | Path | None" = None) -> StageManifest:
    """The manifest of a finished capture store (read at the URL root when ``root`` is one)."""
    from schemas.capture import finished_manifest

    if root is not None and as_root(root).owns(store_path):
        m = as_root(root).done_manifest(store_path, "capture")
    else:
        m = finished_manifest(store_path)  # once per shard: the manifest alone, not the Zarr store
    if m is None:
        raise DcamError(f"{store_path}: the capture run did not finish (no manifest.json); rerun 'dcam capture'")
    return m


def capture_digest(store_path: str | Path, root: "ArtifactRoot | str | Path | None" = None) -> str:
    """The content digest of a finished capture store (read at the URL root when ``root`` is one)."""
    return capture_manifest(store_path, root).content_digest


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


def sweep_stale(stage_dir: Path) -> None:
    """Remove temporary outputs left by runs that were killed: those whose writer no longer holds their lock
    (:func:`schemas.lock.sweep_temporaries`; a live writer in another container or on another host does)."""
    sweep_temporaries(stage_dir)


def lookup(root: "ArtifactRoot | str | Path", stage: str, version: str, config: dict[str, Any],
           inputs: dict[str, str], *, kind: str | None = None) -> StageResult | None:
    """The existing output of a stage for this config and these inputs, or None (nothing is computed)."""
    ar = as_root(root)
    final = artifact_dir(ar.local, stage, artifact_key(stage, version, config, inputs))
    done = ar.done_manifest(final, kind)
    if done is None:
        return None
    if not ar.remote:  # a cached output is checked once, where it is reused (in a mirror: when it is read)
        done = verified_manifest(final, kind)
    return StageResult(stage, str(final), "cached", done.content_digest)


def materialize(root: "ArtifactRoot | str | Path", stage: str, version: str, config: dict[str, Any],
                inputs: dict[str, str], compute: Callable[[Path], StageManifest], *, kind: str | None = None,
                needs: Sequence[str | Path] = (), force: bool = False) -> StageResult:
    """Compute a stage output unless it already exists; publish it atomically.

    Parameters
    ----------
    root : ArtifactRoot, str or Path
        The artifact root; at a URL root the output is computed in the local mirror and uploaded, and
        ``needs`` (the input artifacts ``compute`` reads) are downloaded first when the mirror lacks them.
    stage, version : str
        The node's name and version (part of the key).
    config : dict
        The node's configuration (part of the key; JSON-serialisable).
    inputs : dict of str to str
        The content digests of the node's inputs (part of the key).
    compute : callable
        ``compute(tmp_dir) -> StageManifest`` writes the artifact into ``tmp_dir``.
    kind : str, optional
        The artifact kind checked on reuse.
    force : bool
        Recompute even when the output exists (``--from`` / ``--only``). An unchanged result leaves the
        published artifact as it is; a changed one (code changed without a version bump) replaces it by two
        renames, never leaving the path empty, and is refused at a URL root, whose other mirrors could not
        notice the replacement.

    Returns
    -------
    StageResult
    """
    ar = as_root(root)
    final = artifact_dir(ar.local, stage, artifact_key(stage, version, config, inputs))
    if not force:
        found = lookup(ar, stage, version, config, inputs, kind=kind)
        if found is not None:
            return found
    t0 = time.perf_counter()
    if not force and ar.remote and is_done(final, kind):  # complete in the mirror, never uploaded (interrupted)
        ar.publish(final)
        return StageResult(stage, str(final), "computed", read_manifest(final).content_digest,
                           time.perf_counter() - t0)
    for path in needs:
        ar.fetch(path)
        verified_manifest(path)
    sweep_stale(final.parent)
    status = "computed"
    with temporary_dir(final) as tmp:
        try:
            manifest = compute(tmp)
            if force and is_done(final, kind):
                old = read_manifest(final).content_digest
                if old == manifest.content_digest:  # recomputed, same content: the published one stays
                    return StageResult(stage, str(final), "computed", old, time.perf_counter() - t0)
                if ar.remote:
                    raise DcamError(f"{stage}: the recomputed output differs from the one published at {final} "
                                    "under the same key (the code changed without a version bump); other "
                                    "mirrors cannot see a replacement, so bump the stage's version instead")
                _swap(tmp, final)  # never a moment without an artifact at the final path
                return StageResult(stage, str(final), "computed", manifest.content_digest, time.perf_counter() - t0)
            try:
                os.rename(tmp, final)
            except OSError:
                if is_done(final, kind):  # another run published the same artifact first
                    manifest, status = read_manifest(final), "cached"
                else:
                    shutil.rmtree(final, ignore_errors=True)  # a stale partial directory
                    os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if ar.publish(final) is False and ar.remote and status == "computed":
        status = "cached"  # another run uploaded it while this one computed it
    return StageResult(stage, str(final), status, manifest.content_digest,
                       time.perf_counter() - t0 if status == "computed" else 0.0)


def _swap(new: Path, final: Path) -> None:
    """Replace the artifact at ``final`` by ``new``: the old one is renamed aside first, then removed."""
    aside = final.parent / f".{final.name}.replaced-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(final, aside)
    try:
        os.rename(new, final)
    except OSError:
        os.rename(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def write_run_record(root: "ArtifactRoot | str | Path", record) -> Path:
    """Write ``ROOT/run.json`` (a :class:`schemas.run.RunRecord`) atomically; at a URL root the mirror's copy
    names mirror paths and the root's names URLs."""
    ar = as_root(root)
    data = record.to_dict()
    path = write_text_atomic(ar.local / RUN_FILE, json.dumps(data, indent=2))
    if ar.remote:
        ar.put_text(RUN_FILE, json.dumps({**ar.urls(data), "root": ar.url}, indent=2))
    return path


def read_run_record(root: str | Path):
    """Read and validate ``ROOT/run.json`` (one-line error when it is missing or malformed)."""
    from schemas.run import RunRecord

    path = Path(root) / RUN_FILE
    if not path.exists():
        raise DcamError(f"{path} does not exist: run 'dcam explain' (or 'dcam run') first")
    return RunRecord.read(path)
