"""FAISS version directories behind the backend protocol (:mod:`index.backend`).

A :class:`DirectoryIndex` is an index root (versions and ``CURRENT``) or one version
directory, loaded: searches go to the version in service (:class:`index.search.
CatalogIndex`); ``add`` and ``remove`` write a new version and switch to it, one change
at a time across processes (a lock file in the root), so several service workers may
change one root; ``refresh`` loads the version ``CURRENT`` names when another process
moved it. A version being switched away from stays usable by the searches that hold
it, and is freed when the last of them ends.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.backend import Accept, RecallReport, SearchResult, TextSearcher, VersionInfo
from index.relevance import Calibration
from index.search import CatalogIndex
from index.search import load as load_version
from index.versions import (
    CURRENT,
    MANIFEST,
    IndexManifest,
    IndexVersionError,
    current_name,
    resolve,
    versions,
)
from runtime.identity import ModelRef

log = logging.getLogger("cnclip.index")
LOCK = ".service.lock"


@contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """One catalog change at a time on ``root``, across threads, workers and processes."""
    with open(root / LOCK, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def version_info(directory: Path, current: bool) -> VersionInfo:
    manifest = IndexManifest.read(directory)
    return VersionInfo(
        name=directory.name,
        current=current,
        count=manifest.count,
        deleted=manifest.deleted,
        factory=manifest.factory,
        model=manifest.model,
        search=dict(manifest.search),
        chosen=dict(manifest.chosen),
        bytes_per_vector=manifest.bytes_per_vector,
        created=manifest.created,
    )


class DirectoryIndex:
    """An index root or version directory, loaded (see the module documentation)."""

    def __init__(
        self, path: str | Path, *, mmap: bool | None = None, gpu: bool | None = None
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._options: dict[str, Any] = {"mmap": mmap, "gpu": gpu}
        self.is_root = not (self.path / MANIFEST).is_file()
        self._marker = self._read_marker()
        self.current: CatalogIndex = load_version(self.path, **self._options)
        self._keys: tuple[CatalogIndex, frozenset[str]] | None = None
        self._calibration: tuple[CatalogIndex, Calibration | None] | None = None

    def _read_marker(self) -> str:
        if not self.is_root:
            return self.path.name
        name = current_name(self.path)
        if name is None:
            resolve(self.path)  # the error that says what is wrong
            raise IndexVersionError(f"{self.path}: no {CURRENT}")
        return name

    # -- what is served ---------------------------------------------------------------

    @property
    def version(self) -> str:
        return self.current.directory.name

    @property
    def state(self) -> str:
        return self.version

    @property
    def model(self) -> ModelRef:
        return self.current.model

    @property
    def dim(self) -> int:
        return self.current.dim

    @property
    def count(self) -> int:
        return self.current.count

    @property
    def deleted(self) -> int:
        return len(self.current.deleted)

    @property
    def factory(self) -> str:
        return self.current.manifest.factory

    @property
    def keys(self) -> frozenset[str]:
        """Read from the version once (the service asks at every poll)."""
        current = self.current
        cached = self._keys
        if cached is None or cached[0] is not current:
            cached = (current, frozenset(current.store.attribute_keys()))
            self._keys = cached
        return cached[1]

    @property
    def texts(self) -> TextSearcher | None:
        return self.current.texts

    @property
    def writable(self) -> bool:
        return self.is_root

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
        return self.current.search(
            queries,
            k,
            nprobe=nprobe,
            ef_search=ef_search,
            filter=filter,
            with_metadata=with_metadata,
            exclude=exclude,
        )

    @property
    def has_lexical(self) -> bool:
        return self.current.has_lexical

    def search_words(
        self,
        query: str,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
        exclude: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        return self.current.search_words(
            query, k, filter=filter, with_metadata=with_metadata, exclude=exclude
        )

    def fetch_vectors(self, ids: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.current.vectors_of(ids)

    def fetch_items(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        return self.current.items_of(ids)

    def word_coverage(self, text: str, ids: Sequence[str]) -> npt.NDArray[np.float64]:
        return self.current.word_coverage(text, ids)

    @property
    def vocabulary(self) -> Mapping[str, tuple[str, ...]]:
        return self.current.vocabulary()

    @property
    def calibration(self) -> Calibration | None:
        """Read from the version once."""
        current = self.current
        cached = self._calibration
        if cached is None or cached[0] is not current:
            cached = (current, Calibration.from_dict(current.manifest.relevance))
            self._calibration = cached
        return cached[1]

    # -- changes ----------------------------------------------------------------------

    def _root(self) -> Path:
        if not self.is_root:
            raise IndexVersionError(
                f"{self.path} is a version directory, which never changes; change the index "
                "root (the directory holding CURRENT)"
            )
        return self.path

    def add(self, corpus: Any, *, model: ModelRef | None = None, **options: Any) -> str:
        """A new version with ``corpus`` added (:func:`index.update.add_items`'s options),
        switched to unless ``make_current=False``."""
        from index.update import add_items

        root = self._root()
        with exclusive(root):
            add_items(root, corpus, model=model, **options)
        self.refresh()
        return self.version

    def remove(self, ids: Sequence[str], *, missing_ok: bool = False, **options: Any) -> str:
        """A new version without ``ids`` (:func:`index.update.remove_items`'s options)."""
        from index.update import remove_items

        root = self._root()
        with exclusive(root):
            remove_items(root, list(ids), missing_ok=missing_ok, **options)
        self.refresh()
        return self.version

    def versions(self) -> list[VersionInfo]:
        if not self.is_root:
            return [version_info(self.path, True)]
        current = current_name(self.path)
        return [version_info(self.path / name, name == current) for name in versions(self.path)]

    def stored(self) -> tuple[list[str], npt.NDArray[np.float32]]:
        current = self.current
        live = np.flatnonzero(current.live_mask())
        ids = [current.store.id_of(int(row)) for row in live]
        return ids, np.ascontiguousarray(current.vectors()[live])

    def sample_titles(self, n: int, *, seed: int = 0) -> list[str]:
        return self.current.sample_titles(n, seed=seed)

    def evaluate(
        self, *, queries: npt.NDArray[np.float32] | None = None, target: float = 0.95
    ) -> list[RecallReport]:
        from index.recall import evaluate_index

        return [
            RecallReport(str(r.directory), r.report)
            for r in evaluate_index(self.current.directory, queries=queries, target=target)
        ]

    def refresh(self, accept: Accept | None = None) -> bool:
        """Load the version ``CURRENT`` names if it moved. A version that cannot be served
        (broken, or refused by ``accept``) raises, and the old one stays in service until
        ``CURRENT`` moves again."""
        if not self.is_root:
            return False
        marker = self._read_marker()
        if marker == self._marker:
            return False
        self._marker = marker  # a broken version is not retried until CURRENT moves
        loaded = load_version(self.path, **self._options)
        try:
            if accept is not None:
                accept(loaded.model)
        except BaseException:
            loaded.close()
            raise
        self.current = loaded
        return True

    def ping(self) -> None:
        """Nothing to reach: the files are local."""

    def close(self) -> None:
        self.current.close()


def drop_version(root: str | Path, name: str) -> None:
    """Delete the version ``name`` of the index root ``root`` (never the current one)."""
    root = Path(root)
    if name == current_name(root):
        raise IndexVersionError(
            f"{root}: {name} is the current version; switch to another one first"
        )
    if name not in versions(root):
        have = ", ".join(versions(root)) or "none"
        raise IndexVersionError(f"{root}: no version {name!r} (versions: {have})")
    with exclusive(root):
        shutil.rmtree(root / name)
