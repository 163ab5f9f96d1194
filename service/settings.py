"""The service's settings: environment variables ``CNCLIP_*`` (nested with ``__``).

``CNCLIP_BUNDLE=/models/vit-b-16 CNCLIP_INDEX=/indexes/products
CNCLIP_TEXT_BATCH__MAX_WAIT_MS=2 CNCLIP_CACHE__REDIS_URL=redis://127.0.0.1:6379/0``.
Nothing reads them at import time: :func:`service.app.create_app` takes a
:class:`Settings` (``Settings()`` reads the environment).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.hybrid import DEFAULT_MIN_RELEVANCE
from runtime.fetch import FetchPolicy
from runtime.sessions import BACKENDS


class BatchSettings(BaseModel):
    """One tower's dynamic batcher (Triton's ``max_batch_size`` and
    ``max_queue_delay_microseconds``)."""

    max_batch_size: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    """How long the oldest request waits for company before its batch runs."""
    max_queue: int = Field(512, ge=1)
    """Requests waiting beyond this are answered 503 with Retry-After."""


class CacheSettings(BaseModel):
    enabled: bool = True
    redis_url: str | None = None
    """``redis://host:port/db``; without it an in-process LRU cache is used."""
    lru_entries: int = Field(20_000, ge=1)
    text_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    labels_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    search_ttl_s: int = Field(300, ge=1)
    redis_timeout_s: float = Field(0.1, gt=0.0)
    redis_retry_s: float = Field(5.0, ge=0.0)
    """After a Redis failure, how long to answer uncached before trying Redis again."""


class LimitSettings(BaseModel):
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_query_chars: int = Field(1000, ge=1)
    max_top_k: int = Field(100, ge=1, le=2048)
    max_labels: int = Field(200, ge=1)
    max_templates: int = Field(32, ge=1)
    max_batch_texts: int = Field(64, ge=1)
    max_batch_images: int = Field(16, ge=1)
    max_catalog_items: int = Field(256, ge=1)


class FetchSettings(BaseModel):
    """Images given by URL."""

    enabled: bool = True
    timeout_s: float = Field(5.0, gt=0.0)
    max_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_redirects: int = Field(3, ge=0)
    allow_private: bool = False
    """Allow loopback, private, link-local and reserved addresses (off: SSRF guard)."""
    retries: int = Field(1, ge=0)
    """Tries again after a connection failure or a 5xx answer."""

    def policy(self) -> FetchPolicy:
        return FetchPolicy(**self.model_dump())


class SecuritySettings(BaseModel):
    api_key: SecretStr | None = None
    """Required (``X-API-Key`` or ``Authorization: Bearer``) for catalog changes, which
    are refused while no key is set."""
    require_for_all: bool = False
    """Require the key for every endpoint but the health checks and metrics."""
    cors_origins: list[str] = Field(default_factory=list)


class SearchSettings(BaseModel):
    """Product search defaults (each request may override them)."""

    min_relevance: float = Field(DEFAULT_MIN_RELEVANCE, ge=0.0, le=1.0)
    """Text queries drop results less likely relevant than this (the index's calibrated
    relevance): a query for what the catalog does not hold answers no items. Indexes
    whose calibration was not fitted on titles (``null``) get no default threshold."""


class UiSettings(BaseModel):
    """The search page at ``/`` (off by default; ``cnclip demo`` turns it on)."""

    enabled: bool = False
    #: a folder served under ``/media/``: items whose metadata has ``image_url`` show it
    media_dir: Path | None = None
    #: labels the page offers for zero-shot classification of an uploaded picture
    labels: list[str] = Field(default_factory=lambda: ["杯子", "T恤", "帽子", "雨伞", "包", "鞋子"])
    #: the field the page's "同款合并" groups by (spu), and the numeric field its boost
    #: uses (sales); each switch is shown only when set
    group_by: str | None = None
    boost_field: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CNCLIP_", env_nested_delimiter="__", extra="ignore"
    )

    bundle: Path
    """The model bundle directory (``cnclip export``)."""
    index: str | None = Field(None, min_length=1)
    """An index root or version directory (``cnclip index build``), or a Milvus alias
    ``milvus://HOST:PORT/NAME``; without it only embedding and classification are served."""
    backend: str = "onnxruntime"
    """One of runtime.sessions.BACKENDS."""
    threads: int | None = Field(None, ge=1)
    device: int = Field(0, ge=0)
    """The GPU index for the GPU backends."""
    decode_threads: int = Field(2, ge=1, le=64)
    """Threads decoding and preprocessing images while the encoders run."""
    request_timeout_s: float = Field(10.0, gt=0.0)
    """Per-request deadline: requests still queued past it are answered 504."""
    index_poll_s: float = Field(2.0, gt=0.0)
    """How often the index root's CURRENT is checked for a new version."""
    text_batch: BatchSettings = BatchSettings(max_batch_size=32, max_wait_ms=2.0)
    image_batch: BatchSettings = BatchSettings(max_batch_size=16, max_wait_ms=5.0)
    cache: CacheSettings = CacheSettings()
    limits: LimitSettings = LimitSettings()
    fetch: FetchSettings = FetchSettings()
    security: SecuritySettings = SecuritySettings()
    search: SearchSettings = SearchSettings()
    ui: UiSettings = UiSettings()
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    log_level: str = "info"
    replica: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    """The name this process gives in every answer's ``X-Cnclip-Replica`` header, to tell
    replicas behind a gateway apart; by default the host name (a container's id)."""

    @field_validator("index", mode="before")
    @classmethod
    def _index_location(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; choose one of {', '.join(BACKENDS)}")
        return value
