"""Image-text datasets, without torch: readers and writers of every format cnclip takes.

Official tsv/jsonl and LMDB splits (:mod:`sources.official`), WebDataset shards
(:mod:`sources.wds`), jsonl catalogs (:mod:`sources.catalog`) and ImageFolder trees or
archives (:mod:`sources.imagefolder`). Every reader turns its format into
:class:`~sources.records.Record` values (undecoded image bytes plus a caption), so the
trainer's loader, evaluation and the format converters work the same way on all of them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from runtime.errors import DataError
from sources.records import IndexedSource, Record, ShardedSource

__all__ = ["SOURCE_KINDS", "IndexedSource", "Record", "ShardedSource", "open_source"]

#: The source kinds of :func:`open_source`, and what ``path`` names for each.
SOURCE_KINDS = {
    "official": "a directory of {split}_imgs.tsv and {split}_texts.jsonl (option split=)",
    "lmdb": "an official LMDB split directory holding pairs/ and imgs/",
    "wds": "a directory of WebDataset .tar shards, or one .tar file",
    "catalog": "a jsonl catalog of {id, image, title} (option root=)",
    "imagefolder": "a folder or .tar/.tar.gz/.tgz archive of class folders (option class_names=)",
}


def _constructor(kind: str) -> Callable[..., IndexedSource | ShardedSource]:
    # Imported here, so that importing sources loads no reader (nor lmdb).
    if kind == "official":
        from sources.official import OfficialSource

        return OfficialSource
    if kind == "lmdb":
        from sources.official import LmdbSource

        return LmdbSource
    if kind == "wds":
        from sources.wds import WdsSource

        return WdsSource
    if kind == "catalog":
        from sources.catalog import CatalogSource

        return CatalogSource
    from sources.imagefolder import ImageFolderSource

    return ImageFolderSource


def open_source(
    kind: str, path: str | os.PathLike[str], **options: Any
) -> IndexedSource | ShardedSource:
    """Open the reader of ``kind`` on ``path`` (see ``SOURCE_KINDS``) with its ``options``.

    ``open_source("official", data_dir, split="valid")``, ``open_source("lmdb", dir)``,
    ``open_source("wds", dir)``, ``open_source("catalog", jsonl, root=...)``,
    ``open_source("imagefolder", root, class_names=...)``. DataError for an unknown
    kind or option (listing the valid ones) and for whatever the reader refuses.
    """
    if kind not in SOURCE_KINDS:
        raise DataError(f"unknown data source kind {kind!r}; use one of {', '.join(SOURCE_KINDS)}")
    constructor = _constructor(kind)
    parameters = list(inspect.signature(constructor).parameters.values())[1:]
    names = [p.name for p in parameters]
    unknown = sorted(set(options) - set(names))
    missing = [p.name for p in parameters if p.default is p.empty and p.name not in options]
    valid = f"its options: {', '.join(names) or 'none'}"
    if unknown:
        raise DataError(f"data source {kind!r} has no option {', '.join(unknown)}; {valid}")
    if missing:
        raise DataError(f"data source {kind!r} needs option {', '.join(missing)}; {valid}")
    return constructor(path, **options)
