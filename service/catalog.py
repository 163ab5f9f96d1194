"""The index being served: loaded, checked against the bundle, switched to new versions
while requests go on, and changed (add, delete) under a lock shared by all workers."""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import index as index_pkg
from index.build import Corpus
from index.search import CatalogIndex
from index.shards import SHARDS, ShardedIndex
from index.versions import CURRENT, IndexVersionError, current_name
from runtime.errors import ConfigError, DataError
from runtime.identity import ModelMismatchError, ModelRef, check_serves
from service.errors import ApiError
from service.metrics import Metrics

log = logging.getLogger("cnclip.service")
LOCK = ".service.lock"
Loaded = CatalogIndex | ShardedIndex


@dataclass
class Served:
    """One loaded index version and what the service needs to know about it."""

    index: Loaded
    version: str
    keys: frozenset[str]

    @property
    def texts(self) -> CatalogIndex | None:
        return self.index.texts if isinstance(self.index, CatalogIndex) else None

    @property
    def factory(self) -> str:
        if isinstance(self.index, CatalogIndex):
            return self.index.manifest.factory
        return self.index.shards[0].manifest.factory

    @property
    def deleted(self) -> int:
        if isinstance(self.index, CatalogIndex):
            return len(self.index.deleted)
        return sum(len(s.deleted) for s in self.index.shards)


def _marker(path: Path) -> str:
    """What names the version to serve: the root's CURRENT (each shard's, for a sharded
    root), or the path of a version directory."""
    if (path / SHARDS).is_file():
        shards = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("shard-"))
        return "+".join(f"{p.name}/{current_name(p)}" for p in shards)
    name = current_name(path)
    return name if name is not None else str(path)


def _load(path: Path, bundle: ModelRef) -> Served:
    loaded = index_pkg.load(path)
    try:
        note = check_serves(loaded.model, bundle, path)
        if note:
            log.info(note)
        if isinstance(loaded, CatalogIndex):
            version, keys = loaded.directory.name, loaded.store.attribute_keys()
        else:
            version = "+".join(s.directory.name for s in loaded.shards)
            keys = set().union(*(s.store.attribute_keys() for s in loaded.shards))
    except BaseException:
        loaded.close()
        raise
    return Served(loaded, version, frozenset(keys))


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """One catalog change at a time on ``root``, across workers and processes."""
    with open(root / LOCK, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class IndexHolder:
    """``holder.served`` is the version in use; ``refresh()`` switches when CURRENT moves."""

    def __init__(self, path: Path, bundle: ModelRef, metrics: Metrics) -> None:
        self.path = path
        self.bundle = bundle
        self._metrics = metrics
        self._marker = ""
        self.served: Served | None = None
        self._switching = asyncio.Lock()

    @property
    def is_root(self) -> bool:
        return (self.path / CURRENT).is_file() or (self.path / SHARDS).is_file()

    async def open(self) -> None:
        """Load the current version (raises ModelMismatchError / IndexVersionError on
        failure)."""
        marker = await asyncio.to_thread(_marker, self.path)
        served = await asyncio.to_thread(_load, self.path, self.bundle)
        self._install(served, marker)

    def _install(self, served: Served, marker: str) -> None:
        old, self.served, self._marker = self.served, served, marker
        if old is not None:
            self._metrics.index_info.labels(version=old.version, factory=old.factory).set(0)
            self._metrics.index_switches.inc()
            log.info("switched index %s -> %s", old.version, served.version)
            # Searches already running keep their reference; the old version is freed
            # when the last of them ends.
        self._metrics.index_info.labels(version=served.version, factory=served.factory).set(1)
        self._metrics.index_items.labels(target="images").set(served.index.count)
        if served.texts is not None:
            self._metrics.index_items.labels(target="texts").set(served.texts.count)

    async def refresh(self) -> bool:
        """Switch to the version CURRENT names if it changed; True when switched. A version
        that cannot be served (broken, another bundle) is logged and the old one kept."""
        async with self._switching:
            try:
                marker = await asyncio.to_thread(_marker, self.path)
            except OSError as exc:
                log.error("cannot read %s: %s", self.path, exc)
                return False
            if marker == self._marker:
                return False
            try:
                served = await asyncio.to_thread(_load, self.path, self.bundle)
            except (ConfigError, IndexVersionError, ModelMismatchError, DataError, OSError) as exc:
                log.error("not switching to %s: %s", marker, exc)
                self._marker = marker  # do not retry until CURRENT moves again
                return False
            self._install(served, marker)
            return True

    async def watch(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.refresh()

    def _root(self) -> Path:
        if not self.is_root:
            raise ApiError(
                409,
                "read_only_index",
                "the service serves an index version directory; serve the index root "
                "(the directory holding CURRENT) to change the catalog",
            )
        return self.path

    async def add(
        self, vectors: npt.NDArray[np.float32], ids: Sequence[str], items: Sequence[dict[str, Any]]
    ) -> str:
        root = self._root()
        corpus = Corpus(vectors, list(ids), list(items))

        def change() -> None:
            with _exclusive(root):
                index_pkg.add(root, corpus, model=self.bundle, progress=False)

        await asyncio.to_thread(change)
        await self.refresh()
        assert self.served is not None
        return self.served.version

    async def remove(self, ids: Sequence[str]) -> str:
        root = self._root()

        def change() -> None:
            with _exclusive(root):
                index_pkg.remove(root, list(ids))

        await asyncio.to_thread(change)
        await self.refresh()
        assert self.served is not None
        return self.served.version

    def close(self) -> None:
        if self.served is not None:
            self.served.index.close()
            self.served = None
