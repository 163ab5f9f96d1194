"""Caches for text embeddings, label-set embeddings and search results.

Redis when a URL is configured, an in-process LRU otherwise. Keys hash the bundle's
sha256, the index version and the normalized input, so a new bundle or index version
never reads an old entry. When Redis fails, look-ups answer "miss", writes are
dropped, the failure is counted, and Redis is left alone for ``redis_retry_s``, so a
dead Redis costs each request nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.metrics import Metrics
from service.settings import CacheSettings

log = logging.getLogger("cnclip.service")
PREFIX = "cnclip:v1"


def cache_key(kind: str, *parts: Any) -> str:
    """``cnclip:v1:{kind}:{sha256 of the parts}`` (parts: JSON-serializable)."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return f"{PREFIX}:{kind}:{hashlib.sha256(blob.encode('utf-8')).hexdigest()}"


def normalize_text(text: str) -> str:
    """What the tokenizer cannot tell apart: outer and repeated whitespace."""
    return " ".join(text.split())


class Backend(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def close(self) -> None: ...


class LocalBackend:
    """A least-recently-used map with per-entry expiry, for one process."""

    name = "local"

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        found = self._data.get(key)
        if found is None:
            return None
        expires, value = found
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._data[key] = (time.monotonic() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self._entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


class RedisBackend:
    """A Redis server; raises RedisError (or OSError) on failure."""

    name = "redis"

    def __init__(self, url: str, timeout_s: float) -> None:
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
        )

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(key)
        return None if value is None else bytes(value)  # type: ignore[arg-type]

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._client.set(key, value, ex=ttl_s)

    async def ping(self) -> bool:
        return bool(await self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()


class Cache:
    """Counted look-ups over a backend that may fail; ``enabled=False`` caches nothing."""

    def __init__(self, settings: CacheSettings, metrics: Metrics) -> None:
        self.settings = settings
        self._metrics = metrics
        self.backend: Backend | None = None
        if settings.enabled:
            self.backend = (
                RedisBackend(settings.redis_url, settings.redis_timeout_s)
                if settings.redis_url
                else LocalBackend(settings.lru_entries)
            )
        self._down_until = 0.0

    @property
    def describe(self) -> str:
        return "off" if self.backend is None else self.backend.name

    def _available(self) -> bool:
        return self.backend is not None and time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        assert self.backend is not None
        self._metrics.cache_errors.labels(backend=self.backend.name).inc()
        if time.monotonic() >= self._down_until:
            log.warning(
                "cache %s failed (%s); answering uncached for %.0f s",
                self.backend.name,
                exc,
                self.settings.redis_retry_s,
            )
        self._down_until = time.monotonic() + self.settings.redis_retry_s

    async def get(self, kind: str, key: str) -> bytes | None:
        if self.backend is None:
            return None
        value = None
        if self._available():
            try:
                value = await self.backend.get(key)
            except (RedisError, OSError) as exc:
                self._failed(exc)
        self._metrics.cache.labels(kind=kind, result="miss" if value is None else "hit").inc()
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if not self._available():
            return
        assert self.backend is not None
        try:
            await self.backend.set(key, value, ttl_s)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def close(self) -> None:
        if self.backend is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.backend.close()
