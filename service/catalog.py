"""The index being served, through the backend protocol (:mod:`index.backend`): loaded,
checked against the bundle, followed when another process switches its version or
changes its items, and changed (add, delete) by the catalog endpoints.

The same code serves a FAISS root on a shared volume and a Milvus alias shared by
several replicas. A Milvus server that cannot be reached makes the calls that need it
answer 503 (``index_unavailable``, counted in ``cnclip_index_unavailable_total``) and
``/readyz`` report it; the holder recovers by itself when the server is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import index as index_pkg
from index.backend import IndexBackend, IndexUnavailableError, TextSearcher
from index.build import Corpus
from runtime.errors import CnClipError
from runtime.identity import ModelRef, check_serves
from service.errors import ApiError
from service.metrics import Metrics

log = logging.getLogger("cnclip.service")


@dataclass(frozen=True)
class Served:
    """The index and what the service knows of the version in service when it looked:
    requests read one snapshot, so one answer never mixes two versions' facts."""

    index: IndexBackend
    version: str
    state: str
    keys: frozenset[str]
    count: int
    deleted: int
    factory: str
    model: ModelRef

    @property
    def texts(self) -> TextSearcher | None:
        return self.index.texts


def snapshot(index: IndexBackend) -> Served:
    """What the version serves, read on a worker thread at load and at each switch;
    the vocabulary and calibration are read here too, so that no request pays for the
    first read (a large catalog's vocabulary is a scan of its attributes)."""
    index.vocabulary  # noqa: B018 (read once here, kept by the index)
    index.calibration  # noqa: B018
    return Served(
        index=index,
        version=index.version,
        state=index.state,
        keys=index.keys,
        count=index.count,
        deleted=index.deleted,
        factory=index.factory,
        model=index.model,
    )


class IndexHolder:
    """``holder.served`` is the version in use; ``refresh()`` follows the location."""

    def __init__(self, location: str, bundle: ModelRef, metrics: Metrics) -> None:
        self.location = location
        self.bundle = bundle
        self._metrics = metrics
        self.served: Served | None = None
        self._switching = asyncio.Lock()
        self._unreachable = False

    @property
    def follows(self) -> bool:
        """Whether the location can change under the service (a root, a Milvus alias)."""
        return self.served is not None and self.served.index.writable

    def _accept(self, model: ModelRef) -> None:
        note = check_serves(model, self.bundle, self.location)
        if note:
            log.info(note)

    async def open(self) -> None:
        """Load the version in service (raises ModelMismatchError, IndexVersionError,
        IndexUnavailableError)."""
        loaded = await asyncio.to_thread(index_pkg.load, self.location)
        try:
            self._accept(loaded.model)
            served = await asyncio.to_thread(snapshot, loaded)
        except BaseException:
            loaded.close()
            raise
        self._install(served)

    def _install(self, served: Served) -> None:
        old, self.served = self.served, served
        if old is not None and old.version != served.version:
            self._metrics.index_info.labels(version=old.version, factory=old.factory).set(0)
            self._metrics.index_switches.inc()
            log.info("switched index %s -> %s", old.version, served.version)
            # Searches already running keep their reference; the old version is freed
            # when the last of them ends.
        self._metrics.index_info.labels(version=served.version, factory=served.factory).set(1)
        self._metrics.index_items.labels(target="images").set(served.count)
        if served.texts is not None:
            self._metrics.index_items.labels(target="texts").set(served.texts.count)

    async def refresh(self) -> bool:
        """Follow the location: True when the version changed. A version that cannot be
        served (broken, another model) is logged and the old one kept; an unreachable
        server is logged and counted, and tried again at the next poll."""
        if self.served is None:
            return False
        async with self._switching:
            index = self.served.index
            try:
                switched = await asyncio.to_thread(index.refresh, self._accept)
                served = await asyncio.to_thread(snapshot, index)
            except IndexUnavailableError as exc:
                self._metrics.index_unavailable.labels(operation="refresh").inc()
                if not self._unreachable:  # once, not at every poll
                    log.warning("index unreachable, serving 503 until it is back: %s", exc)
                self._unreachable = True
                return False
            except (CnClipError, OSError) as exc:
                log.error("not switching %s: %s", self.location, exc)
                return False
            if self._unreachable:
                log.info("index %s reachable again", self.location)
                self._unreachable = False
            if served != self.served:
                self._install(served)
            return switched

    async def watch(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.refresh()

    async def ping(self) -> None:
        """Raises IndexUnavailableError when the index's server does not answer."""
        assert self.served is not None
        try:
            await asyncio.to_thread(self.served.index.ping)
        except IndexUnavailableError:
            self._metrics.index_unavailable.labels(operation="ready").inc()
            raise

    def _writable(self) -> IndexBackend:
        if self.served is None:
            raise ApiError(503, "not_ready", "the index is not loaded yet", {"Retry-After": "5"})
        if not self.served.index.writable:
            raise ApiError(
                409,
                "read_only_index",
                "the service serves an index version directory; serve the index root "
                "(the directory holding CURRENT) to change the catalog",
            )
        return self.served.index

    async def _change(self, call: Any, *args: Any, **options: Any) -> str:
        try:
            await asyncio.to_thread(call, *args, **options)
        except IndexUnavailableError:
            self._metrics.index_unavailable.labels(operation="change").inc()
            raise
        await self.refresh()
        assert self.served is not None
        return self.served.version

    async def add(
        self, vectors: npt.NDArray[np.float32], ids: Sequence[str], items: Sequence[dict[str, Any]]
    ) -> str:
        index = self._writable()
        corpus = Corpus(vectors, list(ids), list(items))
        return await self._change(index.add, corpus, model=self.bundle, progress=False)

    async def remove(self, ids: Sequence[str]) -> str:
        index = self._writable()
        return await self._change(index.remove, list(ids))

    def close(self) -> None:
        if self.served is not None:
            self.served.index.close()
            self.served = None
