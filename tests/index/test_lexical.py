"""Lexical retrieval: jieba words with codes kept whole, and BM25 equal to its formula."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from index.lexical import LEXICAL_DIR, LexicalIndex, Segmenter, read_lexicon
from index.versions import IndexVersionError
from runtime.errors import DataError

TITLES = [
    "红色的杯子",
    "红色的红色杯子 大号",
    "蓝色的T恤 XL",
    "安踏SB-1024篮球鞋",
    "安踏SB-2048跑鞋",
    "小米 Redmi K70 手机",
    "",
    "绿色的包",
]


@pytest.fixture(scope="module")
def lexical() -> LexicalIndex:
    return LexicalIndex.build(TITLES, lexicon=["安踏"])


def test_codes_stay_whole_in_either_spelling_and_width() -> None:
    words = Segmenter()
    assert words("安踏SB-1024篮球鞋")[1:3] == ["sb-1024", "sb1024"]
    assert words("ＳＢ－１０２４") == ["sb-1024", "sb1024"]  # full-width, as typed on phones
    assert words("小米 Redmi K70 手机") == ["小米", "redmi", "k70", "手机"]
    assert words("GT-2.0跑鞋") == ["gt-2.0", "gt20", "跑鞋"]
    assert "t恤" in words("蓝色的t恤") and "t恤" in words("蓝色的T恤")  # one word, either case
    assert {"篮球", "篮球鞋"} <= set(words("篮球鞋"))  # search mode: the words inside too
    assert words("，。！ ") == []


def test_a_lexicon_keeps_a_brand_one_word(tmp_path: Path) -> None:
    brand = "蓝鲸鸟"
    assert brand not in Segmenter()(f"{brand}双肩包")
    lexicon = tmp_path / "brands.txt"
    lexicon.write_text(f"# 品牌\n{brand} 10 nz\n\n", encoding="utf-8")
    assert read_lexicon(lexicon) == [brand]
    assert brand in Segmenter(read_lexicon(lexicon))(f"{brand}双肩包")
    assert brand not in Segmenter()(f"{brand}双肩包")  # each segmenter its own dictionary
    with pytest.raises(DataError, match="cannot read the lexicon"):
        read_lexicon(tmp_path / "missing.txt")


def test_scores_are_bm25_as_lucene_defines_it(lexical: LexicalIndex) -> None:
    docs = [lexical.segmenter(t) for t in TITLES]
    n, avgdl, k1, b = len(docs), sum(map(len, docs)) / len(docs), 1.2, 0.75

    def bm25(query: str) -> np.ndarray:
        out = np.zeros(n)
        for word in set(lexical.segmenter(query)):
            df = sum(word in doc for doc in docs)
            if df:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                for i, doc in enumerate(docs):
                    tf = doc.count(word)
                    out[i] += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        return out

    for query in ["红色杯子", "安踏", "sb1024", "红色 红色 杯子", "蓝色的T恤"]:
        np.testing.assert_allclose(lexical.scores(query), bm25(query), rtol=1e-5, atol=1e-7)


def test_search_finds_codes_and_brands_and_nothing_for_unknown_words(
    lexical: LexicalIndex,
) -> None:
    scores, rows = lexical.search("SB1024", 5)
    assert rows.tolist() == [3] and scores[0] > 0
    _, rows = lexical.search("安踏 跑鞋", 5)
    assert rows.tolist()[:2] == [4, 3]
    scores, rows = lexical.search("火箭发动机", 5)
    assert len(rows) == len(scores) == 0
    _, rows = lexical.search("红色杯子", 1)
    assert rows.tolist() == [0]
    allowed = np.ones(len(TITLES), dtype=bool)
    allowed[0] = False
    _, rows = lexical.search("红色杯子", 5, allowed)
    assert rows.tolist() == [1]
    with pytest.raises(DataError, match="k must be positive"):
        lexical.search("杯子", 0)


def test_a_saved_index_loads_memory_mapped_and_scores_the_same(
    lexical: LexicalIndex, tmp_path: Path
) -> None:
    assert LexicalIndex.load(tmp_path) is None  # a version built without one
    lexical.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    assert loaded is not None and loaded.count == len(TITLES)
    assert loaded.segmenter.lexicon == ("安踏",)
    for query in ["安踏SB-2048", "红色杯子", "手机"]:
        np.testing.assert_array_equal(loaded.scores(query), lexical.scores(query))
    manifest = tmp_path / LEXICAL_DIR / "lexical.json"
    newer = {**json.loads(manifest.read_text("utf-8")), "format_version": 99}
    manifest.write_text(json.dumps(newer), encoding="utf-8")
    with pytest.raises(IndexVersionError, match="newer than this cnclip reads"):
        LexicalIndex.load(tmp_path)
    manifest.write_text("{", encoding="utf-8")
    with pytest.raises(IndexVersionError, match="unreadable lexical index"):
        LexicalIndex.load(tmp_path)


# --------------------------------------------------------------------------- in index versions


def unit_rows(n: int, seed: int, dim: int = 16) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_versions_carry_their_lexical_index_through_add_remove_and_compact(
    tmp_path: Path,
) -> None:
    from index.build import Corpus, build_version
    from index.lexical import version_lexicon
    from index.search import load
    from index.update import add_items, compact, remove_items

    ids = [f"sku-{i}" for i in range(len(TITLES))]
    items = [{"title": t, "brand": "安踏"} if t else {} for t in TITLES]
    root = tmp_path / "shop"
    first = build_version(
        root, Corpus(unit_rows(len(ids), 0), ids, items), lexicon=["蓝鲸鸟"], progress=False
    )
    catalog = load(first)
    assert catalog.lexical is not None and catalog.lexical.count == len(TITLES)
    _, rows = catalog.lexical.search("SB-1024", 3)
    assert [catalog.store.id_of(int(r)) for r in rows] == ["sku-3"]
    assert version_lexicon(first) == ("蓝鲸鸟",)

    added = add_items(
        root,
        Corpus(unit_rows(1, 1), ["sku-new"], [{"title": "蓝鲸鸟SB-1024双肩包"}]),
        progress=False,
    )
    catalog = load(added)
    assert catalog.lexical is not None and catalog.lexical.count == len(TITLES) + 1
    _, rows = catalog.lexical.search("蓝鲸鸟", 3)
    assert [catalog.store.id_of(int(r)) for r in rows] == ["sku-new"]
    assert version_lexicon(added) == ("蓝鲸鸟",)

    removed = remove_items(root, ["sku-3"])
    assert (removed / LEXICAL_DIR / "lexical.json").samefile(added / LEXICAL_DIR / "lexical.json")

    compacted = compact(root, progress=False)
    catalog = load(compacted)
    assert catalog.lexical is not None and catalog.lexical.count == len(TITLES)
    _, rows = catalog.lexical.search("SB-1024", 3)
    assert [catalog.store.id_of(int(r)) for r in rows] == ["sku-new"]  # sku-3 is gone
    assert version_lexicon(compacted) == ("蓝鲸鸟",)


def test_a_version_without_titles_has_no_lexical_index(tmp_path: Path) -> None:
    from index.build import Corpus, build_version
    from index.search import load

    version = build_version(
        tmp_path / "plain", Corpus(unit_rows(4, 0), list("abcd")), progress=False
    )
    assert load(version).lexical is None
    assert not (version / LEXICAL_DIR).exists()


def test_search_words_on_a_version_filters_and_skips_deleted_items(tmp_path: Path) -> None:
    from index import load
    from index.build import Corpus, build_version

    ids = [f"sku-{i}" for i in range(len(TITLES))]
    shops = ["a", "a", "a", "a", "b", "b", "b", "b"]
    items = [{"title": t, "shop": s} for t, s in zip(TITLES, shops, strict=True)]
    root = tmp_path / "shop"
    build_version(root, Corpus(unit_rows(len(ids), 0), ids, items), progress=False)
    served = load(root)
    assert served.has_lexical
    result = served.search_words("安踏", 5, with_metadata=True)
    assert result.ids == [["sku-4", "sku-3"]]
    assert result.items is not None and result.items[0][0]["title"] == "安踏SB-2048跑鞋"
    assert result.scores.shape == (1, 5) and np.isnan(result.scores[0, 2:]).all()
    assert served.search_words("安踏", 5, filter={"shop": "a"}).ids == [["sku-3"]]
    served.remove(["sku-3"])
    served.refresh()
    assert served.search_words("安踏", 5).ids == [["sku-4"]]
    assert served.search_words("火箭", 5).ids == [[]]
    with pytest.raises(DataError, match="k must be an integer"):
        served.search_words("安踏", 0)
    plain = tmp_path / "plain"
    build_version(plain, Corpus(unit_rows(4, 0), list("abcd")), progress=False)
    assert not load(plain).has_lexical
    with pytest.raises(DataError, match="no lexical index"):
        load(plain).search_words("安踏", 5)


def test_word_coverage_weighs_the_query_words_by_rarity(lexical: LexicalIndex) -> None:
    full, partial, none = lexical.coverage("安踏 SB-1024", [3, 4, 0])
    assert full == pytest.approx(1.0) and none == 0.0
    assert 0.0 < partial < 0.5  # 安踏 is in two titles, the code in one (two spellings)
    # A word no title has weighs as much as the rarest possible (more than a code in one
    # title): under half of the query is covered. A code counts once, in either spelling.
    assert 0.3 < lexical.coverage("SB-1024 火箭", [3])[0] < 0.5
    assert lexical.coverage("sb1024", [3])[0] == pytest.approx(1.0)
    assert lexical.coverage("", [3])[0] == 0.0


def test_the_cli_builds_with_a_lexicon(tmp_path: Path, bundle_dir: Path) -> None:
    from cnclip.cli import main
    from index import load
    from index.lexical import version_lexicon
    from runtime.bundle_manifest import BundleManifest

    ids = [f"sku-{i}" for i in range(len(TITLES))]
    dim = BundleManifest.read(bundle_dir).embed_dim
    np.save(tmp_path / "x.npy", unit_rows(len(ids), 0, dim))
    (tmp_path / "ids.txt").write_text("\n".join(ids), encoding="utf-8")
    items = tmp_path / "items.jsonl"
    lines = [
        json.dumps({"id": i, "title": t}, ensure_ascii=False)
        for i, t in zip(ids, TITLES, strict=True)
    ]
    items.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "brands.txt").write_text("蓝鲸鸟\n", encoding="utf-8")
    args = ["index", "build", "--bundle", str(bundle_dir), "--embeddings", str(tmp_path / "x.npy")]
    args += ["--ids", str(tmp_path / "ids.txt"), "--items", str(items), "-q"]
    root = tmp_path / "index"
    assert main([*args, "--lexicon", str(tmp_path / "brands.txt"), "--out", str(root)]) == 0
    assert version_lexicon(root / "v0001") == ("蓝鲸鸟",)
    assert load(root).search_words("SB-1024", 3).ids == [["sku-3"]]


def test_titles_are_embedded_for_a_sample_only(bundle_dir: Path) -> None:
    from index.build import title_vectors
    from runtime.bundle import load_bundle

    items = [{"title": f"红色的杯子 SB-{i}"} for i in range(30)] + [{"colour": "红色"}]
    vectors = title_vectors(load_bundle(bundle_dir), items, progress=False, limit=25)
    assert vectors is not None and vectors.shape[0] == 31
    assert int(np.any(vectors != 0, axis=1).sum()) == 25  # the sample; no title: zero
    assert not np.any(vectors[30]) and title_vectors(load_bundle(bundle_dir), [{}]) is None
