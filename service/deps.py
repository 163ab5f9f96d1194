"""Dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.engine import Engine
from service.errors import ApiError, NotReadyError
from service.settings import Settings


def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReadyError("the model is still loading")
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check_key(request: Request, settings: Settings) -> None:
    wanted = settings.security.api_key
    assert wanted is not None
    given = _presented_key(request)
    if given is None:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required: send it as X-API-Key or Authorization: Bearer",
            {"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.encode("utf-8"), wanted.get_secret_value().encode("utf-8")):
        raise ApiError(
            401, "unauthorized", "the API key is not valid", {"WWW-Authenticate": "Bearer"}
        )


def require_key_if_configured(request: Request) -> None:
    """Every endpoint but health and metrics, when ``security.require_for_all``."""
    settings = get_settings(request)
    if settings.security.require_for_all and settings.security.api_key is not None:
        _check_key(request, settings)


def require_admin_key(request: Request) -> None:
    """Catalog changes: always need the key, and are off while none is configured."""
    settings = get_settings(request)
    if settings.security.api_key is None:
        raise ApiError(
            403,
            "forbidden",
            "catalog changes are disabled: configure an API key (CNCLIP_SECURITY__API_KEY)",
        )
    _check_key(request, settings)


EngineDep = Annotated[Engine, Depends(get_engine)]
