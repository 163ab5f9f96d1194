"""Query understanding for Chinese product search: negation and attribute words.

CLIP reads ``不要红色的杯子`` ("cups, but not red") as a query about red cups: the
negation word moves the embedding a little and the colour a lot. This module reads the
query before it is embedded:

- **attribute words**: values of the index's text attributes (its *vocabulary*: colours,
  kinds, brands, read from the catalog's metadata) found in the query become ``must``
  conditions (``{"colour": "蓝色"}``; two values of one attribute, ``红色或蓝色``, match
  either) and stay in the text;
- **negation**: a cue (不要, 不含, 不带, 不是, 除了, 没有, 别, 非, 无需, 去掉 ...) followed by
  attribute values (``不要红色和蓝色的``) makes them ``must_not`` conditions, removed from
  the text; a cue followed by words that are no attribute value (``不要带图案的T恤``)
  makes a *negated phrase*, removed from the text, which the search turns into a penalty
  for items that look like it (:mod:`index.hybrid`).

Words that are neither stay in the text. The interpretation is returned to the caller so
that a frontend can show "不含：红色".
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["Interpretation", "interpret", "vocabulary_of"]

#: Negation cues, longest first so that 不要 wins over 不.
_CUES = "不要 不含 不带 不是 不想要 除了 除去 没有 别 非 无需 去掉 排除 不包括"
NEGATIONS: Final = tuple(sorted(_CUES.split(), key=len, reverse=True))
#: Words that join negated values: 不要红色和蓝色的.
JOINERS: Final = ("和", "或", "与", "跟", "及", "、", ",", "，", "/", "或者")
#: Where a negated phrase ends.
_PHRASE_END = re.compile(r"[的,，。.!！?？;；\s、]")
_FILLER = re.compile(r"^[的\s,，、]+|[的\s,，、]+$")
VALUE_MAX_CHARS: Final = 24
MIN_ITEMS_PER_VALUE: Final = 2


def _fold(text: str) -> str:
    """Full-width forms folded and ASCII letters lower-cased, so that ＳＢ-1024, sb-1024
    and SB-1024 are one word; the length of the text does not change."""
    out = []
    for ch in text:
        folded = unicodedata.normalize("NFKC", ch).lower()
        out.append(folded if len(folded) == 1 else ch)
    return "".join(out)


def vocabulary_of(
    counts: Mapping[str, Mapping[str, int]], max_values: int
) -> dict[str, tuple[str, ...]]:
    """The vocabulary rule, one place for every backend: from ``{attribute: {text value:
    items}}`` keep the attributes with at most ``max_values`` distinct values and, on
    average, at least two items a value (colours, kinds, brands; not per-item texts such
    as URLs or descriptions), and their values of at most 24 characters."""
    out: dict[str, tuple[str, ...]] = {}
    for key, values in counts.items():
        texts = {v: n for v, n in values.items() if v.strip()}
        if not texts or len(texts) > max_values:
            continue
        if sum(texts.values()) < MIN_ITEMS_PER_VALUE * len(texts):
            continue
        kept = sorted(v for v in texts if len(v) <= VALUE_MAX_CHARS)
        if kept:
            out[str(key)] = tuple(kept)
    return out


@dataclass(frozen=True)
class Interpretation:
    """What a query asks for: ``text`` to embed and match (empty when the query was all
    negation: ``不要红色的``), ``must`` and ``must_not`` attribute conditions, and
    ``negated`` phrases that no attribute holds."""

    text: str
    must: Mapping[str, list[str]] = field(default_factory=dict)
    must_not: Mapping[str, list[str]] = field(default_factory=dict)
    negated: Sequence[str] = ()

    @property
    def changed(self) -> bool:
        return bool(self.must or self.must_not or self.negated)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "must": {k: v[0] if len(v) == 1 else list(v) for k, v in self.must.items()},
            "must_not": {k: list(v) for k, v in self.must_not.items()},
            "negated": list(self.negated),
        }


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    key: str
    value: str


@functools.lru_cache(maxsize=32)
def _needles(vocabulary: tuple[tuple[str, tuple[str, ...]], ...]) -> list[tuple[str, str, str]]:
    """``(folded value, attribute, value)`` of a vocabulary, longest first (folded once
    per vocabulary, not once per query)."""
    found = [(_fold(v), key, v) for key, values in vocabulary for v in values if _fold(v)]
    return sorted(found, key=lambda needle: -len(needle[0]))


def _values(text: str, vocabulary: Mapping[str, Sequence[str]]) -> list[_Span]:
    """Non-overlapping occurrences of attribute values in ``text``, longest first."""
    folded = _fold(text)
    key_of = tuple(sorted((str(k), tuple(v)) for k, v in vocabulary.items()))
    taken = [False] * len(text)
    spans: list[_Span] = []
    for needle, key, value in _needles(key_of):
        start = folded.find(needle)
        while start >= 0:
            end = start + len(needle)
            if not any(taken[start:end]) and _whole(folded, start, end):
                spans.append(_Span(start, end, key, value))
                for i in range(start, end):
                    taken[i] = True
            start = folded.find(needle, start + 1)
    return sorted(spans, key=lambda span: span.start)


def _whole(text: str, start: int, end: int) -> bool:
    """An ASCII value (a code, a Latin brand) must not be part of a longer ASCII word."""
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    ascii_value = text[start:end].isascii()
    clear_before = not before.isalnum() or not before.isascii()
    clear_after = not after.isalnum() or not after.isascii()
    return not ascii_value or (clear_before and clear_after)


def _cue_before(text: str, start: int) -> tuple[int, str] | None:
    """The negation cue that ends right before ``start`` (allowing 要/是/含/带 and
    spaces between), as (its start, the cue)."""
    end = start
    while True:
        for cue in NEGATIONS:
            if end - len(cue) >= 0 and text.startswith(cue, end - len(cue)):
                return end - len(cue), cue
        if end == 0 or text[end - 1] not in " 要是含带":
            return None
        end -= 1


def interpret(text: str, vocabulary: Mapping[str, Sequence[str]]) -> Interpretation:
    """Read ``text`` against the index's ``vocabulary`` (module documentation)."""
    spans = _values(text, vocabulary)
    must: dict[str, list[str]] = {}
    must_not: dict[str, list[str]] = {}
    remove: list[tuple[int, int]] = []
    negating_until = -1  # the end of the last negated value, while joiners chain on
    for span in spans:
        cue = _cue_before(text, span.start)
        between = text[negating_until : span.start].strip() if negating_until >= 0 else None
        chained = between is not None and between in JOINERS
        if cue is not None or chained:
            must_not.setdefault(span.key, [])
            if span.value not in must_not[span.key]:
                must_not[span.key].append(span.value)
            remove.append((cue[0] if cue is not None else negating_until, span.end))
            negating_until = span.end
        else:
            must.setdefault(span.key, [])
            if span.value not in must[span.key]:
                must[span.key].append(span.value)
            negating_until = -1
    # Cues followed by no attribute value: negated phrases (up to 的 or punctuation).
    negated: list[str] = []
    covered = [False] * len(text)
    for start, end in remove:
        for i in range(start, end):
            covered[i] = True
    for word in NEGATIONS:
        for match in re.finditer(re.escape(word), text):
            if any(covered[match.start() : match.end()]):
                continue
            rest = text[match.end() :]
            stop = _PHRASE_END.search(rest)
            phrase = rest[: stop.start() if stop else len(rest)].strip()
            if not phrase or (word == "非" and len(phrase) > 4):
                continue
            end = match.end() + (stop.start() if stop else len(rest))
            if any(covered[match.start() : end]):
                continue
            negated.append(phrase)
            remove.append((match.start(), end))
            for i in range(match.start(), end):
                covered[i] = True
    kept = "".join(ch for i, ch in enumerate(text) if not covered[i])
    cleaned = _FILLER.sub("", re.sub(r"\s+", " ", kept)).strip()
    # A negated attribute is not also required (不要红色 ... 红色 would contradict).
    for key, values in must_not.items():
        if key in must:
            must[key] = [v for v in must[key] if v not in values]
            if not must[key]:
                del must[key]
    return Interpretation(cleaned, must, must_not, tuple(negated))
