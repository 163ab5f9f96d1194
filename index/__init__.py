"""Catalog embeddings to indexes, and the backend protocol the service and the CLI use.

``index.load(LOCATION)`` returns an :class:`index.backend.IndexBackend`: a
:class:`index.local.DirectoryIndex` for FAISS version directories (an index root, or
one version directory: the default, for one machine) or an :class:`index.milvus.
MilvusIndex` for ``milvus://HOST:PORT/NAME`` (catalogs beyond one machine). Both
search, add, remove, list their versions, measure recall and follow a version
switched by another process. ``index.build_index`` writes a new version at either kind of
location; ``index.switch`` and ``index.drop_version`` move between versions;
``index.check_bundle`` says from the manifests alone whether a bundle may serve it.
Building, evaluating and changing FAISS versions live in :mod:`index.build`,
:mod:`index.recall` and :mod:`index.update`; Milvus's in :mod:`index.milvus`.
Catalog images become embeddings in a resumable work directory through
:func:`index.embed.embed_catalog` (one machine) or :func:`index.ray_embed.
embed_catalog_ray` (a Ray cluster); ``cnclip index build --work-dir`` builds from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from index.backend import (
    IndexBackend,
    IndexUnavailableError,
    RecallReport,
    SearchResult,
    VersionInfo,
    is_milvus,
)
from index.build import Corpus
from index.versions import IndexManifest, resolve
from runtime.bundle_manifest import bundle_ref
from runtime.identity import ModelRef, check_serves


def load(
    location: str | Path, *, mmap: bool | None = None, gpu: bool | None = None
) -> IndexBackend:
    """The index at ``location``: a FAISS root or version directory, or ``milvus://``.

    ``mmap`` and ``gpu`` apply to FAISS directories (:class:`index.search.CatalogIndex`).

    Raises:
        IndexVersionError: no index there, or an unreadable one.
        IndexUnavailableError: a Milvus server that cannot be reached.
    """
    if is_milvus(location):
        from index.milvus import load as load_milvus

        return load_milvus(str(location))
    from index.local import DirectoryIndex

    return DirectoryIndex(location, mmap=mmap, gpu=gpu)


def build_index(location: str | Path, corpus: Corpus, **options: Any) -> str:
    """A new version of ``corpus`` at ``location``; returns the version's name.

    FAISS directories take :func:`index.build.build_version`'s options (``texts``,
    ``factory``, ``profile`` ...); Milvus :func:`index.milvus.build_collection`'s
    (``index_type``, ``params``, ``partition_key`` ...). Both take ``model``,
    ``target``, ``queries``, ``progress`` and ``make_current``.
    """
    if is_milvus(location):
        from index.milvus import build_collection

        return build_collection(str(location), corpus, **options)
    from index.build import build_version

    return build_version(location, corpus, **options).name


def switch(location: str | Path, version: str) -> None:
    """Serve ``version`` at ``location`` (``CURRENT`` or the Milvus alias moves)."""
    if is_milvus(location):
        from index.milvus import switch as switch_milvus

        switch_milvus(str(location), version)
        return
    from index.versions import switch as switch_directory

    switch_directory(Path(location), version)


def drop_version(location: str | Path, version: str) -> None:
    """Delete one version that is not being served."""
    if is_milvus(location):
        from index.milvus import drop_version as drop_milvus

        drop_milvus(str(location), version)
        return
    from index.local import drop_version as drop_directory

    drop_directory(location, version)


def index_model(location: str | Path) -> ModelRef:
    """The model whose vectors the index at ``location`` holds, read from its manifest
    alone (nothing loaded)."""
    if is_milvus(location):
        from index.milvus import Connection, MilvusLocation, current_collection, read_manifest

        where = MilvusLocation.parse(str(location))
        connection = Connection(where)
        try:
            name = current_collection(connection)
            if name is None:
                from index.versions import IndexVersionError

                raise IndexVersionError(f"{where}: no such index (no alias {where.name!r})")
            return read_manifest(connection, name).model
        finally:
            connection.close()
    return IndexManifest.read(resolve(location)).model


def check_bundle(location: str | Path, bundle: str | Path) -> str | None:
    """Whether the bundle directory ``bundle`` may serve the index at ``location``, from
    the manifests alone (no session opened, nothing loaded): None, or a note when it is
    another bundle of the same model; :class:`runtime.identity.ModelMismatchError` when
    it is another model (:func:`runtime.identity.check_serves`)."""
    return check_serves(index_model(location), bundle_ref(bundle), location)


__all__ = [
    "Corpus",
    "IndexBackend",
    "IndexUnavailableError",
    "RecallReport",
    "SearchResult",
    "VersionInfo",
    "build_index",
    "check_bundle",
    "drop_version",
    "index_model",
    "is_milvus",
    "load",
    "switch",
]
