"""The Milvus backend against a real milvus-lite server on a loopback port (the gRPC
protocol of a cluster), with flushes and loads: builds, recall, filters, changes in
place, alias switches under load, and an unreachable server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import index
from index.backend import IndexUnavailableError
from index.build import Corpus
from index.evaluate import exact_search
from index.lite_server import LiteServer
from index.milvus import (
    ConfigError,
    Connection,
    MilvusLocation,
    filter_expression,
    plan_fields,
)
from index.synthetic import clip_like_split
from index.versions import IndexVersionError
from runtime.errors import DataError
from runtime.identity import ModelMismatchError, ModelRef
from tests.conftest import ROOT

MODEL = ModelRef(model_id="m" * 64, bundle_id="b" * 64, precision="fp32")
COLOURS = ["红", "蓝", "绿"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteServer]:
    with LiteServer(tmp_path_factory.mktemp("milvus") / "data") as running:
        yield running


def _items(n: int) -> list[dict[str, object]]:
    return [
        {
            "title": f"商品 {i}",
            "colour": COLOURS[i % 3],
            "颜色": COLOURS[i % 3],
            "tags": ["新品", "热卖"] if i % 5 == 0 else ["热卖"],
            "price": float(i % 100) + 0.5,
            "stock": i % 7,
            "shop": f"shop-{i % 4}",
            "on_sale": i % 2 == 0,
            "mixed": "x" if i % 2 else 3,  # no single type: the dynamic field
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def data() -> tuple[Corpus, np.ndarray]:
    base, queries = clip_like_split(4000, 100, 64, seed=1)
    ids = [f"sku-{i}" for i in range(len(base))]
    return Corpus(base, ids, _items(len(base))), queries


def test_locations_parse_and_refuse_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    where = MilvusLocation.parse("milvus://10.0.0.5:19530/shop?db=prod&token=u:p")
    assert (where.host, where.port, where.name, where.db, where.token) == (
        "10.0.0.5",
        19530,
        "shop",
        "prod",
        "u:p",
    )
    assert str(where) == "milvus://10.0.0.5:19530/shop?db=prod"  # no token in messages
    assert where.collection(3) == "shop_v0003" and where.number_of("shop_v0012") == 12
    assert where.number_of("shopping_v0001") is None
    monkeypatch.setenv("CNCLIP_MILVUS_TOKEN", "root:Milvus")
    assert MilvusLocation.parse("milvus://h/shop").token == "root:Milvus"
    assert MilvusLocation.parse("milvus://h/shop").port == 19530
    for bad, message in [
        ("milvus://h:1/", "NAME"),
        ("milvus://h:1/商品", "must start with a letter"),
        ("milvus://h:1/a-b", "must start with a letter"),
        ("milvus://h:1/shop?user=x", "unknown option 'user'"),
        ("milvus://h:99999/shop", "bad port"),
    ]:
        with pytest.raises(ConfigError, match=message):
            MilvusLocation.parse(bad)


def test_importing_pymilvus_leaves_the_environment_as_it_was(tmp_path: Path) -> None:
    """pymilvus calls load_dotenv() when imported: a .env found above its folder (the
    compose settings of a project whose .venv is inside it) would reach the service."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("CNCLIP_SECURITY__API_KEY=from-a-dotenv\n", encoding="utf-8")
    code = (
        "import os, dotenv.main\n"
        f"dotenv.main.find_dotenv = lambda *args, **kwargs: {str(dotenv)!r}\n"
        "{how}\n"
        "print(os.environ.get('CNCLIP_SECURITY__API_KEY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CNCLIP_SECURITY__API_KEY"}

    def run(how: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code.format(how=how)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert run("import pymilvus") == "from-a-dotenv"  # what pymilvus does by itself
    assert run("import index.milvus as m; m._pymilvus(); import pymilvus") == "None"


def test_fields_and_filters_are_typed_and_escaped() -> None:
    fields = plan_fields(_items(10), "shop")
    assert {k: (s.field, s.kind) for k, s in fields.items()} == {
        "colour": ("colour", "str"),
        "on_sale": ("on_sale", "bool"),
        "price": ("price", "float"),
        "shop": ("shop", "str"),
        "stock": ("stock", "int"),
        "tags": ("tags", "str[]"),
        "颜色": ("attr_7", "str"),
    }
    hostile = 'x" or id != "'
    expression = filter_expression(fields, {"colour": [hostile, "红"], "mixed": 'a"b'})
    assert expression == ('(colour in ["x\\" or id != \\"", "红"]) and ($meta["mixed"] == "a\\"b")')
    assert filter_expression(fields, {"stock": "3"}) is None  # text never matches a number
    assert filter_expression(fields, {"tags": "新品", "stock": [3, 4.0]}) == (
        '(array_contains_any(tags, ["新品"])) and (stock in [3, 4])'
    )
    with pytest.raises(DataError, match="give a value or a list"):
        filter_expression(fields, {"colour": {"$ne": "红"}})
    with pytest.raises(DataError, match="partition key 'nope'"):
        plan_fields(_items(3), "nope")


def test_flat_equals_faiss_exact_search(
    server: LiteServer, data: tuple[Corpus, np.ndarray]
) -> None:
    corpus, queries = data
    location = server.location("flat")
    name = index.build_index(location, corpus, model=MODEL, progress=False)
    assert name == "flat_v0001"
    milvus = index.load(location)
    try:
        assert milvus.factory == "milvus:FLAT" and milvus.count == 4000
        assert milvus.model == MODEL and index.index_model(location) == MODEL
        got = milvus.search(queries, 10)
        scores, rows = exact_search(corpus.vectors, queries, 10)
        assert got.ids == [[corpus.ids[r] for r in row] for row in rows]
        np.testing.assert_allclose(got.scores, scores, atol=1e-5)
        assert milvus.versions()[0].chosen["R@10"] == 1.0
    finally:
        milvus.close()


@pytest.mark.parametrize("kind", ["IVF_SQ8", "HNSW"])
def test_ivf_sq8_and_hnsw_reach_the_target_recall(
    server: LiteServer, data: tuple[Corpus, np.ndarray], kind: str
) -> None:
    corpus, queries = data
    location = server.location(kind.lower())
    index.build_index(location, corpus, model=MODEL, index_type=kind, progress=False)
    milvus = index.load(location)
    try:
        manifest = milvus.manifest  # type: ignore[attr-defined]
        assert manifest.index_type == kind and manifest.chosen["R@10"] >= 0.95
        knob = "nprobe" if kind == "IVF_SQ8" else "ef"
        assert set(manifest.search) == {knob}
        # Held-out queries the build never saw, at the tuned setting: recall holds.
        _, truth = exact_search(corpus.vectors, queries, 10)
        found = milvus.search(queries, 10).ids
        nearest = [corpus.ids[row[0]] for row in truth]
        assert np.mean([n in f for n, f in zip(nearest, found, strict=True)]) >= 0.95
        report = milvus.evaluate(target=0.95)[0]
        assert report.chosen["R@10"] >= 0.95 and report.report["points"]
    finally:
        milvus.close()


def test_a_text_corpus_is_searched_by_image_and_follows_its_version(
    server: LiteServer, data: tuple[Corpus, np.ndarray]
) -> None:
    corpus, queries = data
    location = server.location("captions")
    base, _ = clip_like_split(300, 1, 64, seed=5)
    text_ids = [f"caption-{i}" for i in range(len(base))]
    texts = Corpus(base, text_ids, [{"title": f"描述 {i}", "lang": "zh"} for i in text_ids])
    small = Corpus(corpus.vectors[:500], corpus.ids[:500], (corpus.items or [])[:500])
    assert index.build_index(location, small, model=MODEL, texts=texts, progress=False) == (
        "captions_v0001"
    )
    served = index.load(location)
    try:
        assert served.texts is not None and served.texts.count == 300
        got = served.texts.search(queries[:20], 5, with_metadata=True)
        scores, rows = exact_search(base, queries[:20], 5)  # a FLAT index: exact
        assert got.ids == [[text_ids[r] for r in row] for row in rows]
        np.testing.assert_allclose(got.scores, scores, atol=1e-5)
        assert got.items is not None and got.items[0][0]["title"] == f"描述 {got.ids[0][0]}"
        # The text corpus is no version of its own, and a version without one has none.
        assert [v.name for v in served.versions()] == ["captions_v0001"]
        index.build_index(location, small, model=MODEL, progress=False)
        assert served.refresh() and served.texts is None
        index.switch(location, "v0001")
        assert served.refresh() and served.texts is not None
        assert served.texts.search(queries[:1], 3).ids[0] == got.ids[0][:3]
        index.switch(location, "v0002")
        index.drop_version(location, "v0001")  # its text collection goes with it
        names = set(Connection(MilvusLocation.parse(location)).client().list_collections())
        assert {n for n in names if n.startswith("captions_")} == {"captions_v0002"}
    finally:
        served.close()
    with pytest.raises(DataError, match="different dimensions"):
        index.build_index(location, small, texts=Corpus(base[:, :32], text_ids), progress=False)


def test_an_index_the_server_cannot_build_fails_clearly(
    server: LiteServer, data: tuple[Corpus, np.ndarray]
) -> None:
    corpus, _ = data
    location = server.location("pq")
    with pytest.raises(ConfigError, match="milvus-lite .* cannot build a IVF_PQ index"):
        index.build_index(location, corpus, index_type="IVF_PQ", progress=False)
    # Nothing half-built is left behind, and there is no index to serve.
    with pytest.raises(IndexVersionError, match="no such index"):
        index.load(location)


def test_filters_match_lists_numbers_and_hostile_values_literally(
    server: LiteServer, data: tuple[Corpus, np.ndarray]
) -> None:
    corpus, queries = data
    location = server.location("filters")
    corpus = Corpus(corpus.vectors, corpus.ids, [dict(i) for i in corpus.items or []])
    assert corpus.items is not None
    corpus.items[7]["colour"] = 'x" or id != "'
    index.build_index(location, corpus, model=MODEL, index_type="HNSW", progress=False)
    milvus = index.load(location)
    try:
        red = milvus.search(queries[:3], 20, filter={"colour": "红"}, with_metadata=True)
        assert red.items is not None and all(len(row) == 20 for row in red.items)
        assert {item["colour"] for row in red.items for item in row} == {"红"}
        assert {item["颜色"] for row in red.items for item in row} == {"红"}
        hostile = milvus.search(queries[:1], 10, filter={"colour": 'x" or id != "'})
        assert hostile.ids == [["sku-7"]]
        new = milvus.search(queries[:2], 50, filter={"tags": "新品", "stock": [3, 4]})
        expected = {
            corpus.ids[i]
            for i, item in enumerate(corpus.items)
            if "新品" in item["tags"] and item["stock"] in (3, 4)  # type: ignore[operator]
        }
        assert all(set(row) <= expected for row in new.ids)
        assert all(len(row) == min(50, len(expected)) for row in new.ids)
        # k results whenever k items match, even a set too small for the graph to find.
        rare = milvus.search(queries[:2], 10, filter={"price": 42.5, "shop": "shop-2"})
        matching = [
            i
            for i, item in enumerate(corpus.items)
            if item["price"] == 42.5 and item["shop"] == "shop-2"
        ]
        assert all(len(row) == min(10, len(matching)) for row in rare.ids)
        assert milvus.search(queries[:1], 10, filter={"stock": "3"}).ids == [[]]
        dynamic = milvus.search(queries[:1], 5, filter={"mixed": 3}, with_metadata=True)
        assert dynamic.items is not None and {i["mixed"] for i in dynamic.items[0]} == {3}
        assert "mixed" in milvus.keys and "颜色" in milvus.keys
    finally:
        milvus.close()


def test_upsert_and_delete_are_seen_by_the_next_search(
    server: LiteServer, data: tuple[Corpus, np.ndarray]
) -> None:
    corpus, queries = data
    location = server.location("changes")
    small = Corpus(corpus.vectors[:500], corpus.ids[:500], (corpus.items or [])[:500])
    index.build_index(location, small, model=MODEL, progress=False)
    writer, reader = index.load(location), index.load(location)
    try:
        before = reader.state
        target = queries[0] / np.linalg.norm(queries[0])
        new = Corpus(target[None, :], ["sku-new"], [{"title": "新款", "colour": "蓝", "vip": True}])
        assert writer.add(new, model=MODEL) == "changes_v0001"  # in place: no new version
        assert writer.search(target[None, :], 1).ids == [["sku-new"]]
        # An existing id is replaced (a new price), not refused.
        moved = Corpus(target[None, :], ["sku-3"], [{"title": "降价", "price": 1.5}])
        writer.add(moved, model=MODEL)
        hit = writer.search(target[None, :], 2, with_metadata=True)
        assert set(hit.ids[0]) == {"sku-new", "sku-3"} and writer.count == 501
        assert (
            hit.items is not None and {"title": "降价", "price": 1.5, "id": "sku-3"} in hit.items[0]
        )
        assert "vip" in writer.keys
        writer.remove(["sku-new", "sku-3"])
        assert "sku-new" not in writer.search(target[None, :], 5).ids[0]
        with pytest.raises(DataError, match="not in the index"):
            writer.remove(["sku-new"])
        writer.remove(["sku-new"], missing_ok=True)
        # Another replica follows the revision: its cache keys move on.
        assert reader.refresh() is False and reader.state != before and reader.count == 499
        other = ModelRef(model_id="o" * 64, bundle_id="c" * 64)
        with pytest.raises(ModelMismatchError):
            writer.add(new, model=other)
        with pytest.raises(DataError, match="holds float values"):
            writer.add(Corpus(target[None, :], ["x"], [{"price": "cheap"}]), model=MODEL)
    finally:
        writer.close()
        reader.close()


def test_versions_switch_under_load_and_old_ones_are_kept(
    server: LiteServer, data: tuple[Corpus, np.ndarray]
) -> None:
    corpus, queries = data
    location = server.location("alias")
    first = Corpus(corpus.vectors[:1000], corpus.ids[:1000], (corpus.items or [])[:1000])
    index.build_index(location, first, model=MODEL, progress=False)
    served = index.load(location)
    errors: list[BaseException] = []
    answers = [0, 0, 0]
    stop = threading.Event()

    def search(slot: int) -> None:
        client = index.load(location)
        try:
            while not stop.is_set():
                got = client.search(queries[slot : slot + 1], 5)
                assert len(got.ids[0]) == 5
                answers[slot] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=search, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    try:
        index.build_index(location, corpus, model=MODEL, progress=False)
        index.switch(location, "v0001")
        index.switch(location, "alias_v0002")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors and all(answers)
    assert served.refresh() is True and served.version == "alias_v0002"
    assert served.count == 4000
    listed = [(v.name, v.current) for v in served.versions()]
    assert listed == [("alias_v0001", False), ("alias_v0002", True)]
    with pytest.raises(IndexVersionError, match="current version"):
        index.drop_version(location, "alias_v0002")
    index.drop_version(location, "v0001")
    assert [v.name for v in served.versions()] == ["alias_v0002"]
    with pytest.raises(IndexVersionError, match="no version 'v0007'"):
        index.switch(location, "v0007")
    served.close()


def test_product_search_runs_on_milvus_as_on_faiss(
    server: LiteServer, data: tuple[Corpus, np.ndarray]
) -> None:
    """The pipeline of the service (index.hybrid) on Milvus: exclusions, the vocabulary
    and the calibration from the manifest, records and vectors by id, grouping, boosts;
    the same answers as a FAISS directory of the same items."""
    from index.build import build_version
    from index.hybrid import Boost, ProductQuery, plan_text, product_search

    corpus, queries = data
    small = Corpus(corpus.vectors[:600], corpus.ids[:600], (corpus.items or [])[:600])
    location = server.location("product")
    index.build_index(location, small, model=MODEL, index_type="FLAT", progress=False)
    milvus = index.load(location)
    faiss_dir = index.load(build_version(Path(server.data_dir).parent / "faiss", small,
                                         factory="Flat", progress=False))  # fmt: skip
    try:
        assert milvus.vocabulary["colour"] == tuple(sorted(COLOURS))
        assert milvus.vocabulary["shop"] == faiss_dir.vocabulary["shop"]
        calibration = milvus.calibration
        assert calibration is not None and calibration.method == "null"  # no title vectors
        plan = plan_text(milvus, "不要红的商品")
        assert plan.exclude == {"colour": ["红"]}
        query = ProductQuery(
            k=8,
            vector=queries[0],
            exclude=plan.exclude,
            group_by="shop",
            group_size=2,
            boosts=(Boost("stock", 0.5),),
            explain=True,
        )
        got, want = product_search(milvus, query), product_search(faiss_dir, query)
        assert [h.id for h in got.hits] == [h.id for h in want.hits]
        assert [h.metadata for h in got.hits] == [h.metadata for h in want.hits]
        assert all(h.metadata["colour"] != "红" for h in got.hits) and len(got.hits) == 4
        assert [h.group for h in got.hits] == [h.group for h in want.hits]
        ids = [small.ids[3], "missing", small.ids[7]]
        vectors = milvus.fetch_vectors(ids)
        np.testing.assert_allclose(vectors[[0, 2]], small.vectors[[3, 7]], atol=1e-6)
        assert np.isnan(vectors[1]).all()
        records = milvus.fetch_items(ids)
        assert records[1] is None and records[0] == {"id": small.ids[3], **small.items[3]}  # type: ignore[index]
    finally:
        milvus.close()
        faiss_dir.close()


def test_lexical_and_hybrid_search_on_milvus(
    server: LiteServer, data: tuple[Corpus, np.ndarray], tmp_path: Path
) -> None:
    """Milvus's BM25 function over the titles' words (cut as index.lexical cuts them, the
    codes whole): a code finds its items, filters and exclusions hold, word coverage, and
    the hybrid product search finds what a FAISS directory of the same items finds."""
    from index.build import build_version
    from index.hybrid import ProductQuery, product_search

    corpus, queries = data
    brands = ["安踏", "李宁", "回力"]
    items = []
    for i in range(300):
        base = dict((corpus.items or [])[i])
        brand = brands[(i // 3) % 3]  # every brand in every colour (colour = i % 3)
        base["title"] = f"{brand} {base['colour']}色的鞋子 SB-{1000 + i // 2}"
        base["brand"] = brand
        items.append(base)
    shop = Corpus(corpus.vectors[:300], corpus.ids[:300], items)
    location = server.location("words")
    index.build_index(location, shop, model=MODEL, lexicon=["回力"], progress=False)
    milvus = index.load(location)
    local = index.load(build_version(tmp_path / "faiss", shop, lexicon=["回力"], progress=False))
    try:
        assert milvus.has_lexical and milvus.manifest.lexicon == ("回力",)  # type: ignore[attr-defined]
        got = milvus.search_words("SB-1007", 5, with_metadata=True)
        assert sorted(got.ids[0]) == sorted([corpus.ids[14], corpus.ids[15]])
        assert got.items is not None and all("SB-1007" in i["title"] for i in got.items[0])
        assert float(got.scores[0, 0]) > 0 and np.isnan(got.scores[0, 2:]).all()
        assert sorted(milvus.search_words("sb1007", 5).ids[0]) == sorted(got.ids[0])
        # Filters and exclusions, as on the vector side.
        red = milvus.search_words("回力", 300, filter={"colour": "红"}, with_metadata=True)
        assert red.items is not None and red.items[0]
        assert {(i["brand"], i["colour"]) for i in red.items[0]} == {("回力", "红")}
        assert len(red.ids[0]) == len(
            [x for x in items if x["brand"] == "回力" and x["colour"] == "红"]
        )
        not_red = milvus.search_words("回力", 300, exclude={"colour": "红"}, with_metadata=True)
        assert not_red.items is not None and all(i["colour"] != "红" for i in not_red.items[0])
        assert milvus.search_words("火箭", 5).ids == [[]]
        coverage = milvus.word_coverage("回力 SB-1007", [corpus.ids[i] for i in (15, 14, 0)])
        assert list(coverage) == [1.0, 0.5, 0.0]  # 回力 SB-1007, 李宁 SB-1007, 安踏 SB-1000
        # The hybrid product search: the code's items first, on Milvus as on FAISS.
        query = ProductQuery(k=4, mode="hybrid", vector=queries[0], text="SB-1007")
        on_milvus, on_faiss = product_search(milvus, query), product_search(local, query)
        assert [h.id for h in on_milvus.hits] == [h.id for h in on_faiss.hits]
        code = {corpus.ids[14], corpus.ids[15]}
        assert code <= {h.id for h in on_milvus.hits}
        assert all(h.relevance == 1.0 for h in on_milvus.hits if h.id in code)  # every word
        # An upsert brings its words along: the next word search finds the new title.
        changed = dict(items[0], title="回力 新款跑鞋 ZX-9")
        milvus.add(Corpus(corpus.vectors[:1], corpus.ids[:1], [changed]), model=MODEL)
        assert milvus.search_words("ZX-9", 3).ids == [[corpus.ids[0]]]
    finally:
        milvus.close()
        local.close()


def test_a_partition_key_serves_many_shops(
    server: LiteServer, data: tuple[Corpus, np.ndarray]
) -> None:
    corpus, queries = data
    location = server.location("tenants")
    index.build_index(location, corpus, model=MODEL, partition_key="shop", progress=False)
    milvus = index.load(location)
    try:
        got = milvus.search(queries[:3], 10, filter={"shop": "shop-1"}, with_metadata=True)
        assert got.items is not None
        assert all(len(row) == 10 for row in got.items)
        assert {item["shop"] for row in got.items for item in row} == {"shop-1"}
        manifest = milvus.manifest  # type: ignore[attr-defined]
        assert manifest.partition_key == "shop"
    finally:
        milvus.close()
    with pytest.raises(DataError, match="no 'shop'"):
        items = [dict(i) for i in (corpus.items or [])[:10]]
        items[3].pop("shop")
        index.build_index(
            location, Corpus(corpus.vectors[:10], corpus.ids[:10], items), partition_key="shop"
        )


def test_an_unreachable_server_is_a_clear_error_and_recovers(
    tmp_path: Path, data: tuple[Corpus, np.ndarray]
) -> None:
    corpus, queries = data
    with LiteServer(tmp_path / "m") as own:
        location = own.location("shop")
        small = Corpus(corpus.vectors[:300], corpus.ids[:300], (corpus.items or [])[:300])
        index.build_index(location, small, model=MODEL, progress=False)
        milvus = index.load(location)
        own.stop()
        with pytest.raises(IndexUnavailableError, match="cannot be reached"):
            milvus.search(queries[:1], 3)
        with pytest.raises(IndexUnavailableError):
            milvus.ping()
        own.start()
        assert len(milvus.search(queries[:1], 3).ids[0]) == 3  # the same object, no restart
        milvus.close()
    with pytest.raises(IndexUnavailableError, match="cannot be reached"):
        index.load(location)


def test_the_cli_builds_evaluates_and_lists_on_milvus(
    server: LiteServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from cnclip.cli import main
    from export.bundle import export_bundle
    from model.modeling import build_model
    from tests.conftest import data_root, tiny_config

    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    export_bundle(build_model(tiny_config("vit")), bundle, verify_data=data_root())
    vectors, _ = clip_like_split(2000, 1, 32, seed=0)
    ids = [f"sku-{i}" for i in range(2000)]
    np.save(tmp_path / "x.npy", vectors)
    (tmp_path / "ids.txt").write_text("\n".join(ids), encoding="utf-8")
    with open(tmp_path / "items.jsonl", "w", encoding="utf-8") as out:
        for item_id, item in zip(ids, _items(2000), strict=True):
            out.write(json.dumps({"id": item_id, **item}, ensure_ascii=False) + "\n")
    location = server.location("cli")
    args = ["index", "build", "--bundle", str(bundle), "--embeddings", str(tmp_path / "x.npy")]
    args += ["--ids", str(tmp_path / "ids.txt"), "--items", str(tmp_path / "items.jsonl")]
    assert main([*args, "--out", location, "--milvus-index", "hnsw", "-q"]) == 0
    assert main(["index", "info", location]) == 0
    assert "* cli_v0001: 2,000 items" in capsys.readouterr().out
    assert main(["index", "eval", location]) == 0
    assert "R@10" in capsys.readouterr().err
    # Cross-precision, as on a directory: the item titles as queries, the same bundle as
    # its own reference; a FAISS flat index of the same vectors is the exact yardstick.
    faiss_root = tmp_path / "faiss"
    assert main([*args, "--out", str(faiss_root), "--factory", "IDMap2,Flat", "-q"]) == 0
    eval_args = ["--bundle", str(bundle), "--reference", str(bundle)]
    assert main(["index", "eval", location, *eval_args]) == 0
    on_milvus = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main(["index", "eval", str(faiss_root), *eval_args]) == 0
    on_faiss = json.loads((faiss_root / "v0001" / "cross-precision.json").read_text("utf-8"))
    assert on_milvus["query_source"] == "item titles" and on_milvus["queries"] >= 100
    assert on_milvus["index"] == location and on_milvus["version"] == "cli_v0001"
    assert on_milvus["precision"]["10-recall@10"] == 1.0  # one bundle: no precision cost
    assert on_faiss["ann"]["10-recall@10"] == 1.0  # flat: exact
    # HNSW tuned on catalog vectors loses recall on these text queries (another
    # distribution: the random tiny model's), as ANN indexes do.
    assert 0.3 <= on_milvus["ann"]["10-recall@10"] < 1.0
    assert on_milvus["total"] == on_milvus["ann"]
    assert main(["index", "remove", location, "--id", "sku-1"]) == 0
    assert index.load(location).count == 1999
    assert main([*args, "--out", location, "--milvus-index", "IVF_PQ", "-q"]) == 2
    assert "cannot build a IVF_PQ index" in capsys.readouterr().err
    assert main([*args, "--out", location, "--profile", "lean", "-q"]) == 2
    assert "for FAISS directories" in capsys.readouterr().err
    assert main(["index", "compact", location]) == 2
    assert "compacts deleted items away by itself" in capsys.readouterr().err
    assert index.check_bundle(location, bundle) is None
    # A FLAT version is exact on Milvus too.
    assert main([*args, "--out", location, "--milvus-index", "flat", "-q"]) == 0
    capsys.readouterr()
    assert main(["index", "eval", location, *eval_args]) == 0
    flat = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert flat["factory"] == "milvus:FLAT" and flat["ann"]["10-recall@10"] == 1.0
