"""Product search through the real server: modes, relevance, negation, grouping, boosts,
explain, the multimodal POST /v1/search, and the 4xx answers for bad options.

The index holds the real photos twice over as products of two brands with model codes
(titles such as ``回力 红色的街景 HL-1001``), so that the lexical side, the vocabulary
and grouping have something to work on; the tiny bundle's vectors are random, so these
tests check what the service does with them, not their meaning (tests/index/test_hybrid.py
checks meaning on known vectors)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from index.build import Corpus, build_version, title_vectors
from runtime.bundle import Bundle
from tests.service.conftest import make_settings, photo_bytes, photos, running

COLOURS = ["红色", "蓝色"]
BRANDS = {"回力": "HL", "飞跃": "FY"}


@pytest.fixture(scope="module")
def shop(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    files = photos()
    vectors = bundle.encode_images(files)
    rows, ids, items = [], [], []
    for n, brand in enumerate(BRANDS):
        for i in range(len(files)):
            colour = COLOURS[i % 2]
            spu = f"spu-{n}-{i // 2}"
            code = f"{BRANDS[brand]}-{1000 + 10 * n + i // 2}"
            rows.append(vectors[i])
            ids.append(f"{brand}-{i}")
            items.append(
                {
                    "title": f"{brand} {colour}的照片 {code}",
                    "colour": colour,
                    "brand": brand,
                    "code": code,
                    "spu": spu,
                    "sales": 100 * i + n,
                }
            )
    root = tmp_path_factory.mktemp("shop") / "index"
    corpus = Corpus(np.stack(rows), ids, items, title_vectors(bundle, items, progress=False))
    build_version(root, corpus, model=bundle.identity, progress=False)
    return root, items


@pytest.fixture(scope="module")
def client(bundle_dir: Path, shop: tuple[Path, list[dict]]) -> Iterator[httpx.Client]:
    settings = make_settings(bundle_dir, shop[0])
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _text(client: httpx.Client, **body: object) -> dict:
    r = client.post("/v1/search/text", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_hybrid_is_the_default_and_a_model_code_is_found_by_its_words(
    client: httpx.Client,
) -> None:
    body = _text(client, query="HL-1002", top_k=5, min_relevance=0.0)
    assert body["mode"] == "hybrid"
    lexical = _text(client, query="HL-1002", top_k=5, mode="lexical")
    assert lexical["mode"] == "lexical"
    assert {i["metadata"]["code"] for i in lexical["items"]} == {"HL-1002"}
    assert all(i["relevance"] == 1.0 for i in lexical["items"])  # every word is there
    assert body["items"][0]["metadata"]["code"] == "HL-1002"
    # The code is a value of the code attribute: understood, it filters even vector search.
    vector = _text(client, query="HL-1002", top_k=5, mode="vector", min_relevance=0.0)
    assert vector["interpreted"]["must"] == {"code": "HL-1002"}
    assert {i["metadata"]["code"] for i in vector["items"]} == {"HL-1002"}
    blind = _text(
        client, query="HL-1002", top_k=5, mode="vector", min_relevance=0.0, understand=False
    )
    assert len(blind["items"]) == 5 and "interpreted" not in blind
    assert all(0.0 <= i["relevance"] <= 1.0 for i in blind["items"])


def test_negation_is_read_returned_and_applied(client: httpx.Client) -> None:
    body = _text(client, query="不要红色的回力", top_k=20, min_relevance=0.0)
    assert body["interpreted"] == {
        "text": "回力",
        "must": {"brand": "回力"},
        "must_not": {"colour": ["红色"]},
        "negated": [],
    }
    colours = {i["metadata"]["colour"] for i in body["items"]}
    brands = {i["metadata"]["brand"] for i in body["items"]}
    assert colours == {"蓝色"} and brands == {"回力"}
    plain = _text(client, query="不要红色的回力", top_k=20, min_relevance=0.0, understand=False)
    assert "interpreted" not in plain
    assert "红色" in {i["metadata"]["colour"] for i in plain["items"]}


def test_grouping_boosts_and_explain(client: httpx.Client) -> None:
    grouped = _text(client, query="照片", top_k=6, group_by="spu", group_size=2, min_relevance=0.0)
    spus = [i["metadata"]["spu"] for i in grouped["items"]]
    assert len(spus) == 6 and len(set(spus)) == 6
    assert all(1 <= len(i["group"]["items"]) <= 2 for i in grouped["items"])
    boost = [{"field": "sales", "weight": 1.0, "transform": "log1p"}]
    boosted = _text(
        client, query="照片", top_k=6, mode="vector", boost=boost, explain=True, min_relevance=0.0
    )
    first = boosted["items"][0]
    assert first["explain"]["boost"]["factor"] == pytest.approx(
        1 + np.log1p(first["metadata"]["sales"]), abs=1e-5
    )
    assert {"cosine", "relevance", "score", "vector", "mode"} <= set(first["explain"])


def test_a_query_for_nothing_relevant_answers_no_items_with_a_hint(client: httpx.Client) -> None:
    body = _text(client, query="自行车", min_relevance=1.0)
    assert body["items"] == [] and "min_relevance" in body["hint"]
    empty = _text(client, query="照片", filter={"brand": "没有这个牌子"})
    assert empty["items"] == [] and "filters" in empty["hint"]


def test_multimodal_search_weighs_the_text_and_the_image(
    client: httpx.Client, bundle: Bundle, shop: tuple[Path, list[dict]]
) -> None:
    image = {"base64": base64.b64encode(photo_bytes(2)).decode()}
    alone = client.post("/v1/search", json={"image": image, "top_k": 5})
    by_image = client.post("/v1/search/image", json={"image": image, "top_k": 5})
    assert alone.status_code == 200 and by_image.status_code == 200, alone.text
    assert [i["id"] for i in alone.json()["items"]] == [i["id"] for i in by_image.json()["items"]]
    body = {"image": image, "text": "蓝色的", "text_weight": 0.5, "image_weight": 1.0}
    # min_relevance 0: the tiny random model's relevance says nothing (the default would
    # apply to a query with a text).
    both = client.post(
        "/v1/search", json={**body, "mode": "vector", "top_k": 5, "min_relevance": 0.0}
    )
    assert both.status_code == 200, both.text
    got = both.json()
    picture = bundle.encode_images([photos()[2]])[0]
    words = bundle.encode_texts([got["interpreted"]["text"]])[0]  # 蓝色: the 的 is dropped
    query = 0.5 * words + picture
    query /= np.linalg.norm(query)
    _, items = shop
    vectors = np.concatenate([bundle.encode_images(photos())] * 2)
    expected = vectors @ query
    # The query reads 蓝色 as an attribute word: only blue items qualify.
    blue = [n for n, item in enumerate(items) if item["colour"] == "蓝色"]
    order = sorted(blue, key=lambda n: -expected[n])[:5]
    assert got["interpreted"]["must"] == {"colour": "蓝色"}
    assert [i["score"] for i in got["items"]] == pytest.approx(expected[order], abs=1e-4)
    form = client.post(
        "/v1/search",
        files={"image": ("p.jpg", photo_bytes(2), "image/jpeg")},
        data={
            "text": "蓝色的",
            "text_weight": "0.5",
            "mode": "vector",
            "top_k": "5",
            "min_relevance": "0",
        },
    )
    assert form.status_code == 200, form.text
    assert [i["id"] for i in form.json()["items"]] == [i["id"] for i in got["items"]]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/search/text", {"query": "照片", "group_by": "colour_name"}, 400,
         "unknown_group_by_field"),
        ("/v1/search/text", {"query": "照片", "boost": [{"field": "brand", "weight": 1}]}, 400,
         "invalid_request"),
        ("/v1/search/text", {"query": "照片", "boost": [{"field": "stars", "weight": 1}]}, 400,
         "unknown_boost_field"),
        ("/v1/search/text", {"query": "照片", "min_relevance": 1.5}, 422, "invalid_request"),
        ("/v1/search/text", {"query": "照片", "min_relevance": -0.1}, 422, "invalid_request"),
        ("/v1/search/text", {"query": "照片", "mode": "semantic"}, 422, "invalid_request"),
        ("/v1/search/text", {"query": "照片", "exclude": {"size": "XL"}}, 400,
         "unknown_filter_field"),
        ("/v1/search/text", {"query": "照片", "exclude": {}}, 400, "invalid_filter"),
        ("/v1/search/text", {"query": "照片", "boost": [{"field": "sales", "weight": 1,
         "transform": "cube"}]}, 422, "invalid_request"),
        ("/v1/search", {"top_k": 3}, 422, "invalid_request"),
        ("/v1/search", {"image": {"url": "http://x"}, "mode": "lexical"}, 400, None),
        ("/v1/search", {"text": "照片", "text_weight": 0}, 422, "invalid_request"),
    ],
)  # fmt: skip
def test_bad_options_are_4xx_json(
    client: httpx.Client, path: str, body: dict, status: int, code: str | None
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code


def test_the_schema_documents_the_new_options_with_chinese_examples(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/search" in schema["paths"]
    components = schema["components"]["schemas"]
    text = components["TextSearchRequest"]["properties"]
    for option in ("mode", "fusion", "alpha", "min_relevance", "group_by", "group_size",
                   "boost", "explain", "understand", "exclude"):  # fmt: skip
        assert option in text and text[option].get("description"), option
    examples = json.dumps(components["TextSearchRequest"]["examples"], ensure_ascii=False)
    assert "不要红色的杯子" in examples
    assert "relevance" in components["SearchItem"]["properties"]
    assert "interpreted" in components["SearchResponse"]["properties"]
