"""The endpoints, one router per resource. Handlers stay thin: parse, call the engine,
answer bytes (responses are built as JSON directly; the schemas document them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service.body import parse_body, parse_json
from service.deps import EngineDep, require_admin_key, require_key_if_configured
from service.engine import dumps
from service.errors import NotReadyError
from service.schemas import (
    CatalogAddRequest,
    CatalogChange,
    CatalogDeleteRequest,
    CatalogInfo,
    ClassifyRequest,
    ClassifyResponse,
    EmbedImageRequest,
    EmbedResponse,
    EmbedTextRequest,
    ImageSearchRequest,
    MultimodalSearchRequest,
    SearchResponse,
    Status,
    TextSearchRequest,
)

JSON = "application/json"


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Bad input (not an image, empty query, unknown filter field ...)",
        401: "Missing or wrong API key",
        403: "Not allowed",
        404: "No index is served",
        409: "Conflict with the index's state",
        413: "Body or image too large",
        415: "Unsupported content type",
        422: "The body does not match the schema",
        503: "Busy (queue full) or not ready; retry after Retry-After seconds",
        504: "The request's deadline passed",
    }
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    return {s: {"description": described[s], "content": {JSON: {"schema": ref}}} for s in statuses}


def _body(model: str, multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {JSON: {"schema": {"$ref": f"#/components/schemas/{model}"}}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    return {"requestBody": {"required": True, "content": content}}


def _ok(model: type[Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": "OK", "model": model}}


COMMON = _errors(400, 413, 415, 422, 503, 504)
FILE = {"type": "string", "format": "binary"}
OBJECTS = ("filter", "exclude", "boost")  # JSON in a multipart form
FORM_OPTIONS: dict[str, Any] = {
    "filter": {"type": "string", "description": "A JSON object"},
    "exclude": {"type": "string", "description": "A JSON object"},
    "min_relevance": {"type": "number", "minimum": 0, "maximum": 1},
    "group_by": {"type": "string"},
    "group_size": {"type": "integer", "minimum": 1},
    "boost": {"type": "string", "description": "A JSON array of boosts"},
    "explain": {"type": "boolean"},
}

search = APIRouter(
    prefix="/v1/search", tags=["search"], dependencies=[Depends(require_key_if_configured)]
)
classify_router = APIRouter(
    prefix="/v1", tags=["classify"], dependencies=[Depends(require_key_if_configured)]
)
embed = APIRouter(
    prefix="/v1/embed", tags=["embed"], dependencies=[Depends(require_key_if_configured)]
)
catalog = APIRouter(prefix="/v1/catalog", tags=["catalog"])
system = APIRouter(tags=["system"])


@search.post(
    "/text",
    summary="Text to image search",
    response_class=Response,
    responses={**_ok(SearchResponse), **COMMON},
    openapi_extra=_body("TextSearchRequest"),
)
async def search_text(request: Request, engine: EngineDep) -> Response:
    body = await parse_json(request, TextSearchRequest)
    content, cached = await engine.search_text(body)
    return Response(content, media_type=JSON, headers={"X-Cache": "hit" if cached else "miss"})


@search.post(
    "/image",
    summary="Image to image, or image to text (target: texts)",
    response_class=Response,
    responses={**_ok(SearchResponse), **COMMON},
    openapi_extra=_body(
        "ImageSearchRequest",
        {
            "type": "object",
            "required": ["image"],
            "properties": {
                "image": FILE,
                "top_k": {"type": "integer", "minimum": 1},
                "nprobe": {"type": "integer", "minimum": 1},
                "target": {"type": "string", "enum": ["images", "texts"]},
                **FORM_OPTIONS,
            },
        },
    ),
)
async def search_image(request: Request, engine: EngineDep) -> Response:
    body = await parse_body(request, ImageSearchRequest, files=("image",), objects=OBJECTS)
    return Response(await engine.search_image(body), media_type=JSON)


@search.post(
    "",
    summary="Product search by text, image, or both (weighted): modes, relevance, negation, "
    "grouping, boosts",
    response_class=Response,
    responses={**_ok(SearchResponse), **COMMON},
    openapi_extra=_body(
        "MultimodalSearchRequest",
        {
            "type": "object",
            "properties": {
                "image": FILE,
                "text": {"type": "string"},
                "text_weight": {"type": "number", "minimum": 0},
                "image_weight": {"type": "number", "minimum": 0},
                "top_k": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["vector", "lexical", "hybrid"]},
                **FORM_OPTIONS,
            },
        },
    ),
)
async def search_multimodal(request: Request, engine: EngineDep) -> Response:
    body = await parse_body(request, MultimodalSearchRequest, files=("image",), objects=OBJECTS)
    return Response(await engine.search(body), media_type=JSON)


@classify_router.post(
    "/classify",
    summary="Zero-shot classification of an image among Chinese labels",
    response_class=Response,
    responses={**_ok(ClassifyResponse), **COMMON},
    openapi_extra=_body(
        "ClassifyRequest",
        {
            "type": "object",
            "required": ["image", "labels"],
            "properties": {
                "image": FILE,
                "labels": {"type": "array", "items": {"type": "string"}},
                "templates": {"type": "array", "items": {"type": "string"}},
                "top_k": {"type": "integer", "minimum": 1},
            },
        },
    ),
)
async def classify(request: Request, engine: EngineDep) -> Response:
    body = await parse_body(
        request, ClassifyRequest, files=("image",), lists=("labels", "templates")
    )
    return Response(await engine.classify(body), media_type=JSON)


@embed.post(
    "/text",
    summary="Embeddings of texts",
    response_class=Response,
    responses={**_ok(EmbedResponse), **COMMON},
    openapi_extra=_body("EmbedTextRequest"),
)
async def embed_text(request: Request, engine: EngineDep) -> Response:
    body = await parse_json(request, EmbedTextRequest)
    rows, truncated = await engine.text_vectors(body.texts, engine.deadline())
    return _embeddings(engine, rows.tolist(), truncated)


@embed.post(
    "/image",
    summary="Embeddings of images",
    response_class=Response,
    responses={**_ok(EmbedResponse), **COMMON},
    openapi_extra=_body(
        "EmbedImageRequest",
        {
            "type": "object",
            "required": ["images"],
            "properties": {"images": {"type": "array", "items": FILE}},
        },
    ),
)
async def embed_image(request: Request, engine: EngineDep) -> Response:
    limit = engine.limits.max_batch_images + 1
    body = await parse_body(
        request, EmbedImageRequest, files=("images",), lists=("images",), max_files=limit
    )
    rows = await engine.image_vectors(body.images, engine.deadline())
    return _embeddings(engine, rows.tolist(), [])


def _embeddings(engine: Any, rows: list[list[float]], truncated: list[int]) -> Response:
    body = {
        "embeddings": rows,
        "dim": engine.bundle.embed_dim,
        "model_id": engine.bundle.identity.model_id,
        "bundle_id": engine.bundle.bundle_id,
        "truncated": truncated,
    }
    return Response(dumps(body), media_type=JSON)


@catalog.get(
    "",
    summary="The index version being served",
    response_model=CatalogInfo,
    responses=_errors(401, 404, 503),
    dependencies=[Depends(require_key_if_configured)],
)
async def catalog_info(engine: EngineDep) -> CatalogInfo:
    served = engine.served()
    texts = served.texts
    return CatalogInfo(
        version=served.version,
        count=served.count,
        deleted=served.deleted,
        factory=served.factory,
        model_id=served.model.model_id,
        bundle_id=served.model.bundle_id or served.model.bundle_sha256,
        texts=None if texts is None else texts.count,
    )


@catalog.post(
    "/items",
    summary="Add items (embedded from their images); writes and switches to a new version",
    response_model=CatalogChange,
    responses=_errors(400, 401, 403, 409, 413, 415, 422, 503, 504),
    openapi_extra=_body("CatalogAddRequest"),
    dependencies=[Depends(require_admin_key)],
)
async def add_items(request: Request, engine: EngineDep) -> CatalogChange:
    body = await parse_json(request, CatalogAddRequest)
    version, added = await engine.add_items(body)
    return CatalogChange(version=version, count=engine.served().count, changed=added)


@catalog.post(
    "/delete",
    summary="Delete items by id; writes and switches to a new version",
    response_model=CatalogChange,
    responses=_errors(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra=_body("CatalogDeleteRequest"),
    dependencies=[Depends(require_admin_key)],
)
async def delete_items(request: Request, engine: EngineDep) -> CatalogChange:
    body = await parse_json(request, CatalogDeleteRequest)
    version, removed = await engine.remove_items(body.ids)
    return CatalogChange(version=version, count=engine.served().count, changed=removed)


@system.get("/healthz", summary="Alive", response_model=Status)
async def healthz() -> Status:
    return Status(status="ok")


@system.get(
    "/readyz", summary="Model and index loaded", response_model=Status, responses=_errors(503)
)
async def readyz(request: Request) -> Status:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReadyError("the model is still loading")
    version = None
    if engine.holder is not None:
        if engine.holder.served is None:
            raise NotReadyError("the index is still loading")
        await engine.holder.ping()
        version = engine.holder.served.version
    return Status(
        status="ready",
        model_id=engine.bundle.identity.model_id,
        bundle_id=engine.bundle.bundle_id,
        index_version=version,
    )


@system.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    content, kind = request.app.state.metrics.exposition()
    return Response(content, media_type=kind)
