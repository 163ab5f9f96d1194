"""The search API the service uses: ``index.load(DIR).search(queries, k, ...)``.

A :class:`CatalogIndex` answers float32 ``[n, d]`` queries with scores ``[n, k]``
and the item ids given at build. Filters (``{"category": "鞋"}``) become the set of
rows that match (through SQLite) and are applied inside FAISS with an ID selector,
together with the rows removed since the index was built. A filtered query still
returns ``k`` results whenever ``k`` items match: small match sets are searched
exactly over their stored vectors; for large ones, rows that come back short are
searched again with more lists (or a wider HNSW beam), up to an exact search.

Searches only read shared state, so any number of threads may search at once.
Large indexes are memory-mapped (``mmap=None`` decides by size). With faiss-gpu and
a GPU, unfiltered searches of IVF and flat indexes run on a GPU copy (``gpu=None``
decides; faiss-gpu's limits, k and nprobe <= 2048, are the API's limits everywhere).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index.backend import MAX_K, SearchResult, check_queries
from index.evaluate import bitmap_selector, search_params
from index.lexical import LEXICAL_DIR, LexicalIndex
from index.store import ItemStore
from index.versions import (
    DELETED,
    INDEX,
    TEXTS,
    VECTORS,
    IndexManifest,
    IndexVersionError,
    resolve,
)
from runtime.errors import ConfigError, DataError
from runtime.identity import ModelRef

EXACT_SUBSET_MAX = 50_000  # filters matching at most this many rows are searched exactly
MMAP_MIN_BYTES = 1 << 30
ALLOWED_CACHE = 64  # filters whose matching rows a version keeps
RECENT_IDS = 100_000  # ids of search results a version remembers the rows of
VOCABULARY_MAX = 1_000  # distinct values of an attribute that queries may name


def load_vectors(directory: Path) -> npt.NDArray[np.float32]:
    """The stored embeddings of a version, memory-mapped part by part and concatenated
    lazily only when there is more than one part."""
    parts = sorted((directory / VECTORS).glob("part-*.npy"))
    if not parts:
        raise IndexVersionError(f"{directory}: no stored vectors in {VECTORS}/")
    arrays: list[npt.NDArray[np.float32]] = [np.load(p, mmap_mode="r") for p in parts]
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays)


class CatalogIndex:
    """One loaded index version (and its text index, when it has one)."""

    def __init__(
        self, directory: Path, *, mmap: bool | None = None, gpu: bool | None = None
    ) -> None:
        self.directory = directory
        self.manifest = IndexManifest.read(directory)
        path = directory / INDEX
        if not path.is_file():
            raise IndexVersionError(f"{directory}: {INDEX} is missing; rebuild the index")
        if mmap is None:
            mmap = path.stat().st_size >= MMAP_MIN_BYTES
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            self.index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise IndexVersionError(f"{path}: FAISS cannot read it ({exc}); rebuild") from exc
        self.store = ItemStore(directory)
        total = self.manifest.total
        if self.index.ntotal != total or len(self.store.ids) != total:
            raise IndexVersionError(
                f"{directory}: the index holds {self.index.ntotal} vectors and "
                f"{len(self.store.ids)} ids, the manifest says {total}; the version is "
                "inconsistent, rebuild it"
            )
        self.dim = self.manifest.dim
        self.total = total
        deleted_path = directory / DELETED
        self.deleted = np.load(deleted_path) if deleted_path.is_file() else np.zeros(0, np.int64)
        self.count = total - len(self.deleted)
        self._live: npt.NDArray[np.bool_] | None = None
        self._vectors: npt.NDArray[np.float32] | None = None
        self._lock = threading.Lock()
        search = self.manifest.search
        self.nprobe: int | None = search.get("nprobe")
        self.ef_search: int | None = search.get("ef_search")
        self.k_factor: float | None = search.get("k_factor")
        self.nlist = _nlist(self.index)
        self._gpu_lock = threading.Lock()
        self.gpu_index = _to_gpu(self.index) if gpu is not False else None
        if gpu and self.gpu_index is None:
            raise ConfigError(
                f"{directory}: no GPU search here (needs faiss-gpu, a GPU and an "
                "IVF or flat index without re-ranking)"
            )
        texts = directory / TEXTS
        self.texts = CatalogIndex(texts, mmap=mmap, gpu=gpu) if texts.is_dir() else None
        self._lexical: LexicalIndex | None = None
        self._vocabulary: dict[str, tuple[str, ...]] | None = None
        self._allowed: OrderedDict[str, npt.NDArray[np.int64]] = OrderedDict()
        self._recent: dict[str, int] = {}  # id -> row of items searches returned lately
        self.has_lexical = (directory / LEXICAL_DIR).is_dir()

    @property
    def lexical(self) -> LexicalIndex | None:
        """BM25 over the rows' titles (:mod:`index.lexical`), loaded on first use; None
        for a version built without titles."""
        if not self.has_lexical:
            return None
        with self._lock:
            if self._lexical is None:
                self._lexical = LexicalIndex.load(self.directory)
                if self._lexical is None or self._lexical.count != self.total:
                    raise IndexVersionError(
                        f"{self.directory}: the lexical index does not match the version's "
                        f"{self.total} rows; rebuild the index"
                    )
            return self._lexical

    @property
    def model(self) -> ModelRef:
        """The model whose vectors the version holds (:mod:`runtime.identity`)."""
        return self.manifest.model

    def vectors(self) -> npt.NDArray[np.float32]:
        with self._lock:
            if self._vectors is None:
                self._vectors = load_vectors(self.directory)
            return self._vectors

    def live_mask(self) -> npt.NDArray[np.bool_]:
        """True for every row not deleted (computed once)."""
        with self._lock:
            if self._live is None:
                live = np.ones(self.total, dtype=bool)
                live[self.deleted] = False
                self._live = live
            return self._live

    def sample_titles(self, n: int, *, seed: int = 0) -> list[str]:
        """Up to ``n`` distinct titles of live rows drawn at random (``seed``)."""
        from index.build import sample_rows

        live = np.flatnonzero(self.live_mask())
        rows = sample_rows(live, min(len(live), n * 4), seed=seed)
        meta = self.store.metadata(rows.tolist())
        titles = [str(m["title"]) for m in meta.values() if isinstance(m.get("title"), str)]
        return [t for t in dict.fromkeys(titles) if t.strip()][:n]

    def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
        exclude: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        """The ``k`` best items for each query (inner product of unit vectors), among
        those matching ``filter`` and none of ``exclude``'s attributes.

        Raises:
            DataError: queries of the wrong shape or with non-finite values, a bad ``k``,
                ``nprobe``, filter or exclusion.
        """
        q = check_queries(queries, self.dim, k, nprobe)
        allowed = self._allowed_rows(filter, exclude)
        if allowed is not None and len(allowed) <= EXACT_SUBSET_MAX:
            scores, rows = self._exact(q, k, allowed)
        else:
            scores, rows = self._approximate(q, k, nprobe, ef_search, allowed)
        return self._result(scores, rows, with_metadata)

    def search_words(
        self,
        query: str,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
        exclude: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        """The ``k`` best live items for one text by BM25 over their titles (a result of
        one query; fewer than ``k`` when fewer titles share a word with it), among those
        matching ``filter`` and none of ``exclude``'s attributes.

        Raises:
            DataError: a bad ``k`` or filter, or a version built without titles.
        """
        lexical = self.lexical
        if lexical is None:
            raise DataError(
                f"{self.directory}: this index has no lexical index (its items had no "
                "titles when it was built); search by vector, or build it from a catalog "
                "with titles"
            )
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise DataError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        allowed = self.live_mask()
        rows = self._allowed_rows(filter, exclude)
        if rows is not None:
            allowed = np.zeros(self.total, dtype=bool)
            allowed[rows] = True
        found, hits = lexical.search(query, k, allowed)
        scores = np.full((1, k), np.nan, dtype=np.float32)
        rows = np.full((1, k), -1, dtype=np.int64)
        scores[0, : len(hits)] = found
        rows[0, : len(hits)] = hits
        return self._result(scores, rows, with_metadata)

    def _allowed_rows(
        self, filter: Mapping[str, Any] | None, exclude: Mapping[str, Any] | None
    ) -> npt.NDArray[np.int64] | None:
        """The live rows a filter and an exclusion leave (None: every live row); the
        last few answers are kept (a version never changes, and a hybrid search asks
        twice, once a side)."""
        if filter is None and exclude is None:
            return None
        key = json.dumps([filter, exclude], sort_keys=True, ensure_ascii=False, default=str)
        with self._lock:
            found = self._allowed.get(key)
            if found is not None:
                self._allowed.move_to_end(key)
                return found
        allowed = None if filter is None else self.store.matching(filter)
        if exclude is not None:
            removed = self.store.matching_any(exclude)
            if allowed is None:
                allowed = self._live_rows()
            allowed = np.setdiff1d(allowed, removed, assume_unique=True).astype(np.int64)
        assert allowed is not None
        allowed.setflags(write=False)
        with self._lock:
            self._allowed[key] = allowed
            while len(self._allowed) > ALLOWED_CACHE:
                self._allowed.popitem(last=False)
        return allowed

    def vectors_of(self, ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """The stored vectors of live items ``ids`` (``[n, d]``; NaN rows for ids that
        are not there)."""
        out = np.full((len(ids), self.dim), np.nan, dtype=np.float32)
        where, rows = self._positions(ids)
        if rows:
            out[where] = self.vectors()[rows]
        return out

    def items_of(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The records (``{"id", "title", ...}``) of live items ``ids`` (None where an id
        is not there)."""
        rows = self._rows_of(ids)
        meta = self.store.metadata(list(rows.values()))
        return [meta.get(rows[i]) if i in rows else None for i in ids]

    def word_coverage(self, query: str, ids: Sequence[str]) -> npt.NDArray[np.float64]:
        """The share of ``query``'s words each item's title holds (0 without a lexical
        index or for ids not there; :meth:`index.lexical.LexicalIndex.coverage`)."""
        lexical = self.lexical
        out = np.zeros(len(ids), dtype=np.float64)
        if lexical is None or not ids:
            return out
        where, rows = self._positions(ids)
        if rows:
            out[where] = lexical.coverage(query, rows)
        return out

    def _positions(self, ids: Sequence[str]) -> tuple[list[int], list[int]]:
        """For the live ones of ``ids``: their positions in ``ids`` and their rows."""
        rows = self._rows_of(ids)
        found = [(n, rows[i]) for n, i in enumerate(ids) if i in rows]
        return [n for n, _ in found], [r for _, r in found]

    def _rows_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The rows of live ``ids``: those a search returned lately from memory, the
        others from the store."""
        known = self._recent
        rows: dict[str, int] = {}
        for item in ids:
            row = known.get(item)  # get: another thread may clear it meanwhile
            if row is not None:
                rows[item] = row
        missing = [i for i in ids if i not in rows]
        if missing:
            rows.update(self.store.rows_of(missing))
        return rows

    def vocabulary(self) -> dict[str, tuple[str, ...]]:
        """The attribute values a query may name (:meth:`index.store.ItemStore.
        vocabulary`), read once (outside the lock: a large catalog takes a while, and
        searches need the lock meanwhile)."""
        found = self._vocabulary
        if found is None:
            found = self.store.vocabulary(VOCABULARY_MAX)
            with self._lock:
                self._vocabulary = self._vocabulary or found
        return found

    def _exact(
        self, q: npt.NDArray[np.float32], k: int, allowed: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        scores = np.full((len(q), k), np.nan, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        if len(allowed) == 0 or len(q) == 0:
            return scores, rows
        subset = np.asarray(self.vectors()[allowed], dtype=np.float32)
        sims = q @ subset.T
        take = min(k, len(allowed))
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        scores[:, :take] = np.take_along_axis(sims, top, axis=1)
        rows[:, :take] = allowed[top]
        return scores, rows

    def _approximate(
        self,
        q: npt.NDArray[np.float32],
        k: int,
        nprobe: int | None,
        ef_search: int | None,
        allowed: npt.NDArray[np.int64] | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if allowed is not None:
            mask = np.zeros(self.total, dtype=bool)
            mask[allowed] = True
            selector: Any = bitmap_selector(mask)
            expected = min(k, len(allowed))
        elif len(self.deleted):
            selector = bitmap_selector(self.live_mask())
            expected = min(k, self.count)
        else:
            selector, expected = None, min(k, self.count)
        nprobe = nprobe or self.nprobe
        ef_search = ef_search or self.ef_search
        if selector is None and self.gpu_index is not None:
            scores, rows = self._gpu(q, k, nprobe)
        else:
            scores, rows = self._faiss(q, k, nprobe, ef_search, selector)
        # Rows that came back short: widen the search until they are full.
        while True:
            short = np.flatnonzero((rows >= 0).sum(axis=1) < expected)
            if not len(short):
                break
            wider = self._wider(nprobe, ef_search)
            if wider is None:
                candidates = allowed if allowed is not None else self._live_rows()
                scores[short], rows[short] = self._exact(q[short], k, candidates)
                break
            nprobe, ef_search = wider
            scores[short], rows[short] = self._faiss(q[short], k, nprobe, ef_search, selector)
        return scores, rows

    def _faiss(
        self,
        q: npt.NDArray[np.float32],
        k: int,
        nprobe: int | None,
        ef_search: int | None,
        selector: Any,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        params = search_params(
            self.index,
            nprobe=nprobe,
            ef_search=ef_search,
            k_factor=self.k_factor,
            selector=selector,
        )
        scores, rows = self.index.search(q, k, params=params)
        scores = np.where(rows >= 0, scores, np.nan).astype(np.float32)
        return scores, rows.astype(np.int64)

    def _gpu(
        self, q: npt.NDArray[np.float32], k: int, nprobe: int | None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """An unfiltered search on the GPU copy (nprobe set under a lock: it is shared)."""
        gpu: Any = self.gpu_index
        with self._gpu_lock:
            if nprobe is not None and hasattr(gpu, "nprobe"):
                gpu.nprobe = min(nprobe, MAX_K)
            scores, rows = gpu.search(q, k)
        scores = np.where(rows >= 0, scores, np.nan).astype(np.float32)
        return scores, rows.astype(np.int64)

    def _wider(
        self, nprobe: int | None, ef_search: int | None
    ) -> tuple[int | None, int | None] | None:
        """The next, wider search setting; None when the widest has been tried."""
        if self.nlist is not None:
            current = nprobe or 1
            if current >= min(self.nlist, MAX_K):
                return None
            return min(current * 4, self.nlist, MAX_K), ef_search
        if _has_hnsw(self.index):
            current = ef_search or 16
            if current >= 4096:
                return None
            return nprobe, min(current * 4, 4096)
        return None

    def _live_rows(self) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.live_mask()).astype(np.int64)

    def _result(
        self,
        scores: npt.NDArray[np.float32],
        rows: npt.NDArray[np.int64],
        with_metadata: bool,
    ) -> SearchResult:
        ids = [[self.store.id_of(int(r)) for r in row if r >= 0] for row in rows]
        recent = self._recent
        if len(recent) > RECENT_IDS:
            recent.clear()  # bounded; the store answers what is not here
        for found, row in zip(ids, rows, strict=True):
            recent.update(zip(found, (int(r) for r in row if r >= 0), strict=True))
        items = None
        if with_metadata:
            meta = self.store.metadata(rows[rows >= 0].tolist())
            items = [[meta[int(r)] for r in row if r >= 0] for row in rows]
        return SearchResult(scores, rows, ids, items)

    def close(self) -> None:
        self.store.close()
        if self.texts is not None:
            self.texts.close()


def _to_gpu(index: Any) -> Any:
    """A copy of ``index`` on every GPU when faiss-gpu and a GPU are there and FAISS can
    move this index type (IVF and flat; not HNSW or re-ranked indexes), else None.
    Filtered searches and the types it cannot move stay on the CPU."""
    if getattr(faiss, "get_num_gpus", lambda: 0)() == 0:
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):
        return None


def _nlist(index: Any) -> int | None:
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else int(ivf.nlist)


def _has_hnsw(index: Any) -> bool:
    while True:
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexHNSW):
            return True
        inner = getattr(index, "index", None) or getattr(index, "base_index", None)
        if inner is None:
            return False
        index = inner


def load(path: str | Path, *, mmap: bool | None = None, gpu: bool | None = None) -> CatalogIndex:
    """The index version at ``path`` (a version directory, or a root: its current version).

    Raises:
        IndexVersionError: missing, incomplete, inconsistent or newer-format versions.
    """
    return CatalogIndex(resolve(path), mmap=mmap, gpu=gpu)
