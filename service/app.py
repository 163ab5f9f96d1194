"""``create_app(settings)``: the FastAPI app. The bundle, the index, the batchers and the
cache are built when the app starts (its lifespan), never at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from runtime.bundle import load_bundle
from runtime.bundle_manifest import is_bundle
from runtime.errors import ConfigError
from runtime.sessions import BackendOptions
from service import schemas
from service.cache import Cache
from service.catalog import IndexHolder
from service.engine import Engine
from service.errors import install_handlers
from service.metrics import Metrics
from service.middleware import Gatekeeper
from service.routes import catalog, classify_router, embed, search, system
from service.settings import Settings
from service.ui import install_ui

log = logging.getLogger("cnclip.service")
DESCRIPTION = """Chinese CLIP retrieval: text to image and image to image or text search over
a FAISS index, zero-shot classification among Chinese labels, and embeddings.

Images come as base64 or a URL in JSON, or as multipart file uploads. Errors are
`{"error": {"code", "message", "request_id"}}` with a 4xx status (503 with Retry-After
when busy, 504 past the deadline)."""
BODY_MODELS = (
    schemas.TextSearchRequest,
    schemas.ImageSearchRequest,
    schemas.ClassifyRequest,
    schemas.EmbedTextRequest,
    schemas.EmbedImageRequest,
    schemas.CatalogAddRequest,
    schemas.CatalogDeleteRequest,
)
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "examples": ["invalid_image"]},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
        }
    },
}


def _check(settings: Settings) -> None:
    if settings.security.require_for_all and settings.security.api_key is None:
        raise ConfigError(
            "security.require_for_all is set but no API key is: set CNCLIP_SECURITY__API_KEY"
        )
    if not is_bundle(settings.bundle):
        raise ConfigError(f"{settings.bundle}: not a model bundle (no manifest.json)")
    media = settings.ui.media_dir
    if settings.ui.enabled and media is not None and not media.is_dir():
        raise ConfigError(f"ui.media_dir {media}: not a directory")


async def _start(app: FastAPI, settings: Settings, metrics: Metrics) -> Engine:
    options = BackendOptions(
        backend=settings.backend, threads=settings.threads, device=settings.device
    )
    bundle = await asyncio.to_thread(load_bundle, settings.bundle, options=options)
    cache = Cache(settings.cache, metrics)
    engine = Engine(settings, bundle, metrics, cache)
    metrics.model_info.labels(
        model_id=str(bundle.identity.model_id),
        bundle_id=bundle.bundle_id,
        architecture=bundle.manifest.architecture or "",
        precision=bundle.manifest.precision,
        backend=settings.backend,
    ).set(1)
    if settings.index is not None:
        holder = IndexHolder(settings.index, bundle.identity, metrics)
        await holder.open()
        engine.holder = holder
    engine.start()
    log.info(
        "serving bundle %s of model %s (%s) with index %s, cache %s",
        bundle.bundle_id[:12],
        str(bundle.identity.model_id)[:12],
        settings.backend,
        engine.holder.served.version if engine.holder and engine.holder.served else "none",
        cache.describe,
    )
    return engine


def create_app(settings: Settings) -> FastAPI:
    """The service for ``settings``; loading happens when the app starts."""
    _check(settings)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await _start(app, settings, metrics)
        app.state.engine = engine
        watcher = None
        if engine.holder is not None and engine.holder.follows:
            watcher = asyncio.create_task(engine.holder.watch(settings.index_poll_s))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            app.state.engine = None
            await engine.stop()
            if engine.holder is not None:
                engine.holder.close()
            Metrics.worker_exited(os.getpid())

    app = FastAPI(
        title="cnclip",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None
    install_handlers(app)
    for router in (search, classify_router, embed, catalog, system):
        app.include_router(router)
    install_ui(app, settings)
    if settings.security.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.security.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Cache", "X-Cnclip-Replica", "Retry-After"],
        )
    app.add_middleware(
        Gatekeeper,
        metrics=metrics,
        max_body_bytes=settings.limits.max_body_bytes,
        replica=settings.replica or socket.gethostname(),
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies the routes parse themselves."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in BODY_MODELS:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    components["ErrorResponse"] = ERROR_SCHEMA
    return schema


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` (and ``cnclip serve``'s workers): settings from
    ``CNCLIP_*`` environment variables."""
    logging.basicConfig(level=os.environ.get("CNCLIP_LOG_LEVEL", "info").upper())
    return create_app(Settings())
