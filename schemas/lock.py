"""Locks that hold across processes, PID namespaces (containers) and, on a shared filesystem, hosts.

Every lock here is a ``flock`` on a file or directory: the kernel releases it when its holder dies, so a
lock is never stale and "is its writer alive?" is answered by trying the lock, never by a PID (a PID
means nothing in another PID namespace or on another host). Lock files are opened with ``O_NOFOLLOW``
and never truncated on open, so a symbolic link planted in a shared folder cannot redirect a write.

* :func:`exclusive`: one holder at a time (a capture store, a device); the holder's host, PID and PID
  namespace are written into the lock file, so a refusal names who holds it.
* :func:`temporary_dir`: a stage's temporary output directory, locked by its writer while it exists;
  :func:`sweep_temporaries` removes the ones whose writer is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator

from schemas.errors import DcamError


class LockedError(DcamError):
    """Another process holds the lock."""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


def holder() -> dict[str, object]:
    """Who this process is: host, PID, PID namespace and since when."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def open_lock_file(path: str | os.PathLike) -> int:
    """A descriptor of the lock file at ``path``, created (mode 0644 less the umask) when absent.

    Raises
    ------
    DcamError
        If ``path`` is a symbolic link (it is not followed) or cannot be opened.
    """
    path = Path(path)
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | nofollow, 0o644)
        except PermissionError:  # another user's lock file: a read-only descriptor locks as well
            return os.open(path, os.O_RDONLY | nofollow)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DcamError(f"lock file {path} is a symbolic link; refusing to follow it (remove it)") from None
        raise DcamError(f"cannot open lock file {path}: {e.strerror}") from None


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"pid {info['pid']} on host {info['host']} (pid namespace {info['pid_namespace']}) "
                f"since {info['since']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, *, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the lock file at ``path`` while the context runs.

    Parameters
    ----------
    path : path
        The lock file (created when absent; never followed when a symbolic link).
    what : str
        What the lock protects, for the message of a refusal.
    wait : float
        Seconds to wait for another holder to finish (``math.inf``: as long as it takes); 0 refuses at once.

    Raises
    ------
    LockedError
        If another process still holds it after ``wait`` seconds, naming that process.
    """
    fd = open_lock_file(path)
    try:
        if math.isinf(wait):
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockedError(f"{what} is in use by {_describe(fd)}; wait for it to finish") from None
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        with contextlib.suppress(OSError):  # a read-only descriptor (another user's file) records nothing
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder()).encode(), 0)
        yield
    finally:
        os.close(fd)


def store_lock_path(store: str | os.PathLike) -> Path:
    """The lock file of an artifact directory: beside it, so it exists before the directory does."""
    store = Path(store).resolve()
    return store.parent / f".{store.name}.lock"


TEMP_MARK = ".tmp-"


@contextlib.contextmanager
def temporary_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A new directory beside ``final`` (``.<name>.tmp-<pid>-<random>``), locked while the context runs.

    It is made under another name and renamed once locked, so :func:`sweep_temporaries` never sees it
    unlocked; the lock follows it through a rename into place. Its removal is the caller's.
    """
    final = Path(final)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fresh = final.parent / f".{final.name}.new-{tag}"
    try:
        fresh.mkdir(parents=True)
    except OSError as e:  # a read-only folder
        raise DcamError(f"cannot write in {final.parent}: {e.strerror}") from None
    fd = os.open(fresh, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp = final.parent / f".{final.name}{TEMP_MARK}{tag}"
        os.rename(fresh, tmp)
        yield tmp
    finally:
        os.close(fd)


def sweep_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary directories in ``folder`` whose writer is gone (their lock is free); returns them.

    A writer in another PID namespace or on another host holds its lock as well, so its live temporaries
    stay.
    """
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_MARK}*"):
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its writer is alive
        finally:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed
