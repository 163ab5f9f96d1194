"""Everything a client can get wrong is a 4xx JSON error with a request id, never a 500."""

from __future__ import annotations

import base64
import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from service.settings import Settings
from tests.service.conftest import make_settings, photo_bytes, running


@pytest.fixture(scope="module")
def client(bundle_dir: Path, index_template: Path) -> Iterator[httpx.Client]:
    settings = make_settings(
        bundle_dir,
        index_template,
        limits={"max_image_pixels": 1_000_000, "max_body_bytes": 2_000_000, "max_labels": 5},
    )
    with running(settings) as url, httpx.Client(base_url=url) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


IMAGE = {"base64": b64(photo_bytes(0))}
CASES: list[tuple[str, str, Any, int, str]] = [
    (
        "not an image",
        "/v1/search/image",
        {"image": {"base64": b64(b"hello")}},
        400,
        "invalid_image",
    ),
    (
        "truncated jpeg",
        "/v1/search/image",
        {"image": {"base64": b64(photo_bytes(0)[:2000])}},
        400,
        "invalid_image",
    ),
    (
        "bad base64",
        "/v1/search/image",
        {"image": {"base64": "@@not base64@@"}},
        400,
        "invalid_image",
    ),
    (
        "too many pixels",
        "/v1/search/image",
        {"image": {"base64": b64(png(1200, 1000))}},
        413,
        "image_too_large",
    ),
    (
        "both image fields",
        "/v1/search/image",
        {"image": {"base64": "AA==", "url": "http://x"}},
        422,
        "invalid_request",
    ),
    ("empty query", "/v1/search/text", {"query": "   "}, 400, "empty_query"),
    # Nothing survives the official cleanup: these would be searches for [CLS][SEP].
    ("controls only", "/v1/search/text", {"query": "\x00\x01\x7f"}, 400, "empty_query"),
    (
        "whitespace of other kinds",
        "/v1/search/text",
        {"query": "\u3000\u2028\u200b\ufeff\ufffd\t"},
        400,
        "empty_query",
    ),
    ("blank text to embed", "/v1/embed/text", {"texts": ["猫", "\x00"]}, 400, "empty_query"),
    ("over-long query", "/v1/search/text", {"query": "长" * 1001}, 400, "query_too_long"),
    ("top_k zero", "/v1/search/text", {"query": "猫", "top_k": 0}, 422, "invalid_request"),
    (
        "top_k over the limit",
        "/v1/search/text",
        {"query": "猫", "top_k": 101},
        400,
        "invalid_request",
    ),
    (
        "unknown filter field",
        "/v1/search/text",
        {"query": "猫", "filter": {"colour": "红"}},
        400,
        "unknown_filter_field",
    ),
    ("empty filter", "/v1/search/text", {"query": "猫", "filter": {}}, 400, "invalid_filter"),
    (
        "nested filter value",
        "/v1/search/text",
        {"query": "猫", "filter": {"category": {"a": 1}}},
        422,
        "invalid_request",
    ),
    ("unknown field", "/v1/search/text", {"query": "猫", "k": 3}, 422, "invalid_request"),
    ("query not a string", "/v1/search/text", {"query": 5}, 422, "invalid_request"),
    ("body not an object", "/v1/search/text", [1, 2], 422, "invalid_request"),
    (
        "too many labels",
        "/v1/classify",
        {"image": IMAGE, "labels": list("一二三四五六")},
        400,
        "too_many_labels",
    ),
    (
        "duplicate labels",
        "/v1/classify",
        {"image": IMAGE, "labels": ["猫", "猫"]},
        422,
        "invalid_request",
    ),
    (
        "template without slot",
        "/v1/classify",
        {"image": IMAGE, "labels": ["猫"], "templates": ["照片"]},
        422,
        "invalid_request",
    ),
    ("no texts", "/v1/embed/text", {"texts": []}, 422, "invalid_request"),
    ("too many texts", "/v1/embed/text", {"texts": ["猫"] * 65}, 400, "too_many_texts"),
    (
        "filter on a text search",
        "/v1/search/image",
        {"image": IMAGE, "target": "texts", "filter": {"category": "室内"}},
        400,
        "invalid_filter",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_json_bodies(
    client: httpx.Client, path: str, body: Any, status: int, code: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text


def test_malformed_and_mistyped_bodies(client: httpx.Client) -> None:
    cases = [
        (
            dict(content='{"query": "猫"'.encode(), headers={"content-type": "application/json"}),
            422,
        ),
        (dict(content=b"\xff\xfe", headers={"content-type": "application/json"}), 422),
        (dict(content=b"", headers={"content-type": "application/json"}), 400),
        (dict(content=b"query=cat", headers={"content-type": "text/plain"}), 415),
    ]
    for kwargs, status in cases:
        r = client.post("/v1/search/text", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == status, (kwargs, r.text)
        assert r.json()["error"]["code"]


def test_body_over_the_limit_is_refused(client: httpx.Client) -> None:
    big = {"image": {"base64": "A" * 2_100_000}}
    r = client.post("/v1/search/image", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"image": {"base64": "'
        for _ in range(30):
            yield b"A" * 100_000
        yield b'"}}'

    r = client.post(
        "/v1/search/image", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_bad_uploads(client: httpx.Client) -> None:
    r = client.post("/v1/search/image", files={"image": ("x.jpg", b"")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = client.post("/v1/search/image", data={"image": "not a file"}, files={"other": ("x", b"1")})
    assert r.status_code in (400, 422) and r.json()["error"]["code"]
    r = client.post(
        "/v1/search/image",
        files={"image": ("x.jpg", photo_bytes(0))},
        data={"filter": "{not json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


def test_unknown_routes_and_methods_answer_json(client: httpx.Client) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/search/text")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_a_client_request_id_is_echoed(client: httpx.Client) -> None:
    r = client.post("/v1/search/text", json={"query": ""}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["error"]["request_id"] == "abc-123"
    r = client.post("/v1/search/text", json={"query": ""}, headers={"X-Request-ID": "bad id\t!"})
    assert r.headers["x-request-id"] != "bad id\t!"


def test_every_answer_names_the_replica(client: httpx.Client) -> None:
    """X-Cnclip-Replica: the host name by default (a container's id behind a gateway)."""
    for r in (client.get("/healthz"), client.post("/v1/search/text", json={"query": ""})):
        assert r.headers["x-cnclip-replica"] == socket.gethostname()


def test_a_replica_name_must_fit_a_header() -> None:
    for name in ("api 1", "a" * 65, "名"):
        with pytest.raises(ValidationError):
            Settings(bundle="/models/bundle", replica=name)
    assert Settings(bundle="/models/bundle", replica="api-1.eu").replica == "api-1.eu"


def test_the_service_still_answers_after_all_that(client: httpx.Client) -> None:
    r = client.post("/v1/search/text", json={"query": "猫"})
    assert r.status_code == 200
