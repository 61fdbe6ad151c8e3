"""Writing a local file whole or not at all: a temporary file beside it, renamed over it.

The one implementation every writer uses (text, bytes, images); it depends on nothing else in ``schemas``,
so that the manifest writer can use it too.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from schemas.errors import DcamError


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    """Write a local file whole or not at all: a temporary file beside it, renamed over it.

    Parameters
    ----------
    target : str or os.PathLike
        The file; its folder is created if missing.
    data : bytes

    Returns
    -------
    Path
        ``target``.
    """
    target = Path(target)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # 0666 less the umask, as every other file; never through a link planted at the temporary name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:  # a read-only folder
        raise DcamError(f"cannot write {target}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_image_atomic(target: str | os.PathLike, array, *, format: str, **options: Any) -> Path:
    """Write an image array (PIL's ``Image.fromarray``) whole or not at all (:func:`write_bytes_atomic`).

    Parameters
    ----------
    target : str or os.PathLike
    array : ndarray of shape (H, W) or (H, W, 3)
    format : str
        PIL format name (``"PNG"``, ``"JPEG"``).
    **options
        PIL's save options of that format (``quality``, ``subsampling``, ``compress_level``).

    Returns
    -------
    Path
        ``target``.
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=format, **options)
    return write_bytes_atomic(target, buf.getvalue())


def write_text_atomic(target: str | os.PathLike, text: str, *, errors: str = "strict") -> Path:
    """Write a local text file (UTF-8) whole or not at all (:func:`write_bytes_atomic`).

    Parameters
    ----------
    target : str or os.PathLike
    text : str
    errors : str, default "strict"
        As :meth:`str.encode`; ``"replace"`` writes a lone surrogate (undecodable bytes of a dataset
        file) as ``?`` instead of failing.

    Returns
    -------
    Path
        ``target``.
    """
    return write_bytes_atomic(target, text.encode("utf-8", errors))
