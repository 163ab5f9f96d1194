"""Image bytes from a request: base64 in JSON, an upload, or a URL fetched by
:mod:`runtime.fetch` (a timeout, a size cap and, unless allowed, no loopback, private or
reserved addresses)."""

from __future__ import annotations

import base64
import binascii

import httpx

from runtime.errors import ImageTooLargeError
from runtime.fetch import FetchError, fetch_async
from service.errors import ApiError
from service.settings import FetchSettings


def image_too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, "image_too_large", f"{what} is larger than the limit of {limit} bytes")


def decode_base64(data: str, max_bytes: int, what: str = "image") -> bytes:
    """The bytes of a base64 string (standard or URL-safe alphabet, with or without a
    ``data:...;base64,`` prefix and padding)."""
    text = data.strip()
    if text.startswith("data:"):
        head, sep, rest = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(400, "invalid_image", f"{what}: a data URL must be base64-encoded")
        text = rest
    text = "".join(text.split())
    if len(text) * 3 // 4 > max_bytes:
        raise image_too_large(what, max_bytes)
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_image", f"{what}: not valid base64 ({exc})") from None
    if not raw:
        raise ApiError(400, "invalid_image", f"{what}: empty image")
    return raw


async def fetch_image(url: str, settings: FetchSettings, client: httpx.AsyncClient) -> bytes:
    """The body at ``url`` through the shared fetcher (:mod:`runtime.fetch`: SSRF guard,
    size cap, checked redirects, retries).

    Raises:
        ApiError: fetching is off, a refused or bad URL, a failure or non-200 answer
            (400), a body over ``settings.max_bytes`` (413).
    """
    try:
        return await fetch_async(url, settings.policy(), client)
    except FetchError as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    except ImageTooLargeError:
        raise image_too_large("the image at the URL", settings.max_bytes) from None
