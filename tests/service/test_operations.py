"""API keys, the Redis cache (and Redis down), batching, back-pressure, deadlines,
catalog changes while searching, hot index switches and foreign indexes."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from index.build import Corpus, build_version
from index.update import remove_items
from runtime.bundle import Bundle
from runtime.errors import ConfigError
from runtime.identity import ModelMismatchError, ModelRef
from service.app import create_app
from tests.service.conftest import REDIS_URL, make_settings, photo_bytes, photos, running

KEY = "s3cret-key"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric(text: str, name: str) -> float:
    """The sum of every sample of ``name`` (all label sets) in a /metrics page."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def test_catalog_changes_need_the_api_key(bundle_dir: Path, index_root: Path) -> None:
    body = {"ids": ["photo-0"]}
    with running(make_settings(bundle_dir, index_root)) as url:
        r = httpx.post(url + "/v1/catalog/delete", json=body)
        assert r.status_code == 403 and "CNCLIP_SECURITY__API_KEY" in r.json()["error"]["message"]
    settings = make_settings(bundle_dir, index_root, security={"api_key": KEY})
    with running(settings) as url:
        assert httpx.post(url + "/v1/catalog/delete", json=body).status_code == 401
        wrong = httpx.post(url + "/v1/catalog/delete", json=body, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        ok = httpx.post(
            url + "/v1/catalog/delete", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert ok.status_code == 200 and ok.json() == {
            "version": "v0002",
            "count": 13,
            "changed": 1,
        }
        # searches stay open unless require_for_all
        assert httpx.post(url + "/v1/search/text", json={"query": "猫"}).status_code == 200


def test_the_key_can_be_required_everywhere(bundle_dir: Path, index_root: Path) -> None:
    settings = make_settings(
        bundle_dir, index_root, security={"api_key": KEY, "require_for_all": True}
    )
    with running(settings) as url:
        assert httpx.post(url + "/v1/search/text", json={"query": "猫"}).status_code == 401
        r = httpx.post(url + "/v1/search/text", json={"query": "猫"}, headers={"X-API-Key": KEY})
        assert r.status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 200
    with pytest.raises(ConfigError, match="API_KEY"):
        create_app(make_settings(bundle_dir, index_root, security={"require_for_all": True}))


def test_cors_origins_are_configurable(bundle_dir: Path, index_root: Path) -> None:
    settings = make_settings(
        bundle_dir, index_root, security={"cors_origins": ["https://shop.example"]}
    )
    with running(settings) as url:
        r = httpx.options(
            url + "/v1/search/text",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
        r = httpx.post(
            url + "/v1/search/text",
            json={"query": "猫"},
            headers={"Origin": "https://evil.example"},
        )
        assert "access-control-allow-origin" not in r.headers


def test_redis_caches_texts_labels_and_searches(bundle_dir: Path, index_root: Path) -> None:
    server = redis.Redis.from_url(REDIS_URL)
    server.flushdb()
    settings = make_settings(bundle_dir, index_root, cache={"redis_url": REDIS_URL})
    with running(settings) as url, httpx.Client(base_url=url) as c:
        first = c.post("/v1/search/text", json={"query": "  街边 烧烤摊 ", "top_k": 4})
        again = c.post("/v1/search/text", json={"query": "街边 烧烤摊", "top_k": 4})
        assert first.headers["x-cache"] == "miss" and again.headers["x-cache"] == "hit"
        assert first.json() == again.json()
        other_k = c.post("/v1/search/text", json={"query": "街边 烧烤摊", "top_k": 3})
        assert other_k.headers["x-cache"] == "miss"  # the text embedding is reused, though
        image = {"base64": b64(photo_bytes(0))}
        for _ in range(2):
            r = c.post("/v1/classify", json={"image": image, "labels": ["猫", "狗"]})
            assert r.status_code == 200
        text = c.get("/metrics").text
    kinds = {k.decode().split(":")[2] for k in server.keys("cnclip:v1:*")}
    assert kinds == {"text", "labels", "search"}
    ttl = server.ttl(next(iter(server.keys("cnclip:v1:search:*"))))
    assert 0 < ttl <= settings.cache.search_ttl_s
    assert metric(text, 'cnclip_cache_requests_total{kind="search",result="hit"}') == 1
    assert metric(text, 'cnclip_cache_requests_total{kind="text",result="hit"}') >= 1
    assert metric(text, 'cnclip_cache_requests_total{kind="labels",result="hit"}') == 1
    server.flushdb()


def test_a_dead_redis_costs_nothing_but_the_cache(bundle_dir: Path, index_root: Path) -> None:
    settings = make_settings(
        bundle_dir, index_root, cache={"redis_url": "redis://127.0.0.1:1/0", "redis_retry_s": 60}
    )
    with running(settings) as url, httpx.Client(base_url=url) as c:
        for _ in range(3):
            r = c.post("/v1/search/text", json={"query": "猫"})
            assert r.status_code == 200 and r.headers["x-cache"] == "miss"
        text = c.get("/metrics").text
    # one failure, then Redis is left alone for redis_retry_s
    assert metric(text, "cnclip_cache_errors_total") == 1


def test_concurrent_requests_share_batches(bundle_dir: Path, bundle: Bundle) -> None:
    texts = [f"第{i}件商品：红色连衣裙" for i in range(24)]
    settings = make_settings(
        bundle_dir,
        None,
        text_batch={"max_batch_size": 8, "max_wait_ms": 200},
        cache={"enabled": False},
    )

    async def one(c: httpx.AsyncClient, text: str) -> list[float]:
        r = await c.post("/v1/embed/text", json={"texts": [text]})
        assert r.status_code == 200, r.text
        return r.json()["embeddings"][0]  # type: ignore[no-any-return]

    async def all_at_once(url: str) -> list[list[float]]:
        async with httpx.AsyncClient(base_url=url) as c:
            return await asyncio.gather(*(one(c, t) for t in texts))

    with running(settings) as url:
        rows = asyncio.run(all_at_once(url))
        text = httpx.get(url + "/metrics").text
    assert np.allclose(rows, np.stack([bundle.encode_texts([t])[0] for t in texts]), atol=1e-5)
    batches = metric(text, 'cnclip_batch_size_count{tower="text"}')
    assert metric(text, 'cnclip_batch_size_sum{tower="text"}') == len(texts)
    assert batches < len(texts)  # some batch held more than one request
    assert metric(text, 'cnclip_batch_size_bucket{le="1.0",tower="text"}') < batches


def test_a_full_queue_answers_503_with_retry_after(bundle_dir: Path) -> None:
    settings = make_settings(
        bundle_dir, None, text_batch={"max_batch_size": 1, "max_queue": 1}, cache={"enabled": False}
    )
    with running(settings) as url:
        r = httpx.post(url + "/v1/embed/text", json={"texts": ["猫", "狗", "鸟", "鱼"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert httpx.post(url + "/v1/embed/text", json={"texts": ["猫"]}).status_code == 200
        text = httpx.get(url + "/metrics").text
    assert metric(text, 'cnclip_rejected_requests_total{reason="queue_full"}') >= 1


def test_requests_past_their_deadline_answer_504(bundle_dir: Path) -> None:
    settings = make_settings(bundle_dir, None, request_timeout_s=1e-9, cache={"enabled": False})
    with running(settings) as url:
        r = httpx.post(url + "/v1/embed/text", json={"texts": ["猫"]})
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"


def test_catalog_changes_while_searching_drop_nothing(
    bundle_dir: Path, index_root: Path, bundle: Bundle
) -> None:
    settings = make_settings(bundle_dir, index_root, security={"api_key": KEY})
    statuses: list[int] = []
    stop = threading.Event()

    def search(url: str) -> None:
        with httpx.Client(base_url=url) as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/search/text", json={"query": "猫"}).status_code)

    new_image = photo_bytes(5)[:]  # the same pixels under a new id
    with running(settings) as url:
        threads = [threading.Thread(target=search, args=(url,)) for _ in range(3)]
        for t in threads:
            t.start()
        headers = {"X-API-Key": KEY}
        added = httpx.post(
            url + "/v1/catalog/items",
            json={
                "items": [
                    {
                        "id": "new-1",
                        "image": {"base64": b64(new_image)},
                        "metadata": {"title": "新品", "category": "新"},
                    }
                ]
            },
            headers=headers,
            timeout=60,
        )
        assert added.status_code == 200, added.text
        assert added.json() == {"version": "v0002", "count": len(photos()) + 1, "changed": 1}
        found = httpx.post(
            url + "/v1/search/image",
            json={"image": {"base64": b64(new_image)}, "filter": {"category": "新"}},
        )
        assert found.json()["items"][0]["id"] == "new-1"
        assert found.json()["index_version"] == "v0002"
        removed = httpx.post(
            url + "/v1/catalog/delete", json={"ids": ["new-1", "photo-5"]}, headers=headers
        )
        assert removed.status_code == 200 and removed.json()["version"] == "v0003"
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        after = httpx.post(
            url + "/v1/search/image", json={"image": {"base64": b64(new_image)}, "top_k": 20}
        ).json()
        again = httpx.post(url + "/v1/catalog/delete", json={"ids": ["new-1"]}, headers=headers)
        duplicate = httpx.post(
            url + "/v1/catalog/items",
            json={"items": [{"id": "photo-1", "image": {"base64": b64(new_image)}}]},
            headers=headers,
        )
    assert statuses and set(statuses) == {200}
    assert {"new-1", "photo-5"}.isdisjoint(item["id"] for item in after["items"])
    assert again.status_code == 400 and "not in the index" in again.json()["error"]["message"]
    assert duplicate.status_code == 400 and "already" in duplicate.json()["error"]["message"]


def test_a_new_current_version_is_picked_up(bundle_dir: Path, index_root: Path) -> None:
    settings = make_settings(bundle_dir, index_root, index_poll_s=0.1)
    with running(settings) as url:
        assert httpx.get(url + "/readyz").json()["index_version"] == "v0001"
        remove_items(index_root, ["photo-0"])  # another process writes v0002
        deadline = time.monotonic() + 10
        while httpx.get(url + "/readyz").json()["index_version"] != "v0002":
            assert time.monotonic() < deadline, "the service did not switch"
            time.sleep(0.05)
        assert httpx.get(url + "/v1/catalog").json()["count"] == len(photos()) - 1


def test_an_index_of_another_bundle_is_refused(
    bundle_dir: Path, index_root: Path, bundle: Bundle, tmp_path: Path
) -> None:
    vectors = bundle.encode_images(photos()[:3])
    other = tmp_path / "other"
    another = ModelRef(model_id="0" * 64, bundle_id="1" * 64, precision="fp32")
    build_version(other, Corpus(vectors, ["a", "b", "c"]), model=another, progress=False)
    app = create_app(make_settings(bundle_dir, other))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ModelMismatchError, match="built with model 000000000000"):
        asyncio.run(start())
    # while serving, a foreign version written to the root is not switched to
    settings = make_settings(bundle_dir, index_root, index_poll_s=0.1)
    with running(settings) as url:
        build_version(index_root, Corpus(vectors, ["a", "b", "c"]), model=another, progress=False)
        time.sleep(0.6)
        assert httpx.get(url + "/readyz").json()["index_version"] == "v0001"
        assert httpx.post(url + "/v1/search/text", json={"query": "猫"}).status_code == 200
