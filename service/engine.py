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
from index.hybrid import Answer, Boost, ProductQuery, TextPlan, plan_text, product_search
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
    MultimodalSearchRequest,
    SearchOptions,
    TextOptions,
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
        known = ", ".join(sorted(served.keys)[:20]) or "none"
        for name, conditions in (("filter", request.filter), ("exclude", request.exclude)):
            if conditions is None:
                continue
            if not conditions:
                raise ApiError(400, "invalid_filter", f"the {name} is empty; leave it out")
            unknown = sorted(set(conditions) - served.keys)
            if unknown:
                raise ApiError(
                    400,
                    "unknown_filter_field",
                    f"unknown {name} field {unknown[0]!r}; this index can filter on: {known}",
                )
            for key, value in conditions.items():
                if isinstance(value, list) and not value:
                    raise ApiError(400, "invalid_filter", f"{name} {key!r}: empty list")
        if request.group_by is not None and request.group_by not in served.keys:
            raise ApiError(
                400,
                "unknown_group_by_field",
                f"unknown group_by field {request.group_by!r}; this index has: {known}",
            )
        for boost in request.boost or ():
            if boost.field not in served.keys:
                raise ApiError(
                    400,
                    "unknown_boost_field",
                    f"unknown boost field {boost.field!r}; this index has: {known}",
                )

    async def _run(self, call: Any) -> Any:
        """A blocking index call on the search threads; Milvus down is counted."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._searchers, call)
        except IndexUnavailableError:
            self.metrics.index_unavailable.labels(operation="search").inc()
            raise

    async def _search_texts(
        self, served: Served, row: Rows, request: ImageSearchRequest
    ) -> list[dict[str, Any]]:
        """Image to text: the version's text corpus, with relevance on the catalog's
        calibration (a cosine is symmetric)."""
        texts = served.texts
        if texts is None:
            raise ApiError(
                400,
                "no_text_corpus",
                "this index has no text corpus to search (cnclip index build --text-corpus)",
            )
        if request.filter is not None or request.exclude is not None:
            raise ApiError(400, "invalid_filter", "filters apply to image searches only")
        if request.group_by is not None or request.boost:
            raise ApiError(
                400, "invalid_request", "group_by and boost apply to image searches only"
            )
        start = time.perf_counter()
        result = await self._run(
            lambda: texts.search(
                row[None, :], request.top_k, nprobe=request.nprobe, with_metadata=True
            )
        )
        self.metrics.search_time.labels(target="texts").observe(time.perf_counter() - start)
        calibration = served.index.calibration
        assert result.items is not None
        items = []
        for score, record in zip(result.scores[0], result.items[0], strict=False):
            relevance = float(calibration.relevance([score])[0]) if calibration is not None else 0.0
            if relevance < (request.min_relevance or 0.0):
                continue
            meta = {k: v for k, v in record.items() if k != "id"}
            items.append(
                {
                    "id": record["id"],
                    "score": round(float(score), 6),
                    "relevance": round(relevance, 6),
                    "metadata": meta,
                }
            )
        return items

    async def _product(
        self,
        served: Served,
        request: SearchOptions,
        *,
        text: str | None,
        image: Rows | None,
        weights: tuple[float, float],
        default_relevance: float,
        deadline: float,
    ) -> dict[str, Any]:
        """A product search (:mod:`index.hybrid`): the text read for negation and
        attribute words, embedded with its negated phrases, summed with the image's
        embedding, and searched in the request's mode; the response body."""
        index = served.index
        options = request if isinstance(request, TextOptions) else None
        understand = options.understand if options is not None else False
        plan = TextPlan("", request.filter, request.exclude, (), None)
        if text is not None:
            plan = plan_text(
                index,
                text,
                understand=understand,
                filter=request.filter,
                exclude=request.exclude,
            )
        mode = options.mode if options is not None else None
        if mode is None:
            mode = "hybrid" if text is not None and index.has_lexical else "vector"
        if mode != "vector":
            if text is None:
                raise ApiError(400, "invalid_request", f"the {mode} mode needs a query text")
            if not index.has_lexical:
                raise ApiError(
                    400,
                    "no_lexical_index",
                    f"the {mode} mode needs a lexical index, which this index has not (its "
                    "items had no titles when it was built); use the vector mode",
                )
        truncated = False
        vector: Rows | None = None
        if text is not None and mode != "lexical":  # the lexical mode embeds nothing
            row, truncated = await self.text_vector(plan.text, deadline)
            vector = weights[0] * row
        if image is not None and mode != "lexical":
            vector = weights[1] * image if vector is None else vector + weights[1] * image
        if vector is not None:
            norm = float(np.linalg.norm(vector))
            if norm == 0.0:
                raise ApiError(400, "invalid_request", "the weighted query embedding is zero")
            vector = (vector / norm).astype(np.float32)
        negated = None
        if plan.negated and vector is not None:
            rows = await self._waves(
                [self.text_vector(p, deadline, f"phrase {p[:40]!r}") for p in plan.negated]
            )
            negated = np.stack([r for r, _ in rows])
        minimum = request.min_relevance
        calibration = index.calibration
        if calibration is None or calibration.method != "platt":
            default_relevance = 0.0  # a rank against noise: no threshold by default
        query = ProductQuery(
            k=request.top_k,
            mode=mode,
            vector=vector,
            text=plan.text if text is not None else None,
            filter=plan.filter,
            exclude=plan.exclude,
            negated=negated,
            fusion=options.fusion if options is not None else "rrf",
            alpha=options.alpha if options is not None else 0.5,
            min_relevance=default_relevance if minimum is None else minimum,
            group_by=request.group_by,
            group_size=request.group_size,
            boosts=tuple(Boost(b.field, b.weight, b.transform) for b in request.boost or ()),
            explain=request.explain,
            nprobe=request.nprobe,
        )
        start = time.perf_counter()
        answer: Answer = await self._run(lambda: product_search(index, query))
        self.metrics.search_time.labels(target="images").observe(time.perf_counter() - start)
        items = []
        for hit in answer.hits:
            item: dict[str, Any] = {
                "id": hit.id,
                "score": round(hit.score, 6),
                "relevance": round(hit.relevance, 6),
                "metadata": hit.metadata,
            }
            if hit.group is not None:
                item["group"] = hit.group
            if request.explain:
                item["explain"] = hit.explain
            items.append(item)
        body: dict[str, Any] = {
            "items": items,
            "index_version": served.version,
            "truncated": truncated,
            "mode": mode,
        }
        if plan.interpretation is not None:
            body["interpreted"] = plan.interpretation.to_dict()
        if not items:
            body["hint"] = _hint(answer, query.min_relevance)
        return body

    async def search_text(self, request: TextSearchRequest) -> tuple[bytes, bool]:
        """The response body, and whether it came from the cache."""
        served = self.served()
        self._check_options(request, served)
        norm = self._check_query(request.query)
        default = self.settings.search.min_relevance
        options = request.model_dump(mode="json", exclude={"query"})
        key = cache_key("search", self.bundle.bundle_id, served.state, norm, options, default)
        hit = await self.cache.get("search", key)
        if hit is not None:
            return hit, True
        body = await self._product(
            served,
            request,
            text=request.query,
            image=None,
            weights=(1.0, 0.0),
            default_relevance=default,
            deadline=self.deadline(),
        )
        content = dumps(body)
        await self.cache.set(key, content, self.cache.settings.search_ttl_s)
        return content, False

    async def search_image(self, request: ImageSearchRequest) -> bytes:
        served = self.served()
        self._check_options(request, served)
        deadline = self.deadline()
        row = await self.image_vector(request.image, deadline)
        if request.target == "texts":
            items = await self._search_texts(served, row, request)
            body = {"items": items, "index_version": served.version, "truncated": False}
            return dumps({**body, "mode": "vector"})
        body = await self._product(
            served,
            request,
            text=None,
            image=row,
            weights=(0.0, 1.0),
            default_relevance=0.0,
            deadline=deadline,
        )
        return dumps(body)

    async def search(self, request: MultimodalSearchRequest) -> bytes:
        """``POST /v1/search``: a text, an image, or both (weighted)."""
        served = self.served()
        self._check_options(request, served)
        if request.text is not None:
            self._check_query(request.text)
        deadline = self.deadline()
        image = None
        if request.image is not None:
            image = await self.image_vector(request.image, deadline)
        body = await self._product(
            served,
            request,
            text=request.text,
            image=image,
            weights=(request.text_weight, request.image_weight),
            default_relevance=self.settings.search.min_relevance if request.text else 0.0,
            deadline=deadline,
        )
        return dumps(body)

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


def _hint(answer: Answer, min_relevance: float) -> str:
    """Why a search found nothing, and what to try."""
    if answer.candidates == 0:
        return "nothing matched the filters and exclusions; loosen them"
    best = answer.best_relevance or 0.0
    return (
        f"no item is relevant enough: the best of {answer.candidates} candidates has "
        f"relevance {best:.2f}, under min_relevance {min_relevance:.2f}; the catalog may not "
        "hold what was asked (lower min_relevance to see the nearest items anyway)"
    )
