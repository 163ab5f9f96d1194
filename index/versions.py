"""Index versions: immutable directories beside each other, one of them current.

An index root holds versions ``v0001``, ``v0002``, ... and a ``CURRENT`` file naming
the one in service. A version is written to a hidden staging directory and renamed
into place only when complete, and ``CURRENT`` is replaced atomically, so a crash at
any point leaves the previous version whole and in service. Adding or removing items
writes a new version and keeps the old one until it is removed by hand (switch back
with ``cnclip index switch``).

A version directory::

    manifest.json    format, the model (runtime.identity), factory, search settings,
                     measured recall (:class:`IndexManifest`)
    index.faiss      the FAISS index; its internal id of an item is the item's row
    ids.npy          the item id of every row (index/store.py)
    items.sqlite     metadata and attributes for filters (index/store.py)
    vectors/         the embeddings, float32 parts (for exact fallback, eval, compaction)
    deleted.npy      rows removed since the index was trained
    texts/           optional: the same layout over a text corpus
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import CnClipError
from runtime.files import staging_directory, sync_directory, write_atomically
from runtime.identity import ModelRef
from runtime.manifests import MANIFEST, read_json, write_json

FORMAT = "cnclip-index"
FORMAT_VERSION = 2  # 2: the model reference (model id, bundle id) instead of bundle_sha256
CURRENT = "CURRENT"
INDEX = "index.faiss"
VECTORS = "vectors"
DELETED = "deleted.npy"
TEXTS = "texts"
_VERSION = re.compile(r"^v(\d{4,})$")

__all__ = ["MANIFEST", "IndexManifest", "IndexVersionError"]


class IndexVersionError(CnClipError):
    """An index directory that is missing, incomplete, corrupted or made for another model."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class IndexManifest:
    """One index version's ``manifest.json``, written by the builders and read by the rest.

    ``model``: the model whose vectors the version holds (:mod:`runtime.identity`);
    ``count`` live items of ``total`` rows (``deleted`` removed); ``factory`` the FAISS
    factory string and ``choice`` why it was chosen; ``search`` the tuned search setting
    (nprobe, ef_search, k_factor) and ``recall`` the measurement it came from;
    ``relevance`` the calibration of cosines into relevance (:class:`index.relevance.
    Calibration`), fitted at build and kept through add and remove.
    """

    model: ModelRef
    dim: int
    count: int
    total: int
    factory: str
    deleted: int = 0
    metric: str = "inner_product"
    choice: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, Any] = field(default_factory=dict)
    recall: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    trained_on: int = 0
    created: str = field(default_factory=now)
    bytes_per_vector: float | None = None
    parent: str | None = None
    relevance: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def chosen(self) -> Mapping[str, Any]:
        """The measured point of the tuned setting (R@1, R@10, qps ...), or {}."""
        return self.recall.get("chosen") or {}

    def replace(self, **changes: Any) -> IndexManifest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model.to_dict(),
            "dim": self.dim,
            "metric": self.metric,
            "count": self.count,
            "total": self.total,
            "deleted": self.deleted,
            "factory": self.factory,
            "choice": dict(self.choice),
            "search": dict(self.search),
            "recall": dict(self.recall),
            "timings": dict(self.timings),
            "trained_on": self.trained_on,
            "created": self.created,
            "bytes_per_vector": self.bytes_per_vector,
            "relevance": dict(self.relevance),
        }
        if self.parent is not None:
            out["parent"] = self.parent
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: Path) -> IndexManifest:
        # Format 1 recorded the bundle's manifest sha256 alone.
        model = (
            ModelRef.from_dict(data["model"])
            if isinstance(data.get("model"), Mapping)
            else ModelRef(bundle_sha256=data.get("bundle_sha256"))
        )
        try:
            return cls(
                model=model,
                dim=int(data["dim"]),
                count=int(data["count"]),
                total=int(data["total"]),
                factory=str(data["factory"]),
                deleted=int(data.get("deleted", 0)),
                metric=str(data.get("metric", "inner_product")),
                choice=dict(data.get("choice") or {}),
                search=dict(data.get("search") or {}),
                recall=dict(data.get("recall") or {}),
                timings=dict(data.get("timings") or {}),
                trained_on=int(data.get("trained_on", 0)),
                created=str(data.get("created", "")),
                bytes_per_vector=data.get("bytes_per_vector"),
                parent=data.get("parent"),
                relevance=dict(data.get("relevance") or {}),
                format_version=int(data["format_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexVersionError(
                f"{where}: the manifest's {exc} is missing or malformed; rebuild the index"
            ) from exc

    @classmethod
    def read(cls, version: Path) -> IndexManifest:
        data = read_json(
            Path(version) / MANIFEST,
            format=FORMAT,
            version=FORMAT_VERSION,
            error=IndexVersionError,
            what="index version",
            fix="rebuild the index",
        )
        return cls.from_dict(data, Path(version) / MANIFEST)

    def write(self, version: Path) -> None:
        write_json(Path(version) / MANIFEST, self.to_dict())


def read_manifest(version: Path) -> IndexManifest:
    """The manifest of the version directory ``version``."""
    return IndexManifest.read(version)


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
    write_atomically(root / CURRENT, (name + "\n").encode("utf-8"))


@contextmanager
def new_version(root: Path) -> Iterator[tuple[Path, str]]:
    """A staging directory for the next version; renamed to ``vNNNN`` when the block ends
    without an exception, removed otherwise."""
    staging = staging_directory(root, ".staging-")
    existing = versions(root)
    number = int(existing[-1][1:]) + 1 if existing else 1
    name = f"v{number:04d}"
    try:
        yield staging, name
        os.rename(staging, root / name)
        sync_directory(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (versions share unchanged parts)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
