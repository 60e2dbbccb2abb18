"""Owner-only files: everything bulksend writes about recipients is personal data.

One way to create such a file: ``O_CREAT`` with mode 0600, then ``fchmod`` (an existing
file keeps its old mode through ``O_CREAT``), so nothing written here is readable by others.
SQLite creates a database's ``-wal`` and ``-shm`` files with the database file's mode, so
the journal needs nothing more than this for its main file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TextIO

__all__ = ["open_private", "private_fd", "replace_private", "write_private_bytes"]


def private_fd(path: str | os.PathLike[str], flags: int) -> int:
    """Open ``path`` with ``flags`` (``O_CREAT`` is added), made mode 0600.

    Raises:
        OSError: the file cannot be created or opened.
    """
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path, *, append: bool = False) -> TextIO:
    """Open ``path`` for writing text (UTF-8, no newline translation), mode 0600.

    Raises:
        OSError: the file cannot be created or opened.
    """
    fd = private_fd(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    return os.fdopen(fd, "a" if append else "w", encoding="utf-8", newline="")


def write_private_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, created (or truncated) with mode 0600."""
    with os.fdopen(private_fd(path, os.O_WRONLY | os.O_TRUNC), "wb") as out:
        out.write(data)


def replace_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, atomically (a temporary file beside it, renamed), 0600:
    a reader sees the old file or the new, and a full disk leaves the old one whole.

    Raises:
        OSError: it cannot be written (the temporary file is gone again).
    """
    writing = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        with open_private(writing) as out:
            out.write(text)
        os.replace(writing, path)
    except OSError:
        with contextlib.suppress(OSError):
            writing.unlink(missing_ok=True)
        raise
