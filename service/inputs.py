"""Image bytes from a request: base64 in JSON, an upload, or a URL fetched with a
timeout, a size cap and (unless allowed) no loopback, private or reserved addresses."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx

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


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def _check_host(url: str, settings: FetchSettings) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ApiError(400, "invalid_url", f"image URL must be http or https, not {url[:200]!r}")
    host = parts.hostname
    if not host:
        raise ApiError(400, "invalid_url", f"image URL has no host: {url[:200]!r}")
    if settings.allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ApiError(400, "invalid_url", f"image URL has a bad port: {url[:200]!r}") from None
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), settings.timeout_s
        )
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise ApiError(
            400, "image_fetch_failed", f"cannot resolve image URL host {host!r}: {exc}"
        ) from None
    for info in infos:
        if not _public(str(info[4][0])):
            raise ApiError(
                400,
                "invalid_url",
                f"image URL host {host!r} resolves to a private or loopback address "
                f"({info[4][0]}); such URLs are refused (CNCLIP_FETCH__ALLOW_PRIVATE)",
            )


async def fetch_image(url: str, settings: FetchSettings, client: httpx.AsyncClient) -> bytes:
    """The body at ``url`` (redirects followed and checked hop by hop).

    Raises:
        ApiError: fetching is off, a refused or bad URL, a failure or non-200 answer
            (400), a body over ``settings.max_bytes`` (413), too many redirects.
    """
    if not settings.enabled:
        raise ApiError(400, "invalid_url", "image URLs are disabled on this service")
    if len(url) > 4096:
        raise ApiError(400, "invalid_url", "image URL is longer than 4096 characters")
    try:
        return await asyncio.wait_for(_fetch(url, settings, client), settings.timeout_s)
    except TimeoutError:
        raise ApiError(
            400, "image_fetch_failed", f"fetching the image took over {settings.timeout_s} s"
        ) from None


async def _fetch(url: str, settings: FetchSettings, client: httpx.AsyncClient) -> bytes:
    for _ in range(settings.max_redirects + 1):
        await _check_host(url, settings)
        try:
            async with client.stream("GET", url, follow_redirects=False) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise ApiError(
                        400,
                        "image_fetch_failed",
                        f"fetching the image URL answered HTTP {response.status_code}",
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > settings.max_bytes:
                    raise image_too_large("the image at the URL", settings.max_bytes)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > settings.max_bytes:
                        raise image_too_large("the image at the URL", settings.max_bytes)
                return bytes(body)
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, UnicodeError) as exc:
            raise ApiError(
                400, "image_fetch_failed", f"cannot fetch the image URL: {exc}"
            ) from None
    raise ApiError(400, "image_fetch_failed", f"over {settings.max_redirects} redirects")
