"""Hybrid ranking: reciprocal rank fusion and weighted fusion, against their formulas."""

from __future__ import annotations

import pytest

from index.fusion import RRF_K, reciprocal_rank, weighted
from runtime.errors import DataError


def test_reciprocal_rank_sums_one_over_k_plus_rank() -> None:
    vector = ["a", "b", "c"]
    lexical = ["c", "d"]
    fused = dict(reciprocal_rank([vector, lexical]))
    assert fused == pytest.approx(
        {
            "a": 1 / (RRF_K + 1),
            "b": 1 / (RRF_K + 2),
            "c": 1 / (RRF_K + 3) + 1 / (RRF_K + 1),
            "d": 1 / (RRF_K + 2),
        }
    )
    assert [item for item, _ in reciprocal_rank([vector, lexical])] == ["c", "a", "b", "d"]
    # b and d tie: the order of first appearance decides
    assert [item for item, _ in reciprocal_rank([["x"], ["y"]])] == ["x", "y"]
    assert reciprocal_rank([[], []]) == []
    with pytest.raises(DataError, match="constant"):
        reciprocal_rank([vector], k=-1)


def test_weighted_mixes_scores_on_one_scale() -> None:
    vector = [("a", 0.40), ("b", 0.20)]
    lexical = [("b", 12.0), ("c", 6.0)]
    fused = dict(weighted(vector, lexical, alpha=0.5))
    assert fused == pytest.approx({"a": 0.5, "b": 0.25 + 0.5, "c": 0.25})
    assert [item for item, _ in weighted(vector, lexical, alpha=1.0)] == ["a", "b", "c"]
    assert dict(weighted(vector, lexical, alpha=0.0))["a"] == 0.0  # still listed
    assert dict(weighted(vector, [], alpha=0.3)) == pytest.approx({"a": 0.3, "b": 0.15})
    with pytest.raises(DataError, match="alpha"):
        weighted(vector, lexical, alpha=1.5)
