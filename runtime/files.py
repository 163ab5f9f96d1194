"""Writing a file so that readers never see half of it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A unique temporary path beside ``path`` (``.{name}.<random>.tmp``) to write in full;
    when the block ends it is synced and renamed over ``path``, and the directory synced,
    so that readers see the old file or the new one and the rename survives a crash. On
    any failure the temporary file is removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would lock out other users
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    sync_directory(target.parent)


def current_umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def staging_directory(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new empty directory in ``parent`` (created if missing) to fill and then rename
    into place (:func:`replace_directory`), with the permissions of any new directory
    (``0777`` less the umask), not ``mkdtemp``'s ``0700``: a bundle or an index version
    written by one user is served by another (a container's, for one)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def write_atomically(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` (bytes or any buffer) to ``path`` all at once (:func:`atomic_path`).
    Returns ``path``."""
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        handle.write(data)
    return Path(path)


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


def replace_directory(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename a complete ``staging`` directory to ``target`` (beside it, same file system).

    An existing non-empty ``target`` is moved aside first and deleted only once the new
    one is in place, so a failure never leaves neither of them; the parent directory is
    synced so that the rename survives a crash.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(staging, target)
        sync_directory(target.parent)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    sync_directory(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def progress_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a bar the caller wants (``progress``): None lets tqdm draw it
    only on a terminal, True silences it."""
    return None if progress else True
