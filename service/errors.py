"""Every error a client sees: ``{"error": {"code", "message", "request_id"}}`` with a 4xx
(or 503/504 when the service is busy), never a stack trace."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from index.backend import IndexUnavailableError
from index.versions import IndexVersionError
from runtime.errors import ConfigError, DataError, ImageTooLargeError, InvalidImageError
from runtime.identity import ModelMismatchError

log = logging.getLogger("cnclip.service")


class ApiError(Exception):
    """An error answered as ``status`` with a machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class OverloadedError(ApiError):
    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(503, "overloaded", message, {"Retry-After": str(retry_after_s)})


class DeadlineError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(504, "deadline_exceeded", message)


class NotReadyError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(503, "not_ready", message, {"Retry-After": "5"})


def error_body(code: str, message: str, request_id: str | None, **extra: Any) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if request_id:
        error["request_id"] = request_id
    error.update(extra)
    return json.dumps({"error": error}, ensure_ascii=False).encode("utf-8")


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    return Response(
        error_body(code, message, request_id, **extra),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def request_id_of(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return None if value is None else str(value)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _validation_message(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for error in errors[:20]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        details.append({"field": where or "body", "message": str(error.get("msg", ""))})
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{first['field']}: {first['message']}{more}", details


def install_handlers(app: FastAPI) -> None:
    """Map our exceptions, FastAPI's validation errors and HTTP errors to the error body."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(
            exc.status, exc.code, exc.message, request_id_of(request), exc.headers
        )

    async def too_large(request: Request, exc: Exception) -> Response:
        return error_response(413, "image_too_large", str(exc), request_id_of(request))

    async def invalid_image(request: Request, exc: Exception) -> Response:
        return error_response(400, "invalid_image", str(exc), request_id_of(request))

    async def data_error(request: Request, exc: Exception) -> Response:
        return error_response(400, "invalid_request", str(exc), request_id_of(request))

    async def config_error(request: Request, exc: Exception) -> Response:
        # A server-side problem a client cannot fix (e.g. an index switch gone wrong).
        log.error("request %s: %s", request_id_of(request), exc)
        return error_response(503, "unavailable", str(exc), request_id_of(request))

    async def index_unavailable(request: Request, exc: Exception) -> Response:
        # The index's server (Milvus) cannot be reached: retry; the service recovers.
        log.warning("request %s: %s", request_id_of(request), exc)
        return error_response(
            503, "index_unavailable", str(exc), request_id_of(request), {"Retry-After": "5"}
        )

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, details = _validation_message(list(exc.errors()))
        return error_response(
            422, "invalid_request", message, request_id_of(request), details=details
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code, code, str(exc.detail), request_id_of(request), exc.headers
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ImageTooLargeError, too_large)
    app.add_exception_handler(InvalidImageError, invalid_image)
    app.add_exception_handler(DataError, data_error)
    app.add_exception_handler(IndexUnavailableError, index_unavailable)
    app.add_exception_handler(IndexVersionError, config_error)
    app.add_exception_handler(ModelMismatchError, config_error)
    app.add_exception_handler(ConfigError, config_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
