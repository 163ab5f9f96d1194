"""Lexical retrieval over item titles: jieba words scored by BM25 (bm25s), kept in a version.

CLIP reads a picture, not a model code: ``SB-1024`` or a brand's name in a query needs the
words of the titles. :class:`Segmenter` cuts Chinese text into words with jieba (its
search-engine mode, which also gives the shorter words inside a long one: 篮球鞋 → 篮球,
球鞋, 篮球鞋), with an optional lexicon of brands and codes, and keeps model codes whole
(``SB-1024`` is one token, and ``sb1024`` another, so either spelling matches).
:class:`LexicalIndex` scores titles by BM25 with `bm25s`_, saved beside the FAISS index
in an index version (``lexical/``) and loaded memory-mapped.

Why bm25s: it is maintained (releases through 2026), needs numpy alone, precomputes every
term's BM25 weights into a sparse matrix at build, so that scoring a query is a sum of a
few sparse columns (milliseconds over millions of titles, where rank-bm25, unmaintained
since 2022, loops over every document in Python for every query), and saves to ``.npy``
files that load memory-mapped.

.. _bm25s: https://github.com/xhluca/bm25s
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from index.versions import IndexVersionError
from runtime.errors import ConfigError, DataError
from runtime.files import write_atomically

__all__ = [
    "LEXICAL_DIR",
    "LexicalIndex",
    "Segmenter",
    "joined",
    "read_lexicon",
    "version_lexicon",
    "without_codes",
    "write_lexical",
]

LEXICAL_DIR: Final = "lexical"
FORMAT: Final = "cnclip-lexical"
FORMAT_VERSION: Final = 1
_LEXICON_FILE: Final = "lexicon.txt"
_MANIFEST_FILE: Final = "lexical.json"
# A model code: ASCII letters and digits with a digit in it (K70, 270) or joined by - _ / .
# (SB-1024, GT-2.0). Letters alone (Nike, XL) are words for jieba.
_CODE = re.compile(
    r"[a-z0-9]*[0-9][a-z0-9]*(?:[-_/.][a-z0-9]+)*|[a-z0-9]+(?:[-_/.][a-z0-9]+)+", re.I
)
_JOINERS = re.compile(r"[-_/.]")
_CACHED_CHARS: Final = 64  # queries up to this long keep their words in memory
_BM25 = {"k1": 1.2, "b": 0.75}  # Lucene's defaults; titles are short and of even length


_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _normalise(text: str) -> str:
    """Full-width forms folded (ＳＢ－１０２４ → SB-1024) and ASCII letters in upper case,
    as jieba's dictionary writes its mixed words (T恤, K歌): t恤 and T恤 are one word."""
    return unicodedata.normalize("NFKC", text).translate(_UPPER)


def joined(token: str) -> str:
    """A code in its joined spelling (``sb-1024`` -> ``sb1024``); other words as they are."""
    return _JOINERS.sub("", token)


def without_codes(text: str) -> str:
    """``text`` with its model codes and numbers (SB-1024, K70, 500ml) taken out: what a
    picture can show, for the relevance calibration's titles (:mod:`index.relevance`)."""
    folded = unicodedata.normalize("NFKC", text)
    return " ".join(_CODE.sub(" ", folded).split())


def _is_word(token: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in token)


class Segmenter:
    """Words of a text for BM25: codes whole, the rest through jieba, lower case.

    ``lexicon`` adds words jieba's dictionary lacks (brands, series names, codes), so
    that 小米 Redmi or 安踏 stay one token. A segmenter owns its own jieba dictionary:
    two indexes with different lexicons never mix words.

    Raises:
        ConfigError: jieba is not installed.
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()  # jieba initialises lazily
    _shared: ClassVar[dict[tuple[str, ...], Segmenter]] = {}

    def __init__(self, lexicon: Iterable[str] = ()) -> None:
        try:
            import jieba
        except ImportError as exc:
            raise ConfigError("lexical search needs jieba: pip install 'cnclip[serve]'") from exc
        logging.getLogger("jieba").setLevel(logging.WARNING)
        self.lexicon = tuple(dict.fromkeys(w.strip() for w in lexicon if w.strip()))
        self._jieba = jieba.Tokenizer()
        with self._lock:
            self._jieba.initialize()
        for word in self.lexicon:
            self._jieba.add_word(_normalise(word), freq=100_000)

    @classmethod
    def shared(cls, lexicon: Iterable[str] = ()) -> Segmenter:
        """One segmenter per lexicon in a process: a jieba dictionary takes about 80 MB,
        and every version of an index (and every index) with one lexicon shares it."""
        key = tuple(dict.fromkeys(w.strip() for w in lexicon if w.strip()))
        with cls._lock:
            found = cls._shared.get(key)
        if found is None:
            found = cls(key)
            with cls._lock:
                found = cls._shared.setdefault(key, found)
        return found

    def __call__(self, text: str) -> list[str]:
        """The words of ``text``; a query's are kept for the next call that asks (a
        hybrid search cuts one query twice: to score and to measure coverage)."""
        if len(text) <= _CACHED_CHARS:
            return list(self._cut_cached(text))
        return self._cut(text)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (segmenters live as long as the process)
    def _cut_cached(self, text: str) -> tuple[str, ...]:
        return tuple(self._cut(text))

    def _cut(self, text: str) -> list[str]:
        text = _normalise(text)
        tokens: list[str] = []
        start = 0
        for match in _CODE.finditer(text):
            tokens += self._words(text[start : match.start()])
            code = match.group().lower()
            tokens.append(code)
            joined = _JOINERS.sub("", code)
            if joined != code:
                tokens.append(joined)
            start = match.end()
        tokens += self._words(text[start:])
        return tokens

    def _words(self, text: str) -> list[str]:
        if not text.strip():
            return []
        return [t.lower() for t in self._jieba.lcut_for_search(text) if _is_word(t)]


def read_lexicon(path: str | os.PathLike[str]) -> list[str]:
    """A lexicon file: one word a line (jieba's user-dictionary format: word, then an
    optional frequency and part of speech, which are ignored); ``#`` starts a comment.

    Raises:
        DataError: the file cannot be read, or is not UTF-8.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the lexicon ({exc})") from exc
    words = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            words.append(line.split()[0])
    return words


class LexicalIndex:
    """BM25 over the titles of an index version's rows (row ``i`` is the version's row ``i``).

    Thread-safe for searches once built or loaded.
    """

    def __init__(self, retriever: Any, count: int, segmenter: Segmenter) -> None:
        self._retriever = retriever
        self.count = count
        self.segmenter = segmenter

    @classmethod
    def build(cls, titles: Sequence[str | None], *, lexicon: Iterable[str] = ()) -> LexicalIndex:
        """The index of ``titles`` (None or empty: a row no query matches lexically)."""
        bm25s = _bm25s()
        segmenter = Segmenter.shared(lexicon)
        corpus = [segmenter(title or "") for title in titles]
        retriever = bm25s.BM25(**_BM25)
        retriever.index(corpus, show_progress=False)
        return cls(retriever, len(corpus), segmenter)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index under ``directory/lexical`` (a version being staged)."""
        out = Path(directory) / LEXICAL_DIR
        out.mkdir(parents=True, exist_ok=True)
        self._retriever.save(str(out), show_progress=False)
        lexicon = "".join(f"{word}\n" for word in self.segmenter.lexicon)
        write_atomically(out / _LEXICON_FILE, lexicon.encode("utf-8"))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "count": self.count,
            "bm25": {**_BM25, "method": "lucene"},
            "segmenter": "jieba search mode, codes whole",
        }
        write_atomically(out / _MANIFEST_FILE, json.dumps(manifest, indent=2).encode("utf-8"))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = True) -> LexicalIndex | None:
        """The lexical index of a version directory, or None when it was built without one.

        Raises:
            IndexVersionError: an unreadable or newer-format lexical index.
        """
        where = Path(directory) / LEXICAL_DIR
        if not where.is_dir():
            return None
        try:
            manifest = json.loads((where / _MANIFEST_FILE).read_text(encoding="utf-8"))
            lexicon = (where / _LEXICON_FILE).read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError) as exc:
            raise IndexVersionError(f"{where}: an unreadable lexical index ({exc})") from exc
        if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
            raise IndexVersionError(
                f"{where}: lexical index format {manifest.get('format_version')!r} is newer "
                "than this cnclip reads; upgrade cnclip or build the index again"
            )
        try:
            retriever = _bm25s().BM25.load(str(where), mmap=mmap, show_progress=False)
        except (OSError, ValueError, KeyError) as exc:
            raise IndexVersionError(f"{where}: an unreadable lexical index ({exc})") from exc
        return cls(retriever, int(manifest["count"]), Segmenter.shared(lexicon))

    def scores(
        self, query: str, allowed: npt.NDArray[np.bool_] | None = None
    ) -> npt.NDArray[np.float32]:
        """BM25 of every row for ``query`` (0 where no word matches or not ``allowed``)."""
        words = dict.fromkeys(self.segmenter(query))  # a word repeated counts once
        tokens = [t for t in words if t in self._retriever.vocab_dict]
        if not tokens:
            out = np.zeros(self.count, dtype=np.float32)
        else:
            out = np.asarray(self._retriever.get_scores(tokens), dtype=np.float32).copy()
        if allowed is not None:
            out[~allowed] = 0.0
        return out

    def coverage(self, query: str, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """For each of ``rows``, the IDF-weighted share of the query's words its title
        holds, in [0, 1] (:mod:`index.relevance`): a word no title has weighs as much as
        the rarest possible one, so that ``安踏 自行车`` is about half covered by an 安踏
        title; a code counts once, present in either spelling (``SB-1024``, ``sb1024``)."""
        wanted = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(wanted), dtype=np.float64)
        words: dict[str, list[str]] = {}  # a word (a code's joined form) -> its spellings
        for token in self.segmenter(query):
            spellings = words.setdefault(_JOINERS.sub("", token), [])
            if token not in spellings:
                spellings.append(token)
        if not words or len(wanted) == 0:
            return out
        n = max(self.count, 1)
        total = 0.0
        for spellings in words.values():
            present = np.zeros(len(wanted), dtype=bool)
            df = 0
            for token in spellings:
                postings = self._postings(token)
                df = max(df, len(postings))
                present |= np.isin(wanted, postings)
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            total += idf
            out += idf * present
        return out / total if total > 0 else out

    def _postings(self, token: str) -> npt.NDArray[np.int64]:
        """The rows whose title holds ``token`` (the column of bm25s's sparse matrix)."""
        column = self._retriever.vocab_dict.get(token)
        if column is None:
            return np.zeros(0, dtype=np.int64)
        matrix = self._retriever.scores
        start, stop = int(matrix["indptr"][column]), int(matrix["indptr"][column + 1])
        return np.asarray(matrix["indices"][start:stop], dtype=np.int64)

    def search(
        self, query: str, k: int, allowed: npt.NDArray[np.bool_] | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The best ``k`` rows with a positive score: ``(scores, rows)``, best first (fewer
        than ``k`` when fewer rows share a word with the query)."""
        if k < 1:
            raise DataError(f"k must be positive, got {k}")
        scores = self.scores(query, allowed)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        order = hits[np.lexsort((hits, -scores[hits]))]  # best first; ties by row
        return scores[order], order.astype(np.int64)


def write_lexical(
    directory: str | os.PathLike[str],
    items: Sequence[Mapping[str, Any]] | None,
    lexicon: Iterable[str] = (),
) -> LexicalIndex | None:
    """The lexical index of a version's rows (``items`` in row order), written into the
    version being staged; none when no item has a title."""
    if not items:
        return None
    titles = [item.get("title") for item in items]
    titles = [t if isinstance(t, str) else None for t in titles]
    if not any(titles):
        return None
    lexical = LexicalIndex.build(titles, lexicon=lexicon)
    lexical.save(directory)
    return lexical


def version_lexicon(directory: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The lexicon a version's lexical index was built with, or None without one."""
    path = Path(directory) / LEXICAL_DIR / _LEXICON_FILE
    if not path.parent.is_dir():
        return None
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except OSError as exc:
        raise IndexVersionError(f"{path}: an unreadable lexical index ({exc})") from exc


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:
        raise ConfigError("lexical search needs bm25s: pip install 'cnclip[serve]'") from exc
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s
