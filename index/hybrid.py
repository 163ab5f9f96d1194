"""Product search over an index backend: modes, fusion, relevance, negation, grouping,
boosts. One pipeline for the service, ``cnclip eval search`` and Python users.

A :class:`ProductQuery` holds what the caller already computed (the query's embedding,
the text to match by words, the embeddings of negated phrases) and what it asks for; the
pipeline (:func:`product_search`) does the rest, in this order:

1. **candidates**: the vector side (``index.search`` with the query embedding) and the
   lexical side (``index.search_words`` with the text: BM25 over titles), each with the
   filter and the exclusion, over-fetched when later steps drop or merge results;
2. **negated phrases** (``不要带图案的``, no attribute holds them): the vector side's
   score becomes ``cosine - PENALTY x max(0, cosine with the phrase)``, so items that look
   like the phrase sink;
3. **fusion** (``hybrid``): reciprocal rank (``k`` = 60) or weighted (``alpha``) of the
   two sides (:mod:`index.fusion`);
4. **relevance** of every candidate in [0, 1]: the version's calibration of its cosine
   with the query (:mod:`index.relevance`), and in the lexical and hybrid modes the
   larger of that and the share of the query's words its title holds; candidates below
   ``min_relevance`` are dropped;
5. **boosts** on numeric metadata, applied to the fused candidates:
   ``score x (1 + sum weight x transform(value))`` (multiplicative, so a boost means the
   same whatever the mode's score scale; a missing value counts 0);
6. **grouping** (``group_by``): the best item of each group stands for it, with up to
   ``group_size`` of its items listed; items without the field are groups of their own;
7. the best ``k``; ``explain`` returns each step's numbers per result.

Each step is a function of its own; the scores it reads and writes are the fields of
``_Candidate``. The items' records (metadata) are read once, after the searches: for
every candidate when grouping or boosts need them, else for the results alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from index.backend import MAX_K, IndexBackend
from index.fusion import RRF_K, reciprocal_rank, weighted
from index.understand import Interpretation, interpret
from runtime.errors import DataError

__all__ = [
    "DEFAULT_MIN_RELEVANCE",
    "MODES",
    "Answer",
    "Boost",
    "Hit",
    "ProductQuery",
    "TextPlan",
    "plan_text",
    "product_search",
]

MODES: Final = ("vector", "lexical", "hybrid")
FUSIONS: Final = ("rrf", "weighted")
TRANSFORMS: Final = ("none", "log1p", "sqrt")
PENALTY: Final = 1.0
OVERFETCH: Final = 4  # candidates a side per result asked, when later steps drop or merge
MIN_CANDIDATES: Final = 50
#: The service's default relevance threshold for text queries (a fitted calibration's
#: 0.5: a relevant and an irrelevant item equally likely).
DEFAULT_MIN_RELEVANCE: Final = 0.5


@dataclass(frozen=True)
class Boost:
    """``score x (1 + weight x transform(item[field]))`` (see the module documentation)."""

    field: str
    weight: float
    transform: str = "none"

    def value(self, metadata: Mapping[str, Any]) -> float:
        raw = metadata.get(self.field)
        if raw is None:
            return 0.0
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise DataError(
                f"boost field {self.field!r} holds {raw!r}, not a number; boost numeric fields only"
            )
        if self.transform == "log1p":
            return math.log1p(max(float(raw), 0.0))
        if self.transform == "sqrt":
            return math.sqrt(max(float(raw), 0.0))
        return float(raw)


@dataclass(frozen=True)
class ProductQuery:
    """A search, as :func:`product_search` runs it (module documentation).

    ``vector``: the query's unit embedding ``[d]`` (text, image, or their weighted sum),
    or None for a lexical search; ``text``: what the lexical side matches (and what the
    words' coverage is measured against); ``negated``: unit embeddings ``[m, d]`` of
    negated phrases.
    """

    k: int = 10
    mode: str = "vector"
    vector: npt.NDArray[np.float32] | None = None
    text: str | None = None
    filter: Mapping[str, Any] | None = None
    exclude: Mapping[str, Any] | None = None
    negated: npt.NDArray[np.float32] | None = None
    fusion: str = "rrf"
    alpha: float = 0.5
    min_relevance: float = 0.0
    group_by: str | None = None
    group_size: int = 1
    boosts: Sequence[Boost] = ()
    explain: bool = False
    nprobe: int | None = None

    def check(self, keys: frozenset[str]) -> None:
        """DataError for what the index or the request cannot do."""
        if self.mode not in MODES:
            raise DataError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.fusion not in FUSIONS:
            raise DataError(f"unknown fusion {self.fusion!r}; choose rrf or weighted")
        if not 0.0 <= self.alpha <= 1.0:
            raise DataError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.min_relevance <= 1.0:
            raise DataError(f"min_relevance must be in [0, 1], got {self.min_relevance}")
        if not 1 <= self.k <= MAX_K:
            raise DataError(f"k must be between 1 and {MAX_K}, not {self.k}")
        if self.group_size < 1:
            raise DataError(f"group_size must be at least 1, not {self.group_size}")
        if self.mode in ("vector", "hybrid") and self.vector is None:
            raise DataError(f"the {self.mode} mode needs a query embedding")
        if self.mode in ("lexical", "hybrid") and not (self.text or "").strip():
            raise DataError(f"the {self.mode} mode needs a query text")
        known = ", ".join(sorted(keys)[:20]) or "none"
        if self.group_by is not None and self.group_by not in keys:
            raise DataError(f"unknown group_by field {self.group_by!r}; this index has: {known}")
        for boost in self.boosts:
            if boost.field not in keys:
                raise DataError(f"unknown boost field {boost.field!r}; this index has: {known}")
            if boost.transform not in TRANSFORMS:
                raise DataError(
                    f"unknown boost transform {boost.transform!r}; choose one of "
                    f"{', '.join(TRANSFORMS)}"
                )
            if not math.isfinite(boost.weight):
                raise DataError(f"boost weight for {boost.field!r} must be a finite number")


@dataclass
class Hit:
    """One result: ``score`` orders results (the mode's score after penalties and
    boosts), ``cosine`` the query's cosine with the item (None in a lexical search of an
    index whose vectors were not read), ``relevance`` in [0, 1]."""

    id: str
    score: float
    relevance: float
    metadata: dict[str, Any]
    cosine: float | None = None
    group: dict[str, Any] | None = None
    explain: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answer:
    """The hits, best first, and what happened to the others."""

    hits: list[Hit]
    candidates: int
    below_relevance: int
    best_relevance: float | None
    mode: str


@dataclass
class _Candidate:
    id: str
    metadata: dict[str, Any] | None = None  # read only for the candidates that need it
    cosine: float | None = None
    vector_rank: int | None = None
    vector_score: float | None = None
    penalty: float = 0.0
    bm25: float | None = None
    lexical_rank: int | None = None
    coverage: float = 0.0
    fused: float = 0.0
    relevance: float = 0.0
    boost: float = 0.0


def _fetch_size(query: ProductQuery) -> int:
    plain = (
        query.mode == "vector"
        and query.group_by is None
        and not query.boosts
        and query.negated is None
        and query.min_relevance == 0.0
    )
    if plain:
        return query.k
    return min(MAX_K, max(query.k * OVERFETCH * max(query.group_size, 1), MIN_CANDIDATES))


def _gather(index: IndexBackend, query: ProductQuery) -> dict[str, _Candidate]:
    """Step 1: both sides' candidates, in one table."""
    size = _fetch_size(query)
    found: dict[str, _Candidate] = {}
    common: dict[str, Any] = {"filter": query.filter, "exclude": query.exclude}
    if query.mode in ("vector", "hybrid") and query.vector is not None:
        result = index.search(query.vector[None, :], size, nprobe=query.nprobe, **common)
        for rank, (score, item) in enumerate(
            zip(result.scores[0], result.ids[0], strict=False), start=1
        ):
            candidate = found.setdefault(item, _Candidate(item))
            candidate.cosine = float(score)
            candidate.vector_rank = rank
            candidate.vector_score = float(score)
    if query.mode in ("lexical", "hybrid") and (query.text or "").strip():
        result = index.search_words(str(query.text), size, **common)
        for rank, (score, item) in enumerate(
            zip(result.scores[0], result.ids[0], strict=False), start=1
        ):
            candidate = found.setdefault(item, _Candidate(item))
            candidate.bm25 = float(score)
            candidate.lexical_rank = rank
    return found


def _read_metadata(index: IndexBackend, candidates: Sequence[_Candidate]) -> None:
    """The records of the candidates that have none yet (one call for all)."""
    missing = [c for c in candidates if c.metadata is None]
    if not missing:
        return
    records = index.fetch_items([c.id for c in missing])
    for candidate, record in zip(missing, records, strict=True):
        if record is not None:
            candidate.metadata = {k: v for k, v in record.items() if k != "id"}


def _vectors_for(
    index: IndexBackend, query: ProductQuery, found: dict[str, _Candidate]
) -> dict[str, npt.NDArray[np.float32]]:
    """The stored vectors the later steps need: every candidate's when phrases are
    negated, else those of lexical-only candidates (for their cosine)."""
    if query.vector is None:
        return {}
    need = [c.id for c in found.values() if query.negated is not None or c.cosine is None]
    if not need:
        return {}
    vectors = index.fetch_vectors(need)
    return {i: v for i, v in zip(need, vectors, strict=True) if np.isfinite(v).all()}


def _penalise(
    query: ProductQuery, found: dict[str, _Candidate], vectors: Mapping[str, Any]
) -> None:
    """Step 2: cosines for lexical-only candidates, and the negated phrases' penalty."""
    if query.vector is None:
        return
    for candidate in found.values():
        vector = vectors.get(candidate.id)
        if vector is None:
            continue
        if candidate.cosine is None:
            candidate.cosine = float(vector @ query.vector)
        if query.negated is not None and len(query.negated):
            like = float(np.max(query.negated @ vector))
            candidate.penalty = PENALTY * max(0.0, like)
            if candidate.vector_score is not None:
                candidate.vector_score = candidate.cosine - candidate.penalty
    if query.negated is not None:
        # The vector side's order changes with the penalty: rank it again.
        ranked = sorted(
            (c for c in found.values() if c.vector_score is not None),
            key=lambda c: -(c.vector_score or 0.0),
        )
        for rank, candidate in enumerate(ranked, start=1):
            candidate.vector_rank = rank


def _fuse(query: ProductQuery, found: dict[str, _Candidate]) -> None:
    """Step 3: one score a candidate."""
    vector_side = sorted(
        (c for c in found.values() if c.vector_rank is not None),
        key=lambda c: c.vector_rank or 0,
    )
    lexical_side = sorted(
        (c for c in found.values() if c.lexical_rank is not None),
        key=lambda c: c.lexical_rank or 0,
    )
    if query.mode == "vector":
        for c in vector_side:
            c.fused = c.vector_score or 0.0
        return
    if query.mode == "lexical":
        for c in lexical_side:
            c.fused = c.bm25 or 0.0
        return
    if query.fusion == "rrf":
        fused = reciprocal_rank([[c.id for c in vector_side], [c.id for c in lexical_side]])
    else:
        fused = weighted(
            [(c.id, c.vector_score or 0.0) for c in vector_side],
            [(c.id, c.bm25 or 0.0) for c in lexical_side],
            alpha=query.alpha,
        )
    for item, score in fused:
        found[item].fused = score


def _relevance(index: IndexBackend, query: ProductQuery, found: dict[str, _Candidate]) -> None:
    """Step 4: relevance in [0, 1] (module documentation)."""
    calibration = index.calibration
    ids = list(found)
    if query.mode in ("lexical", "hybrid") and query.text:
        for item, share in zip(ids, index.word_coverage(query.text, ids), strict=True):
            found[item].coverage = float(share)
    seen = [c for c in found.values() if c.cosine is not None]
    cosines = np.asarray([(c.cosine or 0.0) - c.penalty for c in seen], dtype=np.float64)
    if calibration is not None:
        visual = calibration.relevance(cosines)
    else:
        visual = np.clip(cosines, 0.0, 1.0)
    for candidate, value in zip(seen, visual, strict=True):
        candidate.relevance = float(value)
    if query.mode != "vector":
        for candidate in found.values():
            candidate.relevance = max(candidate.relevance, candidate.coverage)


def _boost(query: ProductQuery, candidates: list[_Candidate]) -> None:
    """Step 5: multiplicative boosts on numeric fields."""
    for candidate in candidates:
        extra = sum(b.weight * b.value(candidate.metadata or {}) for b in query.boosts)
        candidate.boost = extra
        if extra:
            candidate.fused = candidate.fused * (1.0 + extra)


def _group(
    query: ProductQuery, ranked: list[_Candidate]
) -> list[tuple[_Candidate, list[_Candidate]]]:
    """Step 6: the best item of each group, with up to ``group_size`` of its items."""
    if query.group_by is None:
        return [(c, [c]) for c in ranked]
    groups: dict[Any, list[_Candidate]] = {}
    order: list[Any] = []
    for candidate in ranked:
        value = (candidate.metadata or {}).get(query.group_by)
        key: Any = ("item", candidate.id) if value is None else ("value", repr(value))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(candidate)
    return [(groups[key][0], groups[key][: query.group_size]) for key in order]


def _explain(query: ProductQuery, c: _Candidate) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": query.mode, "relevance": round(c.relevance, 6)}
    if c.cosine is not None:
        out["cosine"] = round(c.cosine, 6)
    if c.vector_rank is not None:
        out["vector"] = {"rank": c.vector_rank, "score": round(c.vector_score or 0.0, 6)}
    if c.penalty:
        out["negation_penalty"] = round(c.penalty, 6)
    if c.lexical_rank is not None:
        out["lexical"] = {"rank": c.lexical_rank, "bm25": round(c.bm25 or 0.0, 6)}
    if query.mode != "vector":
        out["word_coverage"] = round(c.coverage, 6)
    if query.mode == "hybrid":
        out["fusion"] = (
            {"method": "rrf", "k": RRF_K}
            if query.fusion == "rrf"
            else {"method": "weighted", "alpha": query.alpha}
        )
    if query.boosts:
        out["boost"] = {"factor": round(1.0 + c.boost, 6)}
    out["score"] = round(c.fused, 6)
    return out


def product_search(index: IndexBackend, query: ProductQuery) -> Answer:
    """Run ``query`` against ``index`` (module documentation).

    Raises:
        DataError: an unknown mode, fusion, field or transform, a value out of range, a
            boost on a field that holds text.
        IndexUnavailableError: the backend's server cannot be reached.
    """
    query.check(index.keys)
    found = _gather(index, query)
    vectors = _vectors_for(index, query, found)
    _penalise(query, found, vectors)
    _fuse(query, found)
    _relevance(index, query, found)
    candidates = [c for c in found.values() if c.vector_rank or c.lexical_rank]
    best = max((c.relevance for c in candidates), default=None)
    kept = [c for c in candidates if c.relevance >= query.min_relevance]
    if query.group_by is not None or query.boosts:
        _read_metadata(index, kept)  # grouping and boosts read every candidate's
    _boost(query, kept)
    kept.sort(key=lambda c: (-c.fused, c.vector_rank or MAX_K + 1, c.lexical_rank or 0))
    groups = _group(query, kept)[: query.k]
    _read_metadata(index, [m for _, members in groups for m in members])
    # An item removed between the search and the read (Milvus changes in place) is gone.
    groups = [(lead, members) for lead, members in groups if lead.metadata is not None]
    hits = []
    for lead, members in groups:
        metadata = lead.metadata or {}
        group = None
        if query.group_by is not None:
            group = {
                "field": query.group_by,
                "value": metadata.get(query.group_by),
                "items": [
                    {"id": m.id, "score": round(m.fused, 6), "relevance": round(m.relevance, 6)}
                    for m in members
                ],
            }
        hits.append(
            Hit(
                id=lead.id,
                score=lead.fused,
                relevance=lead.relevance,
                metadata=metadata,
                cosine=lead.cosine,
                group=group,
                explain=_explain(query, lead) if query.explain else {},
            )
        )
    return Answer(hits, len(candidates), len(candidates) - len(kept), best, query.mode)


@dataclass(frozen=True)
class TextPlan:
    """What a text query becomes before it is embedded (:func:`plan_text`): the text to
    embed and match, the filter and exclusion with the query's attribute words merged
    in, the negated phrases to embed, and the interpretation to show."""

    text: str
    filter: Mapping[str, Any] | None
    exclude: Mapping[str, Any] | None
    negated: Sequence[str]
    interpretation: Interpretation | None


def plan_text(
    index: IndexBackend,
    text: str,
    *,
    understand: bool = True,
    filter: Mapping[str, Any] | None = None,
    exclude: Mapping[str, Any] | None = None,
) -> TextPlan:
    """Read ``text`` against the index's vocabulary (:func:`index.understand.interpret`)
    when ``understand``: its ``must`` words join the filter (a key the caller filters on
    keeps the caller's values), its ``must_not`` words the exclusion. A query that was
    all negation (``不要红色的``) is embedded as given, with the exclusion applied."""
    if not understand:
        return TextPlan(text, filter, exclude, (), None)
    reading = interpret(text, index.vocabulary)
    merged_filter = dict(filter or {})
    for key, values in reading.must.items():
        merged_filter.setdefault(key, values[0] if len(values) == 1 else list(values))
    merged_exclude: dict[str, Any] = {k: v for k, v in (exclude or {}).items()}
    for key, values in reading.must_not.items():
        have = merged_exclude.get(key)
        listed = [] if have is None else have if isinstance(have, list) else [have]
        merged_exclude[key] = list(dict.fromkeys([*listed, *values]))
    return TextPlan(
        reading.text or text,
        merged_filter or None,
        merged_exclude or None,
        tuple(reading.negated),
        reading,
    )
