"""The outermost layer of every request (plain ASGI, no per-request task):
request ids, the replica's name, the body size limit, latency metrics, and a last-resort
handler that answers JSON without a stack trace."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, error_body
from service.metrics import Metrics

log = logging.getLogger("cnclip.service")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class BodyTooLargeError(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"the request body is over {limit} bytes")


class Gatekeeper:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, replica: str = ""
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.stamp = [(b"x-cnclip-replica", replica.encode("latin-1"))] if replica else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message.setdefault("headers", [])
                took = 1000.0 * (time.perf_counter() - start)
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"server-timing", f"app;dur={took:.3f}".encode("latin-1")),
                    *self.stamp,
                ]
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLargeError(self.max_body)
            return message

        try:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body:
                await self._answer(
                    send_with_id,
                    413,
                    "body_too_large",
                    f"the request body is over {self.max_body} bytes",
                    request_id,
                )
            else:
                await self.app(scope, limited_receive, send_with_id)
        except BodyTooLargeError as exc:
            if not state["started"]:
                await self._answer(send_with_id, 413, exc.code, exc.message, request_id)
        except Exception:
            log.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
            if not state["started"]:
                await self._answer(
                    send_with_id,
                    500,
                    "internal",
                    f"internal error; quote request id {request_id} when reporting it",
                    request_id,
                )
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(
                endpoint=endpoint, method=scope["method"], status=str(state["status"])
            ).observe(time.perf_counter() - start)

    @staticmethod
    async def _answer(send: Send, status: int, code: str, message: str, request_id: str) -> None:
        body = error_body(code, message, request_id)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
