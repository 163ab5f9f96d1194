"""Images by URL, fetched one way for the service and for the catalog builder.

Only http and https; each redirect hop is checked again; unless ``allow_private``, a
host that resolves to a loopback, private, link-local, multicast, reserved or
unspecified address is refused (the SSRF guard); the body is capped at ``max_bytes``
(a declared ``Content-Length`` over it is refused before reading); the whole fetch has a
``timeout_s``. Connection failures and 5xx answers are tried again ``retries`` times,
with a short backoff; a refused URL, a 4xx answer or an oversized body never are.

:func:`fetch` is the blocking form (catalog embedding threads), :func:`fetch_async` the
asyncio form (the service). Both raise :class:`FetchError` (with a ``code`` the service
answers with) or :class:`runtime.errors.ImageTooLargeError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from runtime.errors import ImageTooLargeError, InvalidImageError

MAX_URL_CHARS = 4096
BACKOFF_S = 0.2  # before the first retry; doubled for each next one


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch may do; the service's ``CNCLIP_FETCH__*`` settings build one."""

    enabled: bool = True
    timeout_s: float = 5.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 3
    allow_private: bool = False
    retries: int = 1


class FetchError(InvalidImageError):
    """An image URL that is refused (``code`` "invalid_url") or could not be fetched
    ("image_fetch_failed")."""

    def __init__(self, code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


def _refused(message: str) -> FetchError:
    return FetchError("invalid_url", message)


def _failed(message: str, *, transient: bool = False) -> FetchError:
    return FetchError("image_fetch_failed", message, transient=transient)


def _too_large(limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(f"the image at the URL is larger than the limit of {limit} bytes")


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


def _target(url: str, policy: FetchPolicy) -> tuple[str, int] | None:
    """The (host, port) to resolve for the SSRF guard, None when private hosts are allowed;
    FetchError for a URL that is not http(s) or has no host or a bad port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _refused(f"image URL must be http or https, not {url[:200]!r}")
    host = parts.hostname
    if not host:
        raise _refused(f"image URL has no host: {url[:200]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refused(f"image URL has a bad port: {url[:200]!r}") from None
    return None if policy.allow_private else (host, port)


def _check_addresses(host: str, infos: Sequence[Any]) -> None:
    for info in infos:
        if not _public(str(info[4][0])):
            raise _refused(
                f"image URL host {host!r} resolves to a private or loopback address "
                f"({info[4][0]}); such URLs are refused (CNCLIP_FETCH__ALLOW_PRIVATE)"
            )


def _check_start(url: str, policy: FetchPolicy) -> None:
    if not policy.enabled:
        raise _refused("image URLs are disabled here")
    if len(url) > MAX_URL_CHARS:
        raise _refused(f"image URL is longer than {MAX_URL_CHARS} characters")


def _status(response: httpx.Response, policy: FetchPolicy) -> None:
    """Refuse a non-200 answer (5xx may be retried) or a declared oversized body."""
    if response.status_code != 200:
        raise _failed(
            f"fetching the image URL answered HTTP {response.status_code}",
            transient=response.status_code >= 500,
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise _too_large(policy.max_bytes)


def _next_hop(url: str, response: httpx.Response) -> str | None:
    if response.is_redirect and "location" in response.headers:
        return urljoin(url, response.headers["location"])
    return None


def _unresolved(host: str, exc: BaseException) -> FetchError:
    return _failed(f"cannot resolve image URL host {host!r}: {exc}")


def _append(body: bytearray, chunk: bytes, policy: FetchPolicy) -> None:
    body += chunk
    if len(body) > policy.max_bytes:
        raise _too_large(policy.max_bytes)


# What a failing request raises; a TransportError (connection, read) may be retried.
_CLIENT_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, UnicodeError)


def _client_error(exc: Exception) -> FetchError:
    transient = isinstance(exc, httpx.TransportError)
    return _failed(f"cannot fetch the image URL: {exc}", transient=transient)


# ------------------------------------------------------------------------ blocking


def fetch(url: str, policy: FetchPolicy, client: httpx.Client | None = None) -> bytes:
    """The body at ``url``, following checked redirects, retried on transient failures.

    Raises:
        FetchError: fetching is off, a refused or bad URL, a failure or non-200 answer.
        ImageTooLargeError: a body over ``policy.max_bytes``.
    """
    _check_start(url, policy)
    own = client is None
    http = client or httpx.Client(timeout=policy.timeout_s)
    try:
        for attempt in range(policy.retries + 1):
            try:
                return _fetch_once(url, policy, http, time.monotonic() + policy.timeout_s)
            except FetchError as exc:
                if not exc.transient or attempt == policy.retries:
                    raise
            time.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")
    finally:
        if own:
            http.close()


def _fetch_once(url: str, policy: FetchPolicy, http: httpx.Client, deadline: float) -> bytes:
    for _ in range(policy.max_redirects + 1):
        target = _target(url, policy)
        if target is not None:
            try:
                infos = socket.getaddrinfo(*target, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise _unresolved(target[0], exc) from None
            _check_addresses(target[0], infos)
        try:
            with http.stream("GET", url, follow_redirects=False) as response:
                hop = _next_hop(url, response)
                if hop is not None:
                    url = hop
                    continue
                _status(response, policy)
                body = bytearray()
                for chunk in response.iter_bytes():
                    _append(body, chunk, policy)
                    if time.monotonic() > deadline:
                        raise _failed(f"fetching the image took over {policy.timeout_s} s")
                return bytes(body)
        except _CLIENT_ERRORS as exc:
            raise _client_error(exc) from None
    raise _failed(f"over {policy.max_redirects} redirects")


# ------------------------------------------------------------------------- asyncio


async def fetch_async(url: str, policy: FetchPolicy, client: httpx.AsyncClient) -> bytes:
    """As :func:`fetch`, on an event loop (name resolution included)."""
    _check_start(url, policy)
    for attempt in range(policy.retries + 1):
        try:
            return await asyncio.wait_for(_fetch_once_async(url, policy, client), policy.timeout_s)
        except TimeoutError:
            raise _failed(f"fetching the image took over {policy.timeout_s} s") from None
        except FetchError as exc:
            if not exc.transient or attempt == policy.retries:
                raise
        await asyncio.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


async def _fetch_once_async(url: str, policy: FetchPolicy, http: httpx.AsyncClient) -> bytes:
    loop = asyncio.get_running_loop()
    for _ in range(policy.max_redirects + 1):
        target = _target(url, policy)
        if target is not None:
            try:
                infos = await loop.getaddrinfo(*target, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise _unresolved(target[0], exc) from None
            _check_addresses(target[0], infos)
        try:
            async with http.stream("GET", url, follow_redirects=False) as response:
                hop = _next_hop(url, response)
                if hop is not None:
                    url = hop
                    continue
                _status(response, policy)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    _append(body, chunk, policy)
                return bytes(body)
        except _CLIENT_ERRORS as exc:
            raise _client_error(exc) from None
    raise _failed(f"over {policy.max_redirects} redirects")
