"""A small closed-loop HTTP/1.1 load generator: keep-alive connections, back-to-back requests.

Run as a separate process (so it is measured as a client, not inside the server)::

    .venv/bin/python bench/loadgen.py --host 127.0.0.1 --port 8000 --path /search/text \\
        --bodies bodies.jsonl --concurrency 32 --duration 20 --warmup 3 --json out.json

or call :func:`run_load` from Python. Each of ``concurrency`` connections sends its next
request as soon as the previous answer is read, cycling through the prepared bodies
from its own offset (connection ``i`` starts at body ``i * len(bodies) // concurrency``),
so connections do not send the same body at the same moment. Requests completed during
the warm-up are not counted; after it, every request completed before the end is counted
with its latency (send to last body byte) and status. A connection that fails
(refused, reset, timed out, malformed answer) counts one connection error and is
reopened.

Plain ``asyncio`` streams and no HTTP library, so the client stays cheap on CPU (it
shares the machine with the server); uvloop is used when it is installed. Answers may
carry ``Content-Length``, ``Transfer-Encoding: chunked``, or neither (then the body runs
to the end of the connection, which is then reopened).

The bodies file holds one request body per line (UTF-8 JSON bodies, as ``json.dumps``
writes them, never span lines); blank lines are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUEST_TIMEOUT_S = 30.0
MAX_HEADER_BYTES = 64 * 1024
ERROR_SAMPLES = 5


class ProtocolError(Exception):
    """An answer that is not the HTTP/1.1 this client reads."""


@dataclass
class _Tally:
    """What all connections of one run record; one event loop, so no locks."""

    measure_from: float
    stop_at: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)  # X-Cache header values
    warmup_requests: int = 0
    warmup_errors: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def answer(
        self, started: float, ended: float, status: int, body: bytes, cache: bytes | None
    ) -> None:
        if ended < self.measure_from:
            self.warmup_requests += 1
            return
        if ended > self.stop_at:
            return  # in flight when the run ended: neither counted nor timed
        self.latencies.append(ended - started)
        self.statuses[status] += 1
        if cache is not None:
            self.cache[cache.decode("latin-1").lower()] += 1
        if not 200 <= status < 300 and len(self.samples) < ERROR_SAMPLES:
            self.samples.append({"status": status, "body": body[:300].decode("utf-8", "replace")})

    def failure(self, when: float, exc: BaseException) -> None:
        if when < self.measure_from:
            self.warmup_errors += 1
        elif when <= self.stop_at:
            self.errors[type(exc).__name__] += 1
            if len(self.samples) < ERROR_SAMPLES:
                self.samples.append({"error": f"{type(exc).__name__}: {exc}"[:300]})


def build_requests(
    host: str, port: int, path: str, bodies: Sequence[bytes], content_type: str, method: str
) -> list[bytes]:
    """The raw bytes of each request: request line, headers and body."""
    out = []
    for body in bodies or [b""]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n"
        if body or method not in ("GET", "HEAD"):
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        out.append(head.encode("latin-1") + b"\r\n" + body)
    return out


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size line {line[:40]!r}") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers, ignored
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")


Response = tuple[int, bytes, bool, dict[bytes, bytes]]


async def read_response(reader: asyncio.StreamReader) -> Response:
    """``(status, body, keep_alive, headers)`` of the next answer on ``reader``.

    Header names are lower-cased.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError("response headers too long") from exc
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = parts[0] == b"HTTP/1.1"
    connection = headers.get(b"connection", b"").lower()
    if connection == b"close":
        keep_alive = False
    elif connection == b"keep-alive":
        keep_alive = True
    if 100 <= status < 200 or status in (204, 304):
        return status, b"", keep_alive, headers
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return status, await _read_chunked(reader), keep_alive, headers
    if b"content-length" in headers:
        try:
            length = int(headers[b"content-length"])
        except ValueError as exc:
            raise ProtocolError(f"bad Content-Length {headers[b'content-length']!r}") from exc
        return status, await reader.readexactly(length), keep_alive, headers
    return status, await reader.read(), False, headers  # the body ends with the connection


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _connection(
    host: str,
    port: int,
    requests: Sequence[bytes],
    offset: int,
    tally: _Tally,
    interval: float | None = None,
    first_at: float = 0.0,
) -> None:
    """One client: a keep-alive connection sending requests back to back until the end,
    or, with ``interval``, one request every ``interval`` seconds from ``first_at`` (open
    loop: latency counts from the scheduled time, so a slow answer that delays the next
    request is charged to it too)."""
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    position = offset
    scheduled = first_at
    while time.perf_counter() < tally.stop_at:
        if stream is None:
            try:
                stream = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=MAX_HEADER_BYTES),
                    REQUEST_TIMEOUT_S,
                )
            except (OSError, TimeoutError) as exc:
                tally.failure(time.perf_counter(), exc)
                await asyncio.sleep(0.05)  # do not spin on a refused port
                continue
        reader, writer = stream
        request = requests[position % len(requests)]
        position += 1
        started = time.perf_counter()
        if interval is not None:
            if scheduled > started:
                await asyncio.sleep(scheduled - started)
            started = scheduled
            scheduled += interval
        try:
            writer.write(request)
            status, body, keep_alive, headers = await asyncio.wait_for(
                read_response(reader), REQUEST_TIMEOUT_S
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
            tally.failure(time.perf_counter(), exc)
            await _close(writer)
            stream = None
            continue
        tally.answer(started, time.perf_counter(), status, body, headers.get(b"x-cache"))
        if not keep_alive:
            await _close(writer)
            stream = None
    if stream is not None:
        await _close(stream[1])


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ascending values; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summarize(tally: _Tally, duration_s: float, concurrency: int) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    count = len(latencies)
    non_2xx = sum(n for status, n in tally.statuses.items() if not 200 <= status < 300)
    errors = sum(tally.errors.values())
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "requests": count,
        "rps": count / duration_s if duration_s > 0 else float("nan"),
        "latency_ms": {
            "mean": 1000 * sum(latencies) / count if count else float("nan"),
            "p50": 1000 * percentile(latencies, 50),
            "p95": 1000 * percentile(latencies, 95),
            "p99": 1000 * percentile(latencies, 99),
            "max": 1000 * latencies[-1] if count else float("nan"),
        },
        "status": {str(status): n for status, n in sorted(tally.statuses.items())},
        "non_2xx": non_2xx,
        "x_cache": dict(tally.cache),
        "connection_errors": errors,
        "error_kinds": dict(tally.errors),
        "errors": non_2xx + errors,
        "warmup": {"requests": tally.warmup_requests, "errors": tally.warmup_errors},
        "samples": tally.samples,
    }


async def _run(
    host: str,
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    rate: float | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    tally = _Tally(measure_from=start + warmup_s, stop_at=start + warmup_s + duration_s)
    step = len(requests) / concurrency
    interval = None if rate is None else concurrency / rate
    clients = [
        _connection(
            host,
            port,
            requests,
            int(i * step),
            tally,
            interval,
            start + (0.0 if interval is None else i * interval / concurrency),
        )
        for i in range(concurrency)
    ]
    await asyncio.gather(*clients)
    return summarize(tally, duration_s, concurrency)


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_load(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    content_type: str = "application/json",
    concurrency: int = 32,
    duration_s: float = 20.0,
    warmup_s: float = 3.0,
    method: str = "POST",
    rate: float | None = None,
) -> dict[str, Any]:
    """Closed-loop load for ``warmup_s + duration_s`` seconds; the measured window's figures.

    Returns requests, requests/s, latency (mean, p50, p95, p99, max in ms), the status
    histogram, the count of each ``X-Cache`` header value (hit, miss), non-2xx answers,
    connection errors (by exception type), ``errors`` (the
    two together) and a few samples of failures.
    """
    if concurrency < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("concurrency must be >= 1, duration > 0 and warm-up >= 0")
    requests = build_requests(host, port, path, bodies, content_type, method)
    with _event_loop_runner() as runner:
        return runner.run(_run(host, port, requests, concurrency, duration_s, warmup_s, rate))


async def _send_all(
    host: str, port: int, requests: Sequence[bytes], concurrency: int
) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    queue = list(reversed(requests))

    async def client() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while queue:
            request = queue.pop()
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                status, _, keep_alive, _ = await asyncio.wait_for(
                    read_response(reader), REQUEST_TIMEOUT_S
                )
                statuses[str(status)] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                statuses[type(exc).__name__] += 1
                keep_alive = False
            if not keep_alive:
                await _close(writer)
                reader = writer = None
        await _close(writer)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return dict(statuses)


def run_once(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    content_type: str = "application/json",
    concurrency: int = 4,
    method: str = "POST",
) -> dict[str, int]:
    """Send every body exactly once (e.g. to fill a cache); the count of each status."""
    requests = build_requests(host, port, path, bodies, content_type, method)
    with _event_loop_runner() as runner:
        return runner.run(_send_all(host, port, requests, concurrency))


def read_bodies(path: Path) -> list[bytes]:
    """One body per non-blank line of ``path``."""
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--bodies", type=Path, help="file with one request body per line")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not measured")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument(
        "--rate", type=float, help="requests/s over all clients (open loop; default: closed)"
    )
    args = parser.parse_args(argv)
    bodies = read_bodies(args.bodies) if args.bodies else []
    if not bodies and args.method not in ("GET", "HEAD", "DELETE"):
        parser.error(f"{args.method} needs --bodies (a file with one body per line)")
    result = run_load(
        args.host,
        args.port,
        args.path,
        bodies,
        args.content_type,
        args.concurrency,
        args.duration,
        args.warmup,
        args.method,
        args.rate,
    )
    result["rate"] = args.rate
    result["target"] = f"{args.method} http://{args.host}:{args.port}{args.path}"
    result["bodies"] = len(bodies)
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    latency = result["latency_ms"]
    print(
        f"{result['rps']:.1f} requests/s, p50 {latency['p50']:.1f} ms, "
        f"p99 {latency['p99']:.1f} ms, {result['non_2xx']} non-2xx, "
        f"{result['connection_errors']} connection errors, status {result['status']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
