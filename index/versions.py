"""Index versions: immutable directories beside each other, one of them current.

An index root holds versions ``v0001``, ``v0002``, ... and a ``CURRENT`` file naming
the one in service. A version is written to a hidden staging directory and renamed
into place only when complete, and ``CURRENT`` is replaced atomically, so a crash at
any point leaves the previous version whole and in service. Adding or removing items
writes a new version and keeps the old one until it is removed by hand (switch back
with ``cnclip index switch``).

A version directory::

    manifest.json    format, bundle sha256, factory, search settings, measured recall
    index.faiss      the FAISS index; its internal id of an item is the item's row
    ids.npy          the item id of every row (index/store.py)
    items.sqlite     metadata and attributes for filters (index/store.py)
    vectors/         the embeddings, float32 parts (for exact fallback, eval, compaction)
    deleted.npy      rows removed since the index was trained
    texts/           optional: the same layout over a text corpus
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runtime.errors import CnClipError

FORMAT = "cnclip-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
INDEX = "index.faiss"
VECTORS = "vectors"
DELETED = "deleted.npy"
TEXTS = "texts"
_VERSION = re.compile(r"^v(\d{4,})$")


class IndexVersionError(CnClipError):
    """An index directory that is missing, incomplete, corrupted or made for another model."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def read_manifest(version: Path) -> dict[str, Any]:
    path = version / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IndexVersionError(f"{version}: no {MANIFEST}; not an index version") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexVersionError(f"{path}: unreadable ({exc}); rebuild the index") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexVersionError(f"{path}: not a {FORMAT} manifest")
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > 1:
        raise IndexVersionError(
            f"{path}: index format version {manifest.get('format_version')!r} is newer than "
            f"this cnclip reads ({FORMAT_VERSION}); upgrade cnclip"
        )
    return manifest


def write_manifest(version: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, ensure_ascii=False, indent=2) + "\n"
    tmp = version / f".{MANIFEST}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, version / MANIFEST)


def versions(root: Path) -> list[str]:
    """The version names under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=lambda name: int(name[1:]))


def current_name(root: Path) -> str | None:
    try:
        name = (root / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def resolve(path: str | Path) -> Path:
    """A version directory: ``path`` itself, or the version its ``CURRENT`` names."""
    where = Path(path)
    if (where / MANIFEST).is_file():
        return where
    name = current_name(where)
    if name is None:
        if not where.exists():
            raise IndexVersionError(f"{where}: no such index (build one with cnclip index build)")
        raise IndexVersionError(f"{where}: neither an index version nor an index root")
    version = where / name
    if not (version / MANIFEST).is_file():
        raise IndexVersionError(f"{where}: {CURRENT} names {name}, which is missing or incomplete")
    return version


def switch(root: Path, name: str) -> None:
    """Make ``name`` the current version (an atomic replace of ``CURRENT``)."""
    if not (root / name / MANIFEST).is_file():
        have = ", ".join(versions(root)) or "none"
        raise IndexVersionError(f"{root}: no complete version {name!r} (versions: {have})")
    tmp = root / f".{CURRENT}.tmp"
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, root / CURRENT)


@contextmanager
def new_version(root: Path) -> Iterator[tuple[Path, str]]:
    """A staging directory for the next version; renamed to ``vNNNN`` when the block ends
    without an exception, removed otherwise."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    existing = versions(root)
    number = int(existing[-1][1:]) + 1 if existing else 1
    name = f"v{number:04d}"
    try:
        yield staging, name
        os.rename(staging, root / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (versions share unchanged parts)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
