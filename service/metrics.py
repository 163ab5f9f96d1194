"""Prometheus metrics (base units, ``_seconds``, ``_total``), one set per app.

With several workers, ``PROMETHEUS_MULTIPROC_DIR`` must be set before
prometheus_client is first imported (``cnclip serve --workers N`` does it); every
worker then writes its values there and ``/metrics`` adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The service's metrics in their own registry (several apps in one process, as in
    tests, do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Histogram(
            "cnclip_request_duration_seconds",
            "Request latency by endpoint, method and status.",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cnclip_batch_size",
            "Requests per encoder batch.",
            ["tower"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "cnclip_queue_depth",
            "Requests waiting for an encoder batch.",
            ["tower"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "cnclip_queue_wait_seconds",
            "Time from a request's arrival in the queue to the start of its batch.",
            ["tower"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_time = Histogram(
            "cnclip_encode_duration_seconds",
            "Encoder time per batch.",
            ["tower"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_time = Histogram(
            "cnclip_image_decode_duration_seconds",
            "Decoding and preprocessing time per image.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.search_time = Histogram(
            "cnclip_search_duration_seconds",
            "Index search time per request.",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "cnclip_cache_requests_total",
            "Cache look-ups by kind (text, labels, search) and result (hit, miss).",
            ["kind", "result"],
            registry=r,
        )
        self.cache_errors = Counter(
            "cnclip_cache_errors_total",
            "Cache back-end failures (the request is answered uncached).",
            ["backend"],
            registry=r,
        )
        self.rejected = Counter(
            "cnclip_rejected_requests_total",
            "Requests refused because the service was busy (queue_full, deadline).",
            ["reason"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "cnclip_batcher_restarts_total",
            "Batcher worker tasks that died and were started again, by tower.",
            ["tower"],
            registry=r,
        )
        self.index_items = Gauge(
            "cnclip_index_items",
            "Live items in the current index version.",
            ["target"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.index_unavailable = Counter(
            "cnclip_index_unavailable_total",
            "Index calls that failed because its server (Milvus) could not be reached, by "
            "operation (search, change, refresh, ready).",
            ["operation"],
            registry=r,
        )
        self.index_switches = Counter(
            "cnclip_index_switches_total",
            "Index versions switched to while serving.",
            registry=r,
        )
        self.model_info = Gauge(
            "cnclip_model_info",
            "The loaded bundle (value 1).",
            ["model_id", "bundle_id", "architecture", "precision", "backend"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.index_info = Gauge(
            "cnclip_index_info",
            "The index version being served (value 1; 0 for versions switched away from).",
            ["version", "factory"],
            registry=r,
            multiprocess_mode="mostrecent",
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every metric (summed over workers in multiprocess mode)."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST

    @staticmethod
    def worker_exited(pid: int) -> None:
        if multiprocess_dir() is not None:
            prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
