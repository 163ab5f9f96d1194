"""Search quality on judged queries: ``cnclip eval search``.

A judged query is one jsonl line ``{"query", "relevant": [ids], "kind"}`` (``kind``
groups queries in the report: colour, brand, model code ...; a negation may name
``"must"`` and ``"must_not"`` attributes, checked in its top 10). Every query runs
through the service's own pipeline (:func:`index.hybrid.plan_text` and
:func:`index.hybrid.product_search`, the bundle embedding the text as the service does)
in each mode, and the report gives, per mode and per kind, side by side:

- ``nDCG@10`` (binary gains), ``R@10`` (the share of the relevant items in the top 10,
  out of at most 10) and ``MRR`` (the reciprocal rank of the first relevant item), at the
  relevance threshold the service applies by default;
- ``kept``: the share of queries with relevant items whose first relevant item without a
  threshold is still returned with it; ``empty``: the share of queries with no relevant
  item that return nothing;
- for negations: ``negated@10``, the mean number of top-10 items with an excluded value,
  and ``asked@10``, the mean number with every asked value;
- ``p50_ms``: the median time of one query (reading, text embedding, search), server
  side, in this process.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index.backend import IndexBackend
from index.hybrid import (
    DEFAULT_MIN_RELEVANCE,
    MODES,
    Answer,
    ProductQuery,
    plan_text,
    product_search,
)
from runtime.errors import DataError

__all__ = ["JudgedQuery", "evaluate_search", "read_judged", "search_table"]

K = 10


@dataclass(frozen=True)
class JudgedQuery:
    query: str
    relevant: frozenset[str]
    kind: str
    must: Mapping[str, Any] = field(default_factory=dict)
    must_not: Mapping[str, Any] = field(default_factory=dict)


def read_judged(path: str | Path) -> list[JudgedQuery]:
    """The judged queries of a jsonl file (module documentation).

    Raises:
        DataError: an unreadable file, or a line that is not a judged query.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the judged queries ({exc})") from exc
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            query, relevant = data["query"], data["relevant"]
            if not isinstance(query, str) or not query.strip() or not isinstance(relevant, list):
                raise ValueError("query must be text and relevant a list of ids")
            out.append(
                JudgedQuery(
                    query,
                    frozenset(str(i) for i in relevant),
                    str(data.get("kind", "all")),
                    dict(data.get("must") or {}),
                    dict(data.get("must_not") or {}),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f'{path}:{number}: not a judged query {{"query", "relevant": [ids], "kind"}} '
                f"({exc})"
            ) from exc
    if not out:
        raise DataError(f"{path}: no judged queries")
    return out


def _ndcg(ranked: Sequence[str], relevant: frozenset[str]) -> float:
    gains = [1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:K]) if item in relevant]
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), K)))
    return sum(gains) / ideal if ideal else 0.0


def _mrr(ranked: Sequence[str], relevant: frozenset[str]) -> float:
    for i, item in enumerate(ranked[:K]):
        if item in relevant:
            return 1.0 / (i + 1)
    return 0.0


def _matches(metadata: Mapping[str, Any], conditions: Mapping[str, Any]) -> bool:
    for key, wanted in conditions.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if metadata.get(key) not in values:
            return False
    return True


def _run(
    index: IndexBackend,
    bundle: Any,
    judged: JudgedQuery,
    mode: str,
    min_relevance: float,
    understand: bool,
) -> tuple[Answer, float]:
    start = time.perf_counter()
    plan = plan_text(index, judged.query, understand=understand)
    vector = negated = None
    if mode != "lexical":  # the lexical mode embeds nothing
        texts = [plan.text, *plan.negated]
        encoded = np.asarray(bundle.encode_texts(texts), dtype=np.float32)
        vector, negated = encoded[0], (encoded[1:] if plan.negated else None)
    query = ProductQuery(
        k=K,
        mode=mode,
        vector=vector,
        text=plan.text,
        filter=plan.filter,
        exclude=plan.exclude,
        negated=negated,
        min_relevance=min_relevance,
    )
    answer = product_search(index, query)
    return answer, time.perf_counter() - start


def evaluate_search(
    index: IndexBackend,
    bundle: Any,
    queries: Sequence[JudgedQuery],
    *,
    modes: Sequence[str] = MODES,
    min_relevance: float = DEFAULT_MIN_RELEVANCE,
    understand: bool = True,
) -> dict[str, Any]:
    """The report of the module documentation, for ``queries`` against ``index`` with
    ``bundle`` embedding the texts; ``min_relevance`` as the service's default;
    ``understand`` off compares the modes alone (attribute words stay words).

    Raises:
        DataError: an unknown mode, or a lexical mode on an index without titles.
    """
    for mode in modes:
        if mode not in MODES:
            raise DataError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if mode != "vector" and not index.has_lexical:
            raise DataError(f"the {mode} mode needs a lexical index, which this index has not")
    calibration = index.calibration
    if calibration is None or calibration.method != "platt":
        min_relevance = 0.0  # as the service: no default threshold without a fitted one
    kinds = sorted({q.kind for q in queries})
    rows: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {}
    for mode in modes:
        per_kind: dict[str, dict[str, list[float]]] = {}
        seconds: list[float] = []
        for judged in queries:
            _run(index, bundle, judged, mode, min_relevance, understand)  # warm caches
            answer, took = _run(index, bundle, judged, mode, min_relevance, understand)
            loose, _ = _run(index, bundle, judged, mode, 0.0, understand)
            seconds.append(took)
            ranked = [hit.id for hit in answer.hits]
            scores = per_kind.setdefault(judged.kind, {})

            def add(name: str, value: float, into: dict[str, list[float]] = scores) -> None:
                into.setdefault(name, []).append(value)

            if judged.relevant:
                add("nDCG@10", _ndcg(ranked, judged.relevant))
                hits = sum(item in judged.relevant for item in ranked[:K])
                add("R@10", hits / min(len(judged.relevant), K))
                add("MRR", _mrr(ranked, judged.relevant))
                first = next((h.id for h in loose.hits if h.id in judged.relevant), None)
                add("kept", float(first is None or first in ranked))
            else:
                add("empty", float(not ranked))
            if judged.must_not:
                top = [hit.metadata for hit in answer.hits[:K]]
                add("negated@10", float(sum(_matches(m, judged.must_not) for m in top)))
                add("asked@10", float(sum(_matches(m, judged.must) for m in top)))
        rows[mode] = {
            kind: {name: round(float(np.mean(v)), 4) for name, v in found.items()}
            for kind, found in per_kind.items()
        }
        kept = [value for found in per_kind.values() for value in found.get("kept", [])]
        rows[mode]["all"] = {"kept": round(float(np.mean(kept)), 4) if kept else 1.0}
        timings[mode] = round(statistics.median(seconds) * 1000.0, 3)
    return {
        "queries": len(queries),
        "kinds": {kind: sum(q.kind == kind for q in queries) for kind in kinds},
        "min_relevance": min_relevance,
        "understand": understand,
        "calibration": None if calibration is None else calibration.to_dict(),
        "modes": list(modes),
        "metrics": rows,
        "p50_ms": timings,
        "index": {"location": index.location, "version": index.version, "count": index.count},
    }


def search_table(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table: a row a kind and metric, a column a mode."""
    modes = list(report["modes"])
    lines = [
        "| kind (queries) | metric | " + " | ".join(modes) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in modes) + " |",
    ]
    kinds = dict(report["kinds"])
    order = ["nDCG@10", "R@10", "MRR", "kept", "empty", "negated@10", "asked@10"]
    for kind in [*kinds, "all"]:
        names = {n for mode in modes for n in report["metrics"][mode].get(kind, {})}
        for name in [n for n in order if n in names]:
            cells = []
            for mode in modes:
                value = report["metrics"][mode].get(kind, {}).get(name)
                cells.append("" if value is None else f"{value:.3f}")
            label = f"{kind} ({kinds[kind]})" if kind in kinds else "all"
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    p50 = report["p50_ms"]
    lines.append(
        "| all | p50 ms (server side) | " + " | ".join(f"{p50[m]:.2f}" for m in modes) + " |"
    )
    return "\n".join(lines) + "\n"
