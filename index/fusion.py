"""Hybrid ranking: one list from a vector ranking and a lexical one.

Two ways, as the hybrid engines do them (Milvus's RRFRanker and WeightedRanker, Elastic's
``rrf`` retriever): :func:`reciprocal_rank` needs no score scale (an item scores
``sum 1 / (k + rank)`` over the lists it is in, ``k`` = 60 as in Cormack et al., 2009),
and :func:`weighted` mixes scores put on one scale (each list's scores divided by its
best, so that a cosine of 0.3 and a BM25 of 12 become comparable): ``alpha`` x vector +
(1 - ``alpha``) x lexical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from runtime.errors import DataError

__all__ = ["RRF_K", "reciprocal_rank", "weighted"]

RRF_K: Final = 60


def reciprocal_rank(
    rankings: Sequence[Sequence[str]], *, k: int = RRF_K
) -> list[tuple[str, float]]:
    """Items of ``rankings`` (each best first) by their summed ``1 / (k + rank)``, rank
    from 1; ties keep the order of first appearance (the first list's first)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise DataError(f"the reciprocal-rank constant must be an integer >= 0, got {k!r}")
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda pair: (-pair[1], order[pair[0]]))


def weighted(
    vector: Sequence[tuple[str, float]],
    lexical: Sequence[tuple[str, float]],
    *,
    alpha: float = 0.5,
) -> list[tuple[str, float]]:
    """Items by ``alpha`` x their vector score + (1 - ``alpha``) x their lexical score,
    each list scaled by its best score (an item missing from a list scores 0 there, and
    every item of either list is in the result)."""
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must be in [0, 1], got {alpha!r}")
    mixed: dict[str, float] = {}
    for weight, pairs in ((alpha, vector), (1.0 - alpha, lexical)):
        best = max((score for _, score in pairs), default=0.0)
        for item, score in pairs:
            share = weight * max(score, 0.0) / best if best > 0.0 else 0.0
            mixed[item] = mixed.get(item, 0.0) + share
    order = {item: i for i, item in enumerate(mixed)}
    return sorted(mixed.items(), key=lambda pair: (-pair[1], order[pair[0]]))
