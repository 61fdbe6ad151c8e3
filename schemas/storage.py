"""Artifact roots: a local directory, or any fsspec URL (``s3://bucket/prefix``) behind a local mirror.

The stages read and write plain local directories. For a local root nothing here does anything.
For a URL root the stages work in a local *mirror* of the root
(``$DCAM_CACHE_DIR/roots/<name>-<digest>``, default ``~/.cache/dcam``) and the remote root is the
source of truth:

* an artifact is present at the root when its ``manifest.json`` is there: ``manifest.json`` is
  uploaded last, after every data file, so it is the commit marker and an artifact without one (an
  interrupted upload) is absent and computed again;
* a finished artifact directory is uploaded by :meth:`ArtifactRoot.publish`; uploads never delete
  anything, so two runs uploading the same content-addressed artifact at once only overwrite files
  with identical bytes (object PUTs are atomic), and a manifest never points at partial data;
* an artifact present at the root is downloaded into the mirror only when a stage reads it
  (:meth:`ArtifactRoot.fetch`: into a temporary directory, then renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from schemas.errors import DcamError
from schemas.atomic import write_bytes_atomic, write_image_atomic, write_text_atomic
from schemas.lock import temporary_dir
from schemas.manifest import MANIFEST_FILE, StageManifest, parse_manifest, read_manifest

__all__ = ["write_bytes_atomic", "write_image_atomic", "write_text_atomic"]  # re-exported: one writer

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: Protocols whose first path component is a bucket (or container) that must exist beforehand.
_BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"}
INSTALL_HINT = 'pip install -e ".[s3]"'
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL")


def is_url(root: str | os.PathLike) -> bool:
    """True for an fsspec URL other than ``file://`` (which is a local path)."""
    m = _SCHEME.match(str(root))
    return bool(m) and m.group(1).lower() != "file"


def cache_home(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where mirrors of remote roots live: ``cache_dir``, else ``$DCAM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/dcam`` (``~/.cache/dcam``)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("DCAM_CACHE_DIR"):
        return Path(os.environ["DCAM_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dcam"


def _endpoint(storage_options: dict[str, Any]) -> str | None:
    ep = storage_options.get("endpoint_url") or (storage_options.get("client_kwargs") or {}).get("endpoint_url")
    return ep or next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def open_fs(url: str, storage_options: dict[str, Any] | None = None):
    """``(filesystem, path without protocol)`` of a URL; a :class:`DcamError` naming what to install."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - fsspec comes with the base install
        raise DcamError(f"artifact root {url} needs fsspec and s3fs: {INSTALL_HINT}") from None
    try:
        fs, path = url_to_fs(url, **(storage_options or {}))
    except ImportError as e:
        raise DcamError(f"artifact root {url}: {e} ({INSTALL_HINT} for s3:// roots)") from None
    except (TypeError, ValueError) as e:
        raise DcamError(f"artifact root {url}: bad storage_options: {_short(e)}") from None
    return fs, path.rstrip("/")


def storage_error(url: str, e: BaseException) -> DcamError:
    """A one-line error for a failed operation on remote storage."""
    return DcamError(f"artifact root {url}: {_short(e)} (endpoint: storage_options endpoint_url or AWS_ENDPOINT_URL; "
                     f"credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")


def read_remote_manifest(url: str, kind: str | None = None, storage_options: dict[str, Any] | None = None,
                         ) -> StageManifest | None:
    """The manifest of the artifact at a URL, or None when it has none (absent or incomplete)."""
    fs, path = open_fs(url, storage_options)
    try:
        text = fs.cat_file(f"{path}/{MANIFEST_FILE}")
    except FileNotFoundError:
        return None
    except Exception as e:
        raise storage_error(url, e) from None
    return parse_manifest(text, url, kind)


class ArtifactRoot:
    """Where a run's artifacts live: ``local`` is the directory the stages use (the root itself, or
    the mirror of a URL root); ``remote`` says whether there is a URL root behind it."""

    def __init__(self, root: str | os.PathLike, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None):
        self.url = str(root).rstrip("/") or str(root)
        self.remote = is_url(self.url)
        self.storage_options = dict(storage_options or {})
        if self.storage_options and not self.remote:
            raise DcamError(f"storage_options apply to a URL root (s3://...), not the local root {root}")
        if self.remote:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.url.split("://", 1)[1]).strip("-")[-48:]
            tag = hashlib.sha256(json.dumps([self.url, _endpoint(self.storage_options)]).encode()).hexdigest()[:12]
            self.local = (cache_home(cache_dir) / "roots" / f"{name}-{tag}").resolve()
        else:
            self.local = Path(re.sub(r"^file://", "", self.url, flags=re.I)).resolve()
        self._fs = None
        self._base = ""

    def __repr__(self) -> str:
        return f"ArtifactRoot({self.url!r}, local={str(self.local)!r})"

    # ------------------------------------------------------------------------------------- paths
    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._base = open_fs(self.url, self.storage_options)
        return self._fs

    def _rpath(self, rel: str) -> str:
        self.fs  # noqa: B018 - sets _base
        return f"{self._base}/{rel}" if rel else self._base

    def rel(self, path: str | os.PathLike) -> str | None:
        """``path`` relative to the local root (posix), or None when it lies elsewhere."""
        try:
            return Path(path).resolve().relative_to(self.local).as_posix()
        except ValueError:
            return None

    def owns(self, path: str | os.PathLike) -> bool:
        """True when ``path`` is in the mirror of a URL root (so the URL root decides about it)."""
        return self.remote and self.rel(path) is not None

    def url_of(self, path: str | os.PathLike) -> str:
        """The URL of a mirror path (its local path when the root is local or it lies elsewhere)."""
        rel = self.rel(path) if self.remote else None
        if rel is None:
            return str(path)
        return f"{self.url}/{rel}" if rel != "." else self.url

    # ------------------------------------------------------------------------------------- remote
    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DcamError:
            raise
        except FileNotFoundError:
            raise
        except Exception as e:
            raise storage_error(self.url, e) from None

    def check(self) -> None:
        """Fail early, in one line, when a URL root cannot be used (missing backend, bucket or endpoint)."""
        if not self.remote:
            return
        fs = self.fs
        protocol = self.url.split("://", 1)[0].lower()
        bucket = self._base.split("/", 1)[0]
        try:
            if protocol in _BUCKET_PROTOCOLS:
                fs.info(bucket)
            else:
                fs.makedirs(self._base, exist_ok=True)
        except FileNotFoundError:
            raise DcamError(f"artifact root {self.url}: bucket '{bucket}' does not exist (create it first, "
                            f"or check the endpoint: storage_options endpoint_url or AWS_ENDPOINT_URL)") from None
        except PermissionError:
            pass  # credentials limited to the prefix may not describe the bucket; the reads and writes will tell
        except Exception as e:
            raise storage_error(self.url, e) from None
        self.local.mkdir(parents=True, exist_ok=True)
        note = self.local / ".dcam-root.json"
        if not note.exists():
            note.write_text(json.dumps({"url": self.url, "endpoint": _endpoint(self.storage_options)}) + "\n")

    def done_manifest(self, path: str | os.PathLike, kind: str | None = None) -> StageManifest | None:
        """The manifest of a complete artifact, or None. In a URL root's mirror the remote decides: an
        artifact counts as present only when its ``manifest.json`` is at the root."""
        path = Path(path)
        if not self.owns(path):
            return read_manifest(path, kind) if (path / MANIFEST_FILE).is_file() else None
        try:
            text = self._call(self.fs.cat_file, self._rpath(f"{self.rel(path)}/{MANIFEST_FILE}"))
        except FileNotFoundError:
            return None
        return parse_manifest(text, self.url_of(path), kind)

    def fetch(self, path: str | os.PathLike) -> Path:
        """Make the artifact at mirror path ``path`` complete locally (download it when the mirror lacks
        it); a no-op for local roots and for paths outside the mirror."""
        path = Path(path)
        if not self.owns(path) or (path / MANIFEST_FILE).is_file():
            return path
        rel = self.rel(path)
        rdir = self._rpath(rel)
        if self.done_manifest(path) is None:
            raise DcamError(f"{self.url_of(path)} is not a complete artifact (no {MANIFEST_FILE}); "
                            f"rerun the run that writes it")
        fs = self.fs
        fs.invalidate_cache(rdir)
        remote = [f for f in self._call(fs.find, rdir) if f.startswith(rdir + "/")]
        with temporary_dir(path) as tmp:
            try:
                self._call(fs.get, remote, [str(tmp / f[len(rdir) + 1 :]) for f in remote])
                if not (tmp / MANIFEST_FILE).is_file():
                    raise DcamError(f"{self.url_of(path)}: {MANIFEST_FILE} vanished while downloading")
                try:
                    os.rename(tmp, path)
                except OSError:
                    if not (path / MANIFEST_FILE).is_file():  # a partial local directory (an interrupted capture)
                        shutil.rmtree(path, ignore_errors=True)
                        os.rename(tmp, path)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return path

    def publish(self, path: str | os.PathLike, *, replace: bool = False) -> bool:
        """Upload the complete artifact at mirror path ``path``, ``manifest.json`` last. Returns False
        when there was nothing to do (a local root, or the artifact is already at the root).

        ``replace`` (for the report, which is not content-addressed) deletes the remote copy first.
        """
        path = Path(path)
        if not self.owns(path):
            return False
        if not (path / MANIFEST_FILE).is_file():
            raise DcamError(f"{path}: refusing to upload an artifact without {MANIFEST_FILE}")
        rdir = self._rpath(self.rel(path))
        fs = self.fs
        if replace:
            fs.invalidate_cache(rdir)
            if self._call(fs.exists, rdir):
                self._call(fs.rm, rdir, recursive=True)
        elif self.done_manifest(path) is not None:
            return False  # another run uploaded it
        files = sorted(p for p in path.rglob("*") if p.is_file() and p != path / MANIFEST_FILE)
        if files:
            self._call(fs.put, [str(p) for p in files], [f"{rdir}/{p.relative_to(path).as_posix()}" for p in files])
        self._call(fs.put_file, str(path / MANIFEST_FILE), f"{rdir}/{MANIFEST_FILE}")  # the commit marker
        fs.invalidate_cache(rdir)
        return True

    def put_text(self, rel: str, text: str) -> None:
        """Write a small file at a URL root (one atomic object write); a no-op for a local root."""
        if self.remote:
            self._call(self.fs.pipe_file, self._rpath(rel), text.encode())

    def urls(self, obj: Any) -> Any:
        """``obj`` (JSON-like) with every mirror path in it replaced by its URL."""
        if isinstance(obj, dict):
            return {k: self.urls(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.urls(v) for v in obj]
        if isinstance(obj, str) and self.remote and obj.startswith(str(self.local)):
            return self.url_of(obj)
        return obj


def at_root(root: str | os.PathLike, recorded: str | os.PathLike) -> str:
    """Where an artifact recorded at ``recorded`` lies under the artifact root ``root``: ``ROOT/<stage>/<key>``.

    Manifests and ``run.json`` record the paths they were given (relative to the directory a command ran in,
    or the local mirror of a URL root); the root's own layout, the recorded path's last two parts under
    ``root``, finds the artifact from anywhere.

    Parameters
    ----------
    root : str or os.PathLike
        A local directory or a URL.
    recorded : str or os.PathLike

    Returns
    -------
    str
    """
    parts = Path(recorded).parts[-2:]
    if is_url(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root).joinpath(*parts))


def root_of(artifact: str | os.PathLike) -> str:
    """The artifact root holding the artifact directory (or URL) ``ROOT/<stage>/<key>``."""
    if is_url(artifact):
        return str(artifact).rstrip("/").rsplit("/", 2)[0]
    return str(Path(artifact).parent.parent)


def as_root(root: "ArtifactRoot | str | os.PathLike") -> ArtifactRoot:
    """``root`` itself, or an :class:`ArtifactRoot` for a path or URL (storage options from the environment)."""
    return root if isinstance(root, ArtifactRoot) else ArtifactRoot(root)
