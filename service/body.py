"""Request bodies that come as JSON or as a multipart form with image files.

Both become the same pydantic model; an uploaded file becomes an :class:`ImageInput`
holding its bytes. Validation errors surface as FastAPI's (422, ``invalid_request``).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.errors import ApiError
from service.schemas import ImageInput

Model = TypeVar("Model", bound=BaseModel)
_PLACEHOLDER = {"base64": "AA=="}


def _validation(exc: ValidationError) -> RequestValidationError:
    return RequestValidationError(exc.errors(include_url=False, include_context=False))


async def parse_json(request: Request, model: type[Model]) -> Model:
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind not in ("application/json", ""):
        raise ApiError(
            415, "unsupported_media_type", f"send application/json, not {kind or 'nothing'}"
        )
    body = await request.body()
    if not body:
        raise ApiError(400, "invalid_request", "the request body is empty; send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _validation(exc) from None


async def parse_body(
    request: Request,
    model: type[Model],
    *,
    files: tuple[str, ...] = (),
    lists: tuple[str, ...] = (),
    objects: tuple[str, ...] = (),
    max_files: int = 16,
) -> Model:
    """``model`` from a JSON body or a multipart form.

    In a form, the parts named in ``files`` are image uploads (several parts of one
    name make a list), those in ``lists`` repeat or hold a JSON array, those in
    ``objects`` hold JSON, and the rest are single values.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        return await parse_json(request, model)
    form = await request.form(max_files=max_files, max_fields=1000)
    data: dict[str, Any] = {}
    uploads: dict[str, list[bytes]] = {}
    for key in set(form.keys()):
        values = form.getlist(key)
        if key in files:
            if not all(isinstance(v, UploadFile) for v in values):
                raise ApiError(400, "invalid_request", f"form field {key!r} must be a file upload")
            uploads[key] = [await v.read() for v in values if isinstance(v, UploadFile)]
            continue
        if any(isinstance(v, UploadFile) for v in values):
            raise ApiError(400, "invalid_request", f"form field {key!r} must not be a file")
        texts = [str(v) for v in values]
        if key in lists:
            data[key] = _json(key, texts[0]) if len(texts) == 1 and texts[0][:1] == "[" else texts
        elif key in objects:
            data[key] = _json(key, texts[-1])
        else:
            data[key] = texts[-1]
    for key, blobs in uploads.items():
        many = key in lists or len(blobs) > 1
        data[key] = [dict(_PLACEHOLDER) for _ in blobs] if many else dict(_PLACEHOLDER)
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise _validation(exc) from None
    for key, blobs in uploads.items():
        value = getattr(parsed, key, None)
        targets = value if isinstance(value, list) else [value]
        for target, blob in zip(targets, blobs, strict=False):
            if isinstance(target, ImageInput):
                target._raw = blob
    return parsed


def _json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_request", f"form field {key!r} is not JSON ({exc})") from None
