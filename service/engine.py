"""What the routes call: the encoders behind their batchers, the caches, the index.

Each public coroutine takes validated request bodies and returns JSON bytes (or rows);
user errors raise :class:`service.errors.ApiError` (or a runtime error the handlers
map to 4xx).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from index.backend import IndexUnavailableError
from runtime.bundle import Bundle
from runtime.images import load_image, preprocess
from runtime.retrieval import class_embeddings
from runtime.templates import PROMPT_TEMPLATES
from runtime.tokenizer import is_blank
from service.batcher import DynamicBatcher, pad_token_rows
from service.cache import Cache, cache_key, normalize_text
from service.catalog import IndexHolder, Served
from service.errors import ApiError, NotReadyError
from service.inputs import decode_base64, fetch_image
from service.metrics import Metrics
from service.schemas import (
    CatalogAddRequest,
    ClassifyRequest,
    ImageInput,
    ImageSearchRequest,
    SearchOptions,
    TextSearchRequest,
)
from service.settings import Settings

Rows = npt.NDArray[np.float32]


def dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Engine:
    """The loaded bundle, its two batchers, the cache and (optionally) the index."""

    def __init__(self, settings: Settings, bundle: Bundle, metrics: Metrics, cache: Cache) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.bundle = bundle
        self.metrics = metrics
        self.cache = cache
        self.holder: IndexHolder | None = None
        pad_id = bundle.tokenizer.pad_id
        text, image = settings.text_batch, settings.image_batch
        self.texts: DynamicBatcher[npt.NDArray[np.int64]] = DynamicBatcher(
            "text",
            lambda rows: bundle.encode_token_ids(pad_token_rows(rows, pad_id)),
            max_batch_size=text.max_batch_size,
            max_wait_ms=text.max_wait_ms,
            max_queue=text.max_queue,
            metrics=metrics,
        )
        self.images: DynamicBatcher[npt.NDArray[np.float32]] = DynamicBatcher(
            "image",
            lambda pixels: bundle.encode_pixels(np.stack(pixels)),
            max_batch_size=image.max_batch_size,
            max_wait_ms=image.max_wait_ms,
            max_queue=image.max_queue,
            metrics=metrics,
        )
        self._decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._searchers = ThreadPoolExecutor(2, thread_name_prefix="search")
        self.http = httpx.AsyncClient(
            timeout=settings.fetch.timeout_s,
            headers={"User-Agent": "cnclip-service"},
            trust_env=False,
        )

    def start(self) -> None:
        self.texts.start()
        self.images.start()

    async def stop(self) -> None:
        await self.texts.stop()
        await self.images.stop()
        self._decoders.shutdown(wait=True)
        self._searchers.shutdown(wait=True)
        await self.http.aclose()
        await self.cache.close()

    def deadline(self) -> float:
        return time.perf_counter() + self.settings.request_timeout_s

    # -- texts ------------------------------------------------------------------------

    def _check_query(self, text: str, what: str = "query") -> str:
        if len(text) > self.limits.max_query_chars:
            raise ApiError(
                400,
                "query_too_long",
                f"the {what} has {len(text)} characters; the limit is "
                f"{self.limits.max_query_chars} (texts over 50 word pieces are cut anyway)",
            )
        if is_blank(text):
            raise ApiError(
                400, "empty_query", f"the {what} is empty (nothing but whitespace or controls)"
            )
        return normalize_text(text)

    async def text_vector(
        self, text: str, deadline: float, what: str = "query"
    ) -> tuple[Rows, bool]:
        """One text's embedding ``[d]`` and whether it was cut to 50 word pieces."""
        norm = self._check_query(text, what)
        key = cache_key("text", self.bundle.bundle_id, norm)
        hit = await self.cache.get("text", key)
        if hit is not None:
            return np.frombuffer(hit, dtype=np.float32, offset=1), hit[0] == 1
        tokens = self.bundle.tokenizer(norm, pad_to="longest")
        ids, truncated = tokens.ids[0], bool(tokens.truncated[0])
        row = await self.texts.submit(ids, deadline)
        value = bytes([int(truncated)]) + np.asarray(row, dtype=np.float32).tobytes()
        await self.cache.set(key, value, self.cache.settings.text_ttl_s)
        return row, truncated

    async def text_vectors(self, texts: Sequence[str], deadline: float) -> tuple[Rows, list[int]]:
        if len(texts) > self.limits.max_batch_texts:
            raise ApiError(
                400,
                "too_many_texts",
                f"{len(texts)} texts; at most {self.limits.max_batch_texts} per request",
            )
        results = await self._waves(
            [self.text_vector(t, deadline, f"text {i}") for i, t in enumerate(texts)]
        )
        rows = np.stack([r for r, _ in results]) if results else np.zeros((0, 0), np.float32)
        return rows, [i for i, (_, cut) in enumerate(results) if cut]

    async def _waves(self, jobs: list[Any]) -> list[Any]:
        """Await ``jobs`` a batch-full at a time, so a long request does not fill the
        queue that other requests share."""
        out: list[Any] = []
        wave = max(self.settings.text_batch.max_batch_size, 8)
        for start in range(0, len(jobs), wave):
            try:
                out += await asyncio.gather(*jobs[start : start + wave])
            except BaseException:
                for job in jobs[start + wave :]:
                    job.close()
                raise
        return out

    # -- images -----------------------------------------------------------------------

    async def image_bytes(self, image: ImageInput, what: str = "image") -> bytes:
        if image._raw is not None:
            return image._raw
        if image.base64 is not None:
            return decode_base64(image.base64, self.limits.max_body_bytes, what)
        assert image.url is not None
        return await fetch_image(image.url, self.settings.fetch, self.http)

    def _prepare(self, raw: bytes, what: str) -> npt.NDArray[np.float32]:
        start = time.perf_counter()
        config = self.bundle.preprocess_config
        decoded = load_image(raw, max_pixels=self.limits.max_image_pixels, name=f"<{what}>")
        pixels = preprocess(decoded, config)
        self.metrics.decode_time.observe(time.perf_counter() - start)
        return pixels

    async def image_vector(self, image: ImageInput, deadline: float, what: str = "image") -> Rows:
        raw = await self.image_bytes(image, what)
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self._decoders, self._prepare, raw, what)
        return await self.images.submit(pixels, deadline)

    async def image_vectors(self, images: Sequence[ImageInput], deadline: float) -> Rows:
        if len(images) > self.limits.max_batch_images:
            raise ApiError(
                400,
                "too_many_images",
                f"{len(images)} images; at most {self.limits.max_batch_images} per request",
            )
        rows = await asyncio.gather(
            *(self.image_vector(img, deadline, f"image {i}") for i, img in enumerate(images))
        )
        return np.stack(rows)

    # -- search -----------------------------------------------------------------------

    def served(self) -> Served:
        if self.holder is None:
            raise ApiError(404, "no_index", "this service has no index (start it with --index DIR)")
        if self.holder.served is None:
            raise NotReadyError("the index is not loaded yet")
        return self.holder.served

    def _check_options(self, request: SearchOptions, served: Served) -> None:
        if request.top_k > self.limits.max_top_k:
            raise ApiError(
                400,
                "invalid_request",
                f"top_k is {request.top_k}; the limit is {self.limits.max_top_k}",
            )
        if request.filter is not None:
            if not request.filter:
                raise ApiError(400, "invalid_filter", "the filter is empty; leave it out")
            unknown = sorted(set(request.filter) - served.keys)
            if unknown:
                known = ", ".join(sorted(served.keys)[:20]) or "none"
                raise ApiError(
                    400,
                    "unknown_filter_field",
                    f"unknown filter field {unknown[0]!r}; this index can filter on: {known}",
                )
            for key, value in request.filter.items():
                if isinstance(value, list) and not value:
                    raise ApiError(400, "invalid_filter", f"filter {key!r}: empty list")

    async def _search(
        self, served: Served, row: Rows, request: SearchOptions, target: str
    ) -> list[dict[str, Any]]:
        index = served.index if target == "images" else served.texts
        if index is None:
            raise ApiError(
                400,
                "no_text_corpus",
                "this index has no text corpus to search (cnclip index build --text-corpus)",
            )
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._searchers,
                lambda: index.search(
                    row[None, :],
                    request.top_k,
                    nprobe=request.nprobe,
                    filter=request.filter if target == "images" else None,
                    with_metadata=True,
                ),
            )
        except IndexUnavailableError:
            self.metrics.index_unavailable.labels(operation="search").inc()
            raise
        self.metrics.search_time.labels(target=target).observe(time.perf_counter() - start)
        assert result.items is not None
        items = []
        for score, record in zip(result.scores[0], result.items[0], strict=False):
            meta = {k: v for k, v in record.items() if k != "id"}
            items.append({"id": record["id"], "score": round(float(score), 6), "metadata": meta})
        return items

    async def search_text(self, request: TextSearchRequest) -> tuple[bytes, bool]:
        """The response body, and whether it came from the cache."""
        served = self.served()
        self._check_options(request, served)
        norm = self._check_query(request.query)
        key = cache_key(
            "search",
            self.bundle.bundle_id,
            served.state,
            norm,
            request.top_k,
            request.filter,
            request.nprobe,
        )
        hit = await self.cache.get("search", key)
        if hit is not None:
            return hit, True
        row, truncated = await self.text_vector(request.query, self.deadline())
        items = await self._search(served, row, request, "images")
        body = dumps({"items": items, "index_version": served.version, "truncated": truncated})
        await self.cache.set(key, body, self.cache.settings.search_ttl_s)
        return body, False

    async def search_image(self, request: ImageSearchRequest) -> bytes:
        served = self.served()
        self._check_options(request, served)
        if request.target == "texts" and request.filter is not None:
            raise ApiError(400, "invalid_filter", "filters apply to image searches only")
        row = await self.image_vector(request.image, self.deadline())
        items = await self._search(served, row, request, request.target)
        return dumps({"items": items, "index_version": served.version, "truncated": False})

    # -- zero-shot --------------------------------------------------------------------

    async def label_embeddings(self, labels: list[str], templates: list[str]) -> Rows:
        """``[labels, d]``: each label's template embeddings averaged (prompt ensembling)."""
        key = cache_key("labels", self.bundle.bundle_id, labels, templates)
        hit = await self.cache.get("labels", key)
        if hit is not None:
            return np.frombuffer(hit, dtype=np.float32).reshape(len(labels), -1)
        prompts = [t.replace("{}", label) for label in labels for t in templates]
        deadline = self.deadline()
        rows = await self._waves(
            [self.text_vector(p, deadline, f"prompt {p[:40]!r}") for p in prompts]
        )
        vectors = np.stack([r for r, _ in rows]).reshape(len(labels), len(templates), -1)
        classes = class_embeddings(vectors).astype(np.float32)
        await self.cache.set(key, classes.tobytes(), self.cache.settings.labels_ttl_s)
        return classes

    async def classify(self, request: ClassifyRequest) -> bytes:
        if len(request.labels) > self.limits.max_labels:
            raise ApiError(
                400,
                "too_many_labels",
                f"{len(request.labels)} labels; at most {self.limits.max_labels}",
            )
        templates = request.templates or list(PROMPT_TEMPLATES)
        if len(templates) > self.limits.max_templates:
            raise ApiError(
                400,
                "too_many_templates",
                f"{len(templates)} templates; at most {self.limits.max_templates}",
            )
        for label in request.labels:
            self._check_query(label, f"label {label[:40]!r}")
        image_row, classes = await asyncio.gather(
            self.image_vector(request.image, self.deadline()),
            self.label_embeddings(request.labels, templates),
        )
        cosine = classes @ image_row
        logits = self.bundle.logit_scale * cosine.astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")[: request.top_k]
        ranked = [
            {
                "label": request.labels[i],
                "probability": round(float(probs[i]), 6),
                "score": round(float(cosine[i]), 6),
            }
            for i in order
        ]
        return dumps({"labels": ranked, "templates": len(templates)})

    # -- catalog ----------------------------------------------------------------------

    async def add_items(self, request: CatalogAddRequest) -> tuple[str, int]:
        if self.holder is None:
            self.served()
        assert self.holder is not None
        if len(request.items) > self.limits.max_catalog_items:
            raise ApiError(
                400,
                "too_many_items",
                f"{len(request.items)} items; at most {self.limits.max_catalog_items} per request",
            )
        ids = [item.id for item in request.items]
        if len(set(ids)) != len(ids):
            raise ApiError(400, "duplicate_id", "the same id appears twice in the request")
        deadline = time.perf_counter() + max(self.settings.request_timeout_s, 60.0)
        rows = await asyncio.gather(
            *(
                self.image_vector(item.image, deadline, f"item {item.id!r}")
                for item in request.items
            )
        )
        records = [{**item.metadata, "id": item.id} for item in request.items]
        version = await self.holder.add(np.stack(rows), ids, records)
        return version, len(ids)

    async def remove_items(self, ids: list[str]) -> tuple[str, int]:
        if self.holder is None:
            self.served()
        assert self.holder is not None
        if len(set(ids)) != len(ids):
            raise ApiError(400, "duplicate_id", "the same id appears twice in the request")
        version = await self.holder.remove(ids)
        return version, len(ids)
