"""The service on Milvus: ``cnclip serve --index milvus://...`` with two workers sharing one
milvus-lite server on a loopback port; catalog changes seen by every worker, a version
switch followed, Milvus killed (503, counted) and back (recovered without a restart)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import index
from index.build import Corpus
from index.lite_server import LiteServer
from runtime.bundle import Bundle
from tests.service.conftest import cnclip_serve, photo_bytes, photos

KEY = "milvus-admin-key"


@pytest.fixture
def milvus(tmp_path: Path) -> Iterator[LiteServer]:
    with LiteServer(tmp_path / "milvus") as server:
        yield server


def _catalog(bundle: Bundle) -> Corpus:
    files = photos()
    ids = [f"photo-{i}" for i in range(len(files))]
    items = [
        {"title": f.stem, "category": "街景" if i % 2 else "室内", "price": 10 * i}
        for i, f in enumerate(files)
    ]
    return Corpus(bundle.encode_images(files), ids, items)


def _search(url: str, body: dict[str, object]) -> httpx.Response:
    # A new connection each time, so that the requests spread over both workers.
    return httpx.post(url + "/v1/search/text", json=body, headers={"Connection": "close"})


def test_two_workers_share_one_milvus(
    milvus: LiteServer, bundle: Bundle, bundle_dir: Path, tmp_path: Path
) -> None:
    location = milvus.location("photos")
    catalog = _catalog(bundle)
    captions = ["街道上的车", "下雨的街道", "一只猫", "桌上的蛋糕", "踢足球的人", "一碗面"]
    caption_ids = [f"caption-{i}" for i in range(len(captions))]
    texts = Corpus(bundle.encode_texts(captions), caption_ids, [{"title": c} for c in captions])
    index.build_index(location, catalog, model=bundle.identity, texts=texts, progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    env.update(
        {
            "CNCLIP_SECURITY__API_KEY": KEY,
            "CNCLIP_INDEX_POLL_S": "0.5",
            "CNCLIP_CACHE__BACKEND": "memory",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        }
    )
    (tmp_path / "metrics").mkdir()
    args = ["--bundle", str(bundle_dir), "--index", location, "--workers", "2", "--threads", "1"]
    with cnclip_serve([*args, "--log-level", "warning"], env) as (url, _):
        info = httpx.get(url + "/v1/catalog").json()
        assert info["version"] == "photos_v0001" and info["factory"] == "milvus:FLAT"
        assert info["count"] == len(catalog.ids) and info["model_id"] == bundle.identity.model_id
        found = _search(url, {"query": "街道上的车", "top_k": 3, "filter": {"category": "街景"}})
        assert found.status_code == 200, found.text
        body = found.json()
        assert len(body["items"]) == 3 and body["index_version"] == "photos_v0001"
        assert {item["metadata"]["category"] for item in body["items"]} == {"街景"}
        unknown = _search(url, {"query": "猫", "filter": {"colour": "红"}})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == (
            "unknown_filter_field"
        )
        # Image to text: the version's text corpus on Milvus, exactly as the bundle ranks it.
        photo = base64.b64encode(photo_bytes(0)).decode()
        wanted = bundle.encode_images([photos()[0]])[0] @ texts.vectors.T
        to_text = httpx.post(
            url + "/v1/search/image",
            json={"image": {"base64": photo}, "target": "texts", "top_k": 3},
        )
        assert to_text.status_code == 200, to_text.text
        got = [(item["id"], item["metadata"]["title"]) for item in to_text.json()["items"]]
        best = [int(i) for i in (-wanted).argsort()[:3]]
        assert got == [(caption_ids[i], captions[i]) for i in best]

        # An item added through one worker is found by every worker at once: Milvus is shared.
        image = base64.b64encode(photo_bytes(3)).decode()
        added = httpx.post(
            url + "/v1/catalog/items",
            json={
                "items": [
                    {"id": "new-1", "image": {"base64": image}, "metadata": {"category": "新品"}}
                ]
            },
            headers={"X-API-Key": KEY},
            timeout=60,
        )
        assert added.status_code == 200, added.text
        assert added.json()["version"] == "photos_v0001"  # in place, no new version
        for attempt in range(8):
            hit = _search(url, {"query": f"新品 {attempt}", "filter": {"category": "新品"}})
            assert hit.status_code == 200, hit.text
            assert [item["id"] for item in hit.json()["items"]] == ["new-1"]
        removed = httpx.post(
            url + "/v1/catalog/delete", json={"ids": ["new-1"]}, headers={"X-API-Key": KEY}
        )
        assert removed.status_code == 200 and removed.json()["count"] == len(catalog.ids)

        # A new version built and switched by another process is followed by both workers.
        index.build_index(location, catalog, model=bundle.identity, progress=False)
        deadline = time.monotonic() + 20
        versions: set[str] = set()
        while time.monotonic() < deadline:
            versions = {
                _search(url, {"query": f"猫 {time.monotonic()}"}).json()["index_version"]
                for _ in range(6)
            }
            if versions == {"photos_v0002"}:
                break
            time.sleep(0.3)
        assert versions == {"photos_v0002"}
        # v0002 was built without texts: image to text says so, on every worker.
        for _ in range(4):
            none = httpx.post(
                url + "/v1/search/image",
                json={"image": {"base64": photo}, "target": "texts"},
                headers={"Connection": "close"},
            )
            assert none.status_code == 400 and none.json()["error"]["code"] == "no_text_corpus"

        # Milvus down: 503 with a clear error, counted; back: answers again, no restart.
        milvus.stop()
        down = _search(url, {"query": "下雨的街道"})
        assert down.status_code == 503, down.text
        error = down.json()["error"]
        assert error["code"] == "index_unavailable" and "cannot be reached" in error["message"]
        assert down.headers["Retry-After"]
        assert httpx.get(url + "/readyz").status_code == 503
        assert httpx.get(url + "/healthz").status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert 'cnclip_index_unavailable_total{operation="search"}' in metrics
        milvus.start()
        deadline = time.monotonic() + 30
        while True:
            back = _search(url, {"query": f"下雨的街道 {time.monotonic()}"})
            if back.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert back.status_code == 200, back.text
        # Each worker's gRPC channel reconnects on its own backoff: both are ready again
        # within the deadline (six answers in a row, so both workers have answered).
        ready = 0
        while ready < 6 and time.monotonic() < deadline + 30:
            ready = ready + 1 if httpx.get(url + "/readyz").status_code == 200 else 0
            time.sleep(0.2)
        assert ready == 6, "a worker did not report ready again after Milvus came back"
