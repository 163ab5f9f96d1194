"""Catalog embeddings to FAISS index versions, and the search API the service uses.

``index.load(DIR)`` returns a :class:`index.search.CatalogIndex` (or, for a root
written by :func:`index.shards.build_sharded`, a :class:`index.shards.ShardedIndex`
with the same search call); ``index.add`` and ``index.remove`` change a root, sharded or
not; ``index.check_bundle`` says from the manifests alone whether a bundle may serve it.
Building, evaluating and changing versions live in :mod:`index.build`,
:mod:`index.recall` and :mod:`index.update` (``cnclip index ...`` on the command line).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from index.build import Corpus
from index.search import CatalogIndex, SearchResult
from index.search import load as load_version
from index.shards import (
    SHARDS,
    ShardedIndex,
    ShardSet,
    add_sharded,
    load_sharded,
    remove_sharded,
    shard_roots,
)
from index.update import add_items, remove_items
from index.versions import IndexManifest, resolve
from runtime.bundle_manifest import bundle_ref
from runtime.identity import ModelRef, check_serves


def load(
    path: str | Path, *, mmap: bool | None = None, gpu: bool | None = None
) -> CatalogIndex | ShardedIndex:
    """The index at ``path``: a version, a root (its current version) or a sharded root."""
    if is_sharded(path):
        return load_sharded(path, mmap=mmap, gpu=gpu)
    return load_version(path, mmap=mmap, gpu=gpu)


def is_sharded(path: str | Path) -> bool:
    return (Path(path) / SHARDS).is_file()


def add(path: str | Path, corpus: Corpus, **options: Any) -> None:
    """Add ``corpus`` to the index root at ``path``: a new version of the root, or of each
    shard it touches (``options``: those of :func:`index.update.add_items`)."""
    if is_sharded(path):
        add_sharded(path, corpus, **options)
    else:
        add_items(path, corpus, **options)


def remove(path: str | Path, ids: Sequence[str], **options: Any) -> None:
    """Remove ``ids`` from the index root at ``path`` (sharded or not; ``options``: those
    of :func:`index.update.remove_items`)."""
    if is_sharded(path):
        remove_sharded(path, ids, **options)
    else:
        remove_items(path, ids, **options)


def index_model(path: str | Path) -> ModelRef:
    """The model whose vectors the index at ``path`` holds (a version, a root or a sharded
    root, whose shards must agree), read from the manifests alone."""
    roots = shard_roots(path)
    models = [IndexManifest.read(resolve(root)).model for root in roots]
    for root, model in zip(roots[1:], models[1:], strict=True):
        check_serves(model, models[0], root)
    return models[0]


def check_bundle(path: str | Path, bundle: str | Path) -> str | None:
    """Whether the bundle directory ``bundle`` may serve the index at ``path``, from the
    manifests alone (no session opened, nothing loaded): None, or a note when it is
    another bundle of the same model; :class:`runtime.identity.ModelMismatchError` when
    it is another model (:func:`runtime.identity.check_serves`)."""
    return check_serves(index_model(path), bundle_ref(bundle), path)


__all__ = [
    "CatalogIndex",
    "Corpus",
    "SearchResult",
    "ShardSet",
    "ShardedIndex",
    "add",
    "check_bundle",
    "index_model",
    "is_sharded",
    "load",
    "remove",
]
