"""runtime.files: whole-or-nothing writes, with the permissions of ordinary new files
(a bundle exported by one user is served by another: a container's uid 10001)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.files import (
    atomic_path,
    current_umask,
    replace_directory,
    staging_directory,
    write_atomically,
)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_the_process_umask(umask_022: None) -> None:
    assert current_umask() == 0o022
    os.umask(0o027)
    assert current_umask() == 0o027


def test_atomic_files_are_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    target = write_atomically(tmp_path / "manifest.json", b"{}")
    assert target.read_bytes() == b"{}"
    assert mode(target) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = write_atomically(tmp_path / "data.bin", b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_staging_directories_get_the_umask_permissions(tmp_path: Path, umask_022: None) -> None:
    staging = staging_directory(tmp_path / "parent", ".bundle.")
    assert mode(staging) == 0o755
    (staging / "text.onnx").write_bytes(b"x")
    replace_directory(staging, tmp_path / "parent" / "bundle")
    assert mode(tmp_path / "parent" / "bundle") == 0o755
    os.umask(0o077)
    assert mode(staging_directory(tmp_path, ".private.")) == 0o700
