"""Catalog embeddings to FAISS index versions, and the search API the service uses.

``index.load(DIR)`` returns a :class:`index.search.CatalogIndex` (or, for a root
written by :func:`index.shards.build_sharded`, a :class:`index.shards.ShardedIndex`
with the same search call); building,
evaluating and changing versions live in :mod:`index.build`, :mod:`index.evaluate`
and :mod:`index.update` (``cnclip index ...`` on the command line).
"""

from pathlib import Path

from index.search import CatalogIndex, SearchResult
from index.search import load as load_version
from index.shards import SHARDS, ShardedIndex, load_sharded


def load(
    path: str | Path, *, mmap: bool | None = None, gpu: bool | None = None
) -> CatalogIndex | ShardedIndex:
    """The index at ``path``: a version, a root (its current version) or a sharded root."""
    if (Path(path) / SHARDS).is_file():
        return load_sharded(path, mmap=mmap, gpu=gpu)
    return load_version(path, mmap=mmap, gpu=gpu)


__all__ = ["CatalogIndex", "SearchResult", "ShardedIndex", "load"]
