"""The index backend protocol: what ``index.load(LOCATION)`` returns, whatever serves it.

Two backends implement it:

- :class:`index.local.DirectoryIndex`: FAISS version directories on this machine (an
  index root with ``CURRENT``, or one version directory), the default;
- :class:`index.milvus.MilvusIndex`: a collection alias on a Milvus server
  (``milvus://HOST:PORT/NAME``), for catalogs beyond one machine.

The service and ``cnclip index`` use only this protocol: search, add, remove, the
versions and their recall, refresh (pick up a version another process switched to),
ping (is the backend reachable) and close. Results are :class:`SearchResult` on both.

Where they differ, by design: a FAISS ``add`` or ``remove`` writes a new immutable
version (``add`` refuses ids already present); on Milvus both change the current
collection in place (``add`` upserts: prices and stock change all day), and a new
version (a new collection behind the alias) is for a new model or new index parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from index.relevance import Calibration
from runtime.errors import CnClipError
from runtime.identity import ModelRef

MILVUS_SCHEME = "milvus://"


class IndexUnavailableError(CnClipError):
    """The index's server cannot be reached (or timed out); retry later."""


@dataclass
class SearchResult:
    """``scores[i, j]`` and ``rows[i, j]`` of result j of query i (NaN / -1 past the end);
    ``ids[i]`` the item ids of query i's results, best first; ``items`` their metadata
    when asked for. ``rows`` are a FAISS version's row numbers; -1 on Milvus."""

    scores: npt.NDArray[np.float32]
    rows: npt.NDArray[np.int64]
    ids: list[list[str]]
    items: list[list[dict[str, Any]]] | None = None


@dataclass(frozen=True)
class VersionInfo:
    """One version of an index location, as ``cnclip index info`` lists it."""

    name: str
    current: bool
    count: int
    deleted: int
    factory: str
    model: ModelRef
    search: Mapping[str, Any] = field(default_factory=dict)
    chosen: Mapping[str, Any] = field(default_factory=dict)
    bytes_per_vector: float | None = None
    created: str = ""

    def describe(self) -> str:
        mark = "*" if self.current else " "
        size = "" if self.bytes_per_vector is None else f", {self.bytes_per_vector} B/vector"
        return (
            f"{mark} {self.name}: {self.count:,} items ({self.deleted:,} deleted), "
            f"{self.factory}, search {dict(self.search) or 'exact'}, "
            f"R@10 {self.chosen.get('R@10', 1.0):.3f}{size}, {self.model.describe()}, "
            f"{self.created}"
        )


@dataclass(frozen=True)
class RecallReport:
    """One version's recall measured against exact search over its stored vectors, and
    the search setting tuned to the target (``report``: :func:`index.build.measure`'s
    shape: ``points``, ``chosen``, ``held_out`` ...)."""

    where: str
    report: dict[str, Any]

    @property
    def chosen(self) -> dict[str, Any]:
        return dict(self.report.get("chosen") or {})


#: Called by ``refresh`` with the model of a version before switching to it; raises
#: (ModelMismatchError) to keep the version in service.
Accept = Callable[[ModelRef], object]


@runtime_checkable
class TextSearcher(Protocol):
    """A text corpus searched by image (image-to-text)."""

    @property
    def count(self) -> int: ...

    def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
    ) -> SearchResult: ...


@runtime_checkable
class IndexBackend(Protocol):
    """An index location, loaded: the version in service and the means to change it."""

    location: str

    @property
    def version(self) -> str:
        """The name of the version in service (``v0003``, ``shop_v0003``)."""
        ...

    @property
    def state(self) -> str:
        """Changes whenever what a search may return changes (cache keys use it)."""
        ...

    @property
    def model(self) -> ModelRef: ...

    @property
    def dim(self) -> int: ...

    @property
    def count(self) -> int:
        """Live items."""
        ...

    @property
    def deleted(self) -> int: ...

    @property
    def factory(self) -> str:
        """What index serves the version (a FAISS factory string, a Milvus index type)."""
        ...

    @property
    def keys(self) -> frozenset[str]:
        """The attributes a filter may name."""
        ...

    @property
    def texts(self) -> TextSearcher | None: ...

    @property
    def writable(self) -> bool:
        """Whether add and remove can change it (a FAISS version directory cannot)."""
        ...

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
        """The ``k`` best items for each float32 ``[n, d]`` query (inner product of unit
        vectors) among those that match ``filter`` (every key, any of a key's values)
        and none of ``exclude`` (no key, none of its values); ``k`` results whenever
        ``k`` items qualify."""
        ...

    @property
    def has_lexical(self) -> bool:
        """Whether :meth:`search_words` can search the items' titles."""
        ...

    def search_words(
        self,
        query: str,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
        exclude: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        """The ``k`` best items for one text by BM25 over their titles (one row; scores
        are BM25, not cosines; fewer than ``k`` when fewer titles share a word), with
        ``filter`` and ``exclude`` as :meth:`search`."""
        ...

    def fetch_vectors(self, ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """The stored vectors of items ``ids`` (``[n, d]``; NaN rows for ids not there)."""
        ...

    def fetch_items(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The records (``{"id", "title", ...attributes}``) of items ``ids``, as search
        results carry them with ``with_metadata`` (None for ids not there)."""
        ...

    def word_coverage(self, text: str, ids: Sequence[str]) -> npt.NDArray[np.float64]:
        """For each item, the IDF-weighted share of ``text``'s words its title holds, in
        [0, 1] (zeros where the backend has no lexical index)."""
        ...

    @property
    def vocabulary(self) -> Mapping[str, tuple[str, ...]]:
        """Text values of the attributes a query may name (colours, kinds, brands), for
        query understanding (:mod:`index.understand`)."""
        ...

    @property
    def calibration(self) -> Calibration | None:
        """How the version in service turns cosines into relevance (None: built before
        calibration existed)."""
        ...

    def add(self, corpus: Any, *, model: ModelRef | None = None, **options: Any) -> str:
        """Add a :class:`index.build.Corpus`; returns the version in service after."""
        ...

    def remove(self, ids: Sequence[str], *, missing_ok: bool = False, **options: Any) -> str:
        """Remove items by id; returns the version in service after."""
        ...

    def versions(self) -> list[VersionInfo]: ...

    def stored(self) -> tuple[list[str], npt.NDArray[np.float32]]:
        """The live items' ids and their vectors as stored ``[n, d]`` (for recall: every
        vector is read, minutes for millions on Milvus)."""
        ...

    def sample_titles(self, n: int, *, seed: int = 0) -> list[str]:
        """Up to ``n`` distinct titles of live items (queries that look like the catalog)."""
        ...

    def evaluate(
        self, *, queries: npt.NDArray[np.float32] | None = None, target: float = 0.95
    ) -> list[RecallReport]:
        """Recall of the version in service against exact search, tuned to ``target``."""
        ...

    def refresh(self, accept: Accept | None = None) -> bool:
        """Switch to the version now current if another process moved it (``accept``
        vets its model first); True when switched."""
        ...

    def ping(self) -> None:
        """Raises :class:`IndexUnavailableError` when the backend cannot be reached."""
        ...

    def close(self) -> None: ...


MAX_K = 2048  # also faiss-gpu's limit: the API's limit on every backend


def check_queries(
    queries: npt.ArrayLike, dim: int, k: int, nprobe: int | None = None
) -> npt.NDArray[np.float32]:
    """``queries`` as a C-contiguous float32 ``[n, dim]`` array, with ``k`` and ``nprobe``
    in range (DataError otherwise)."""
    from runtime.errors import DataError

    try:
        q = np.ascontiguousarray(queries, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"queries must be a float32 [n, {dim}] array ({exc})") from exc
    if q.ndim != 2 or q.shape[1] != dim:
        raise DataError(f"queries must be [n, {dim}], got shape {list(q.shape)}")
    if not np.isfinite(q).all():
        raise DataError("queries contain NaN or infinite values")
    if not 1 <= k <= MAX_K:
        raise DataError(f"k must be between 1 and {MAX_K}, not {k}")
    if nprobe is not None and not 1 <= nprobe <= MAX_K:
        raise DataError(f"nprobe must be between 1 and {MAX_K}, not {nprobe}")
    return q


def is_milvus(location: str | object) -> bool:
    return isinstance(location, str) and location.startswith(MILVUS_SCHEME)
