"""Product search on a real FAISS version (index.hybrid): modes, fusion, calibrated
relevance, negation, grouping and boosts, on a catalog whose vectors are made of known
concepts (a colour plus a kind, with noise), so that the right answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import index
from index.build import Corpus, build_version
from index.hybrid import Boost, ProductQuery, plan_text, product_search
from index.local import DirectoryIndex
from runtime.errors import DataError

COLOURS = ["红色", "蓝色", "绿色", "黑色", "白色", "黄色"]
KINDS = ["杯子", "帽子", "鞋子", "包"]
BRANDS = ["安踏", "李宁"]
DIM = 64
PICTURES = 3


def _concepts() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    names = [*COLOURS, *KINDS, "自行车"]
    basis = np.linalg.qr(rng.normal(size=(DIM, len(names))))[0].T
    return {name: basis[i] for i, name in enumerate(names)}


CONCEPTS = _concepts()


def embed(*words: str, noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    vector = sum(CONCEPTS[w] for w in words) + (
        noise * (rng or np.random.default_rng(0)).normal(size=DIM) / np.sqrt(DIM)
    )
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 products (colour x kind x brand), 3 pictures each, with titles, codes, sales."""
    rng = np.random.default_rng(1)
    vectors, titles, ids, items = [], [], [], []
    number = 0
    for colour in COLOURS:
        for kind in KINDS:
            for brand in BRANDS:
                number += 1
                code = f"SB-{1000 + number}"
                for picture in range(PICTURES):
                    ids.append(f"p{number}-{picture}")
                    vectors.append(embed(colour, kind, noise=0.8, rng=rng))
                    titles.append(embed(colour, kind, noise=0.8, rng=rng))
                    items.append(
                        {
                            "title": f"{brand} {colour}的{kind} {code}",
                            "colour": colour,
                            "kind": kind,
                            "brand": brand,
                            "code": code,
                            "spu": f"spu-{number}",
                            "sales": int(rng.integers(0, 5000)),
                        }
                    )
    root = tmp_path_factory.mktemp("hybrid") / "index"
    corpus = Corpus(np.stack(vectors), ids, items, np.stack(titles))
    build_version(root, corpus, factory="Flat", progress=False)
    return root


@pytest.fixture
def shop_index(shop: Path) -> DirectoryIndex:
    loaded = index.load(shop)
    assert isinstance(loaded, DirectoryIndex)
    return loaded


def _search(shop_index: DirectoryIndex, **options: object) -> list[dict[str, object]]:
    answer = product_search(shop_index, ProductQuery(**options))  # type: ignore[arg-type]
    return [{"id": h.id, "relevance": h.relevance, **h.metadata} for h in answer.hits]


def test_the_build_fits_and_records_the_relevance_calibration(shop_index: DirectoryIndex) -> None:
    calibration = shop_index.calibration
    assert calibration is not None and calibration.method == "platt"
    # Two brands' products of one colour and kind look alike but have other titles: the
    # negatives are noisy here (the demo's shop meets 0.05: tests/demo, bench/).
    assert calibration.ece is not None and calibration.ece <= 0.1
    relevance = calibration.relevance([0.0, 0.3, 0.6, 0.9])
    assert np.all(np.diff(relevance) > 0)  # more similar, more likely relevant
    assert relevance[0] < 0.2 and relevance[-1] > 0.8


def test_vector_mode_ranks_by_cosine_and_gives_relevance(shop_index: DirectoryIndex) -> None:
    hits = _search(shop_index, k=6, mode="vector", vector=embed("红色", "杯子"))
    assert all(h["colour"] == "红色" and h["kind"] == "杯子" for h in hits)
    assert all(float(h["relevance"]) > 0.8 for h in hits)  # type: ignore[arg-type]
    # A query for what the catalog does not hold: nothing above the threshold.
    answer = product_search(
        shop_index, ProductQuery(k=10, vector=embed("自行车"), min_relevance=0.5)
    )
    assert answer.hits == [] and answer.candidates > 0 and (answer.best_relevance or 0) < 0.5


def test_lexical_and_hybrid_find_a_model_code_the_vectors_cannot_read(
    shop_index: DirectoryIndex,
) -> None:
    blind = embed("自行车", noise=3.0)  # CLIP cannot read SB-1007: its embedding is noise
    lexical = _search(shop_index, k=3, mode="lexical", text="SB-1007")
    assert {h["code"] for h in lexical} == {"SB-1007"} and len(lexical) == 3
    assert all(h["relevance"] == 1.0 for h in lexical)  # every word of the query is there
    hybrid = _search(shop_index, k=3, mode="hybrid", text="SB-1007", vector=blind)
    assert {h["code"] for h in hybrid} == {"SB-1007"}
    vector = _search(shop_index, k=3, mode="vector", vector=blind)
    assert {h["code"] for h in vector} != {"SB-1007"}
    weighted = _search(
        shop_index, k=3, mode="hybrid", text="SB-1007", vector=blind, fusion="weighted", alpha=0.2
    )
    assert {h["code"] for h in weighted} == {"SB-1007"}


def test_negation_becomes_an_exclusion_and_attribute_words_a_filter(
    shop_index: DirectoryIndex,
) -> None:
    plan = plan_text(shop_index, "不要红色的杯子")
    assert plan.interpretation is not None
    assert plan.interpretation.to_dict()["must_not"] == {"colour": ["红色"]}
    assert plan.filter == {"kind": "杯子"} and plan.exclude == {"colour": ["红色"]}
    assert plan.text == "杯子"
    hits = _search(
        shop_index,
        k=10,
        mode="hybrid",
        text=plan.text,
        vector=embed("杯子"),
        filter=plan.filter,
        exclude=plan.exclude,
    )
    assert len(hits) == 10 and all(h["kind"] == "杯子" and h["colour"] != "红色" for h in hits)
    # A caller's own filter on a key wins over the query's word for it.
    assert plan_text(shop_index, "红色杯子", filter={"colour": "蓝色"}).filter == {
        "colour": "蓝色",
        "kind": "杯子",
    }
    assert plan_text(shop_index, "不要红色的杯子", understand=False).exclude is None


def test_a_negated_phrase_no_attribute_holds_is_a_penalty(shop_index: DirectoryIndex) -> None:
    plain = _search(shop_index, k=12, mode="vector", vector=embed("杯子"))
    penalised = _search(
        shop_index, k=12, mode="vector", vector=embed("杯子"), negated=embed("红色")[None, :]
    )
    red = sum(h["colour"] == "红色" for h in plain)
    assert red > 0 and sum(h["colour"] == "红色" for h in penalised) < red
    assert all(h["kind"] == "杯子" for h in penalised)


def test_grouping_collapses_the_pictures_of_one_product(shop_index: DirectoryIndex) -> None:
    answer = product_search(
        shop_index, ProductQuery(k=5, vector=embed("蓝色", "帽子"), group_by="spu", group_size=2)
    )
    spus = [h.metadata["spu"] for h in answer.hits]
    assert len(answer.hits) == 5 and len(set(spus)) == 5
    for hit in answer.hits:
        assert hit.group is not None and 1 <= len(hit.group["items"]) <= 2
        assert hit.group["items"][0]["id"] == hit.id


def test_boosts_reorder_by_a_numeric_field_and_explain_says_how(
    shop_index: DirectoryIndex,
) -> None:
    query = {"k": 6, "vector": embed("黑色", "鞋子"), "filter": {"colour": "黑色", "kind": "鞋子"}}
    plain = product_search(shop_index, ProductQuery(**query))  # type: ignore[arg-type]
    boosted = product_search(
        shop_index,
        ProductQuery(**query, boosts=(Boost("sales", 1.0, "log1p"),), explain=True),  # type: ignore[arg-type]
    )
    sales = [h.metadata["sales"] for h in boosted.hits]
    assert [h.id for h in boosted.hits] != [h.id for h in plain.hits]
    assert np.corrcoef(sales, range(len(sales)))[0, 1] < 0  # higher sales come first
    explained = boosted.hits[0].explain
    assert explained["boost"]["factor"] == pytest.approx(
        1.0 + np.log1p(boosted.hits[0].metadata["sales"]), abs=1e-5
    )
    assert {"cosine", "relevance", "score", "vector"} <= set(explained)


def test_bad_requests_are_clear_errors(shop_index: DirectoryIndex) -> None:
    vector = embed("红色")
    cases = [
        ({"mode": "semantic"}, "unknown mode"),
        ({"group_by": "colour_name"}, "unknown group_by field"),
        ({"boosts": (Boost("brand", 0.1),)}, "not a number"),
        ({"boosts": (Boost("stars", 0.1),)}, "unknown boost field"),
        ({"min_relevance": 1.5}, r"min_relevance must be in \[0, 1\]"),
        ({"mode": "lexical"}, "needs a query text"),
        ({"alpha": -0.1}, "alpha"),
    ]
    for options, message in cases:
        with pytest.raises(DataError, match=message):
            product_search(shop_index, ProductQuery(vector=vector, **options))  # type: ignore[arg-type]


def test_exclusions_hold_on_both_sides_with_k_results(shop_index: DirectoryIndex) -> None:
    exclude = {"colour": ["红色", "蓝色"], "brand": "安踏"}
    vector_side = shop_index.search(embed("红色", "杯子")[None, :], 20, exclude=exclude)
    words = shop_index.search_words("杯子", 20, exclude=exclude, with_metadata=True)
    assert len(vector_side.ids[0]) == 20
    assert words.items is not None and len(words.items[0]) == 12  # 4 colours x 3 pictures
    for item in words.items[0]:
        assert item["colour"] not in ("红色", "蓝色") and item["brand"] != "安踏"
    assert shop_index.vocabulary["colour"] == tuple(sorted(COLOURS))
    assert "code" in shop_index.vocabulary and "sales" not in shop_index.vocabulary


def test_the_calibration_needs_only_a_sample_of_titles_embedded() -> None:
    """Items whose title was not embedded (zero rows: title_vectors embeds a sample) are
    no positives, but their pictures stay negatives."""
    from index.build import calibrate

    rng = np.random.default_rng(3)
    pairs = [(c, k) for c in COLOURS for k in KINDS] * 6
    vectors = np.stack([embed(c, k, noise=0.8, rng=rng) for c, k in pairs])
    titles = np.stack([embed(c, k, noise=0.8, rng=rng) for c, k in pairs])
    titles[::2] = 0.0  # half the titles were not embedded
    items = [{"title": f"{c}的{k}"} for c, k in pairs]
    calibration = calibrate(
        Corpus(vectors, [str(n) for n in range(len(pairs))], items, titles), vectors
    )
    assert calibration.method == "platt" and calibration.pairs > 0
    assert calibration.ece is not None and calibration.ece <= 0.1
    few = titles.copy()
    few[10:] = 0.0
    fallback = calibrate(Corpus(vectors, [str(n) for n in range(len(pairs))], items, few), vectors)
    assert fallback.method == "null" and "embedded titles" in " ".join(fallback.notes)
