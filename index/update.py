"""Change an index without rebuilding it: add items, remove items, compact.

Each change writes a new version beside the current one (:mod:`index.versions`) and
measures its recall again, as a build does; the old version stays on disk, and
``CURRENT`` moves to the new one only when it is complete. Unchanged files (the
stored vectors, and the FAISS index itself when only removing) are hard links.

Removal leaves the vectors in the FAISS index and lists their rows in
``deleted.npy``; every search excludes them with an ID selector. That works for every
index type (HNSW and re-ranked indexes cannot remove vectors) and costs nothing
until deletions pile up: ``compact`` then rebuilds the index from the live vectors,
retraining it, and :func:`remove_items` says when it is time.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index.build import (
    Corpus,
    add_vectors,
    build_into,
    check_vectors,
    measure,
    search_settings,
)
from index.lexical import LEXICAL_DIR, version_lexicon, write_lexical
from index.search import load_vectors
from index.store import IDS, ITEMS, ItemStore, append_items, mark_deleted, read_ids
from index.versions import (
    DELETED,
    INDEX,
    TEXTS,
    VECTORS,
    IndexManifest,
    link_or_copy,
    new_version,
    now,
    resolve,
    switch,
)
from runtime.errors import DataError
from runtime.identity import ModelRef, check_serves

COMPACT_AT = 0.2  # suggest compaction when this share of rows is deleted


def _link(source: str, target: str) -> None:
    link_or_copy(Path(source), Path(target))


def _share(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` made of hard links (files are never modified)."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link)
    else:
        link_or_copy(source, target)


def _live(total: int, deleted: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    live = np.ones(total, dtype=bool)
    live[deleted] = False
    return np.flatnonzero(live).astype(np.int64)


def _finish(
    staging: Path,
    manifest: IndexManifest,
    index: Any,
    deleted: npt.NDArray[np.int64],
    target: float,
) -> None:
    """Measure the new version's recall (deleted rows excluded) and write its manifest."""
    vectors = load_vectors(staging)
    total = manifest.total
    report = measure(index, vectors, None, target, valid=_live(total, deleted))
    manifest.replace(
        search=search_settings(report),
        recall=report,
        count=total - len(deleted),
        deleted=len(deleted),
        created=now(),
    ).write(staging)


def _relex(current: Path, staging: Path, total: int) -> None:
    """The lexical index of the new version's rows, when the current one has one (or
    the new items bring the first titles), with the current version's lexicon."""
    store = ItemStore(staging)
    try:
        meta = store.metadata(list(range(total)))
    finally:
        store.close()
    write_lexical(
        staging, [meta.get(row, {}) for row in range(total)], version_lexicon(current) or ()
    )


def add_items(
    root: str | Path,
    corpus: Corpus,
    *,
    model: ModelRef | None = None,
    target: float = 0.95,
    progress: bool = True,
    make_current: bool = True,
) -> Path:
    """A new version with ``corpus`` added to the current one; returns its path.

    ``model`` is the bundle that embedded ``corpus``; it must be of the index's model
    (:func:`runtime.identity.check_serves`), any precision.

    Raises:
        DataError: an id that is already live in the index, or a different dimension.
        ModelMismatchError: the index was built with another model.
    """
    root = Path(root)
    current = resolve(root)
    manifest = IndexManifest.read(current)
    if model is not None:
        check_serves(manifest.model, model, current)
    vectors = check_vectors(corpus.vectors, corpus.ids)
    if vectors.shape[1] != manifest.dim:
        raise DataError(
            f"new embeddings have {vectors.shape[1]} dimensions, the index {manifest.dim}"
        )
    store = ItemStore(current)
    try:
        present = store.rows_of(list(corpus.ids))
    finally:
        store.close()
    if present:
        shown = ", ".join(sorted(present)[:5])
        raise DataError(f"{len(present)} ids are already in the index ({shown}); remove them first")
    total = manifest.total
    with new_version(root) as (staging, name):
        (staging / VECTORS).mkdir()
        parts = sorted((current / VECTORS).glob("part-*.npy"))
        for part in parts:
            link_or_copy(part, staging / VECTORS / part.name)
        np.save(staging / VECTORS / f"part-{len(parts):05d}.npy", vectors)
        old_ids = read_ids(current / IDS)
        new_ids = np.array([i.encode("utf-8") for i in corpus.ids])
        width = max(old_ids.dtype.itemsize, new_ids.dtype.itemsize)
        np.save(
            staging / IDS,
            np.concatenate([old_ids.astype(f"S{width}"), new_ids.astype(f"S{width}")]),
        )
        shutil.copy2(current / ITEMS, staging / ITEMS)
        append_items(staging / ITEMS, total, list(corpus.ids), corpus.items)
        _relex(current, staging, total + len(vectors))
        _share(current / DELETED, staging / DELETED)
        if (current / TEXTS).is_dir():
            _share(current / TEXTS, staging / TEXTS)
        index = faiss.read_index(str(current / INDEX))
        add_vectors(index, vectors, total, progress)
        faiss.write_index(index, str(staging / INDEX))
        size = (staging / INDEX).stat().st_size
        manifest = manifest.replace(
            total=total + len(vectors),
            parent=current.name,
            bytes_per_vector=round(size / (total + len(vectors)), 1),
        )
        _finish(staging, manifest, index, np.load(staging / DELETED), target)
    if make_current:
        switch(root, name)
    return root / name


def remove_items(
    root: str | Path,
    ids: Sequence[str],
    *,
    missing_ok: bool = False,
    target: float = 0.95,
    make_current: bool = True,
) -> Path:
    """A new version without ``ids``; returns its path.

    Raises:
        DataError: an id that is not live in the index (unless ``missing_ok``).
    """
    root = Path(root)
    current = resolve(root)
    manifest = IndexManifest.read(current)
    store = ItemStore(current)
    try:
        rows = store.rows_of(list(ids))
    finally:
        store.close()
    missing = sorted(set(ids) - set(rows))
    if missing and not missing_ok:
        shown = ", ".join(missing[:5])
        raise DataError(f"{len(missing)} ids are not in the index ({shown})")
    deleted = np.union1d(np.load(current / DELETED), np.fromiter(rows.values(), dtype=np.int64))
    with new_version(root) as (staging, name):
        for part in (VECTORS, IDS, INDEX):
            _share(current / part, staging / part)
        if (current / LEXICAL_DIR).is_dir():  # deleted rows are masked at search
            _share(current / LEXICAL_DIR, staging / LEXICAL_DIR)
        if (current / TEXTS).is_dir():
            _share(current / TEXTS, staging / TEXTS)
        shutil.copy2(current / ITEMS, staging / ITEMS)
        mark_deleted(staging / ITEMS, list(rows.values()))
        np.save(staging / DELETED, deleted.astype(np.int64))
        index = faiss.read_index(str(current / INDEX), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        _finish(staging, manifest.replace(parent=current.name), index, deleted, target)
    if make_current:
        switch(root, name)
    share = len(deleted) / manifest.total
    if share >= COMPACT_AT:
        print(
            f"{100 * share:.0f}% of the index's rows are deleted: run cnclip index compact",
            file=sys.stderr,
        )
    return root / name


def compact(
    root: str | Path,
    *,
    factory: str | None = None,
    profile: str | None = None,
    target: float = 0.95,
    progress: bool = True,
    make_current: bool = True,
) -> Path:
    """A new version rebuilt (and retrained) from the live items only; returns its path.

    The factory is chosen again for the live count when ``profile`` is given, kept
    when neither ``factory`` nor ``profile`` is.
    """
    root = Path(root)
    current = resolve(root)
    manifest = IndexManifest.read(current)
    deleted = np.load(current / DELETED)
    live = _live(manifest.total, deleted)
    if not len(live):
        raise DataError("every item is deleted; build a new index instead")
    store = ItemStore(current)
    try:
        ids = [store.id_of(int(r)) for r in live]
        meta = store.metadata(live.tolist())
    finally:
        store.close()
    items = [meta[int(r)] for r in live]
    vectors = np.ascontiguousarray(load_vectors(current)[live])
    keep = None if profile is not None else factory or manifest.factory
    with new_version(root) as (staging, name):
        built = build_into(
            staging,
            Corpus(vectors, ids, items),
            model=manifest.model,
            factory=keep,
            profile=profile or "quality",
            target=target,
            progress=progress,
            lexicon=version_lexicon(current) or (),
        )
        if (current / TEXTS).is_dir():
            _share(current / TEXTS, staging / TEXTS)
        built.replace(parent=current.name).write(staging)
    if make_current:
        switch(root, name)
    return root / name
