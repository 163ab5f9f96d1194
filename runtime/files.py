"""Writing a file so that readers never see half of it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomically(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` (bytes or any buffer) to ``path`` all at once.

    The bytes go to a temporary file beside ``path`` with a unique name
    (``.{name}.XXXX.tmp``), are synced, and the file is renamed over ``path``, and the
    directory is synced so that the rename survives a crash; on any failure the
    temporary file is removed and ``path`` is left as it was. Returns ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_directory(target.parent)
    return target


def sync_directory(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that renames and new entries in it are on disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
