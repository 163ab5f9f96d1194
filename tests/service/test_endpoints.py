"""Every endpoint against a real server, the tiny bundle and an index of the real photos."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from runtime.bundle import Bundle
from runtime.retrieval import class_embeddings
from runtime.templates import PROMPT_TEMPLATES
from tests.service.conftest import make_settings, photo_bytes, photos, queries, running


@pytest.fixture
def client(bundle_dir: Path, index_root: Path) -> Iterator[httpx.Client]:
    with running(make_settings(bundle_dir, index_root)) as url, httpx.Client(base_url=url) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_text_search_returns_ranked_items_with_metadata(
    client: httpx.Client, bundle: Bundle, index_template: Path
) -> None:
    query = queries()[0]
    r = client.post("/v1/search/text", json={"query": query, "top_k": 5, "mode": "vector"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_version"] == "v0001" and body["truncated"] is False
    expected = bundle.encode_images(photos()) @ bundle.encode_texts([query])[0]
    order = np.argsort(-expected)[:5]
    assert [item["id"] for item in body["items"]] == [f"photo-{i}" for i in order]
    assert [item["score"] for item in body["items"]] == pytest.approx(expected[order], abs=1e-4)
    assert {"title", "category", "price"} <= set(body["items"][0]["metadata"])
    assert r.headers["x-request-id"]


def test_text_search_filter_keeps_only_matching_items(client: httpx.Client) -> None:
    r = client.post(
        "/v1/search/text", json={"query": "街道", "top_k": 20, "filter": {"category": "街景"}}
    )
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == len(photos()) // 2
    assert {item["metadata"]["category"] for item in items} == {"街景"}


def test_image_search_finds_the_same_photo_first(client: httpx.Client) -> None:
    r = client.post("/v1/search/image", json={"image": {"base64": b64(photo_bytes(3))}})
    assert r.status_code == 200, r.text
    first = r.json()["items"][0]
    assert first["id"] == "photo-3" and first["score"] == pytest.approx(1.0, abs=1e-4)


def test_image_upload_and_data_url_give_the_same_answer(client: httpx.Client) -> None:
    upload = client.post(
        "/v1/search/image",
        files={"image": ("p.jpg", photo_bytes(2), "image/jpeg")},
        data={"top_k": "3", "filter": '{"category": "室内"}'},
    )
    data_url = "data:image/jpeg;base64," + b64(photo_bytes(2))
    as_json = client.post(
        "/v1/search/image",
        json={"image": {"base64": data_url}, "top_k": 3, "filter": {"category": "室内"}},
    )
    assert upload.status_code == as_json.status_code == 200, upload.text
    assert upload.json() == as_json.json()
    assert upload.json()["items"][0]["id"] == "photo-2"


def test_image_to_text_searches_the_text_corpus(client: httpx.Client, bundle: Bundle) -> None:
    r = client.post(
        "/v1/search/image",
        json={"image": {"base64": b64(photo_bytes(0))}, "target": "texts", "top_k": 2},
    )
    assert r.status_code == 200, r.text
    texts = queries()
    scores = bundle.encode_texts(texts) @ bundle.encode_images([photos()[0]])[0]
    best = int(np.argmax(scores))
    first = r.json()["items"][0]
    assert first["id"] == f"text-{best}" and first["metadata"]["title"] == texts[best]


def test_classify_ranks_labels_by_ensembled_prompts(client: httpx.Client, bundle: Bundle) -> None:
    labels = ["猫", "狗", "汽车", "蛋糕"]
    r = client.post(
        "/v1/classify", json={"image": {"base64": b64(photo_bytes(1))}, "labels": labels}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["templates"] == len(PROMPT_TEMPLATES)
    prompts = [t.replace("{}", label) for label in labels for t in PROMPT_TEMPLATES]
    classes = class_embeddings(
        bundle.encode_texts(prompts).reshape(len(labels), len(PROMPT_TEMPLATES), -1)
    )
    cosine = classes @ bundle.encode_images([photos()[1]])[0]
    logits = bundle.logit_scale * cosine
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    assert [x["label"] for x in body["labels"]] == [labels[i] for i in order]
    assert [x["probability"] for x in body["labels"]] == pytest.approx(probs[order], abs=1e-4)
    assert sum(x["probability"] for x in body["labels"]) == pytest.approx(1.0, abs=1e-4)


def test_classify_with_own_templates_as_a_form(client: httpx.Client) -> None:
    r = client.post(
        "/v1/classify",
        files={"image": ("p.jpg", photo_bytes(1), "image/jpeg")},
        data={"labels": ["猫", "狗"], "templates": ["一张{}的照片。"], "top_k": "1"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["templates"] == 1 and len(r.json()["labels"]) == 1


def test_embed_text_and_images_match_the_bundle(client: httpx.Client, bundle: Bundle) -> None:
    texts = ["红色连衣裙", "白色运动鞋", "一只在草地上奔跑的狗"]
    r = client.post("/v1/embed/text", json={"texts": texts})
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["embeddings"], bundle.encode_texts(texts), atol=1e-5)
    assert r.json()["dim"] == bundle.embed_dim and r.json()["bundle_id"] == bundle.bundle_id
    assert r.json()["model_id"] == bundle.identity.model_id is not None
    r = client.post(
        "/v1/embed/image",
        files=[("images", ("a.jpg", photo_bytes(0))), ("images", ("b.jpg", photo_bytes(1)))],
    )
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["embeddings"], bundle.encode_images(photos()[:2]), atol=1e-5)


def test_long_queries_are_cut_and_reported(client: httpx.Client) -> None:
    r = client.post("/v1/search/text", json={"query": "红色的连衣裙" * 20})
    assert r.status_code == 200 and r.json()["truncated"] is True
    r = client.post("/v1/embed/text", json={"texts": ["短", "长" * 80]})
    assert r.json()["truncated"] == [1]


def test_health_ready_catalog_and_metrics(client: httpx.Client, bundle: Bundle) -> None:
    assert client.get("/healthz").json() == {
        "status": "ok",
        "model_id": None,
        "bundle_id": None,
        "index_version": None,
    }
    ready = client.get("/readyz").json()
    assert ready["bundle_id"] == bundle.bundle_id and ready["index_version"] == "v0001"
    assert ready["model_id"] == bundle.identity.model_id
    info = client.get("/v1/catalog").json()
    assert info["count"] == len(photos()) and info["texts"] == len(queries())
    client.post("/v1/search/text", json={"query": "猫"})
    text = client.get("/metrics").text
    for name in (
        'cnclip_request_duration_seconds_count{endpoint="/v1/search/text",method="POST",'
        'status="200"}',
        'cnclip_batch_size_count{tower="text"}',
        'cnclip_encode_duration_seconds_count{tower="text"}',
        'cnclip_search_duration_seconds_count{target="images"}',
        'cnclip_cache_requests_total{kind="search",result="miss"}',
        f'cnclip_index_items{{target="images"}} {len(photos())}.0',
        f'cnclip_model_info{{architecture="{bundle.manifest.architecture or ""}"',
        'cnclip_index_info{factory="IDMap2,Flat",version="v0001"} 1.0',
        "cnclip_queue_depth",
        "cnclip_queue_wait_seconds",
    ):
        assert name in text, name


class _Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/photo.jpg")
            self.end_headers()
            return
        if self.path != "/photo.jpg":
            self.send_response(404)
            self.end_headers()
            return
        data = photo_bytes(4)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_urls_are_fetched_when_private_addresses_are_allowed(
    bundle_dir: Path, index_root: Path, image_server: str
) -> None:
    settings = make_settings(bundle_dir, index_root, fetch={"allow_private": True})
    with running(settings) as url, httpx.Client(base_url=url) as c:
        for path in ("/photo.jpg", "/redirect"):
            r = c.post("/v1/search/image", json={"image": {"url": image_server + path}})
            assert r.status_code == 200, r.text
            assert r.json()["items"][0]["id"] == "photo-4"
        r = c.post("/v1/search/image", json={"image": {"url": image_server + "/missing"}})
        assert r.status_code == 400 and r.json()["error"]["code"] == "image_fetch_failed"
    small = make_settings(bundle_dir, index_root, fetch={"allow_private": True, "max_bytes": 1000})
    with running(small) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/search/image", json={"image": {"url": image_server + "/photo.jpg"}})
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"


def test_loopback_and_private_urls_are_refused_by_default(
    client: httpx.Client, image_server: str
) -> None:
    for url in (image_server + "/photo.jpg", "http://10.0.0.1/x.jpg", "http://[::1]/x.jpg"):
        r = client.post("/v1/search/image", json={"image": {"url": url}})
        assert r.status_code == 400, url
        assert r.json()["error"]["code"] == "invalid_url"
    r = client.post("/v1/search/image", json={"image": {"url": "file:///etc/passwd"}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_url"
