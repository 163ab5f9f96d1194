"""Indexes sharded by item id: N independent indexes searched in parallel and merged.

A sharded root holds ``shards.json`` and one index root per shard (``shard-000/``,
each with its own versions and ``CURRENT``). An item lives in shard
``crc32(id) % N``: any process can route an add or a removal without asking a
directory. :func:`build_sharded` splits a corpus that way and builds every shard
(each chooses and tunes its own index for its size); :class:`ShardedIndex` has the
search call of :class:`index.search.CatalogIndex`, searching the shards on a thread
pool (FAISS releases the GIL) and merging their top k by score with
:func:`merge_results`, which a service fanning out to shards on other hosts uses
the same way.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.build import Corpus, build_version
from index.search import CatalogIndex, SearchResult
from index.search import load as load_one
from index.update import add_items, remove_items
from index.versions import IndexVersionError
from runtime.errors import DataError
from runtime.identity import ModelRef, check_serves
from runtime.manifests import read_json, write_json

SHARDS = "shards.json"
SHARDS_FORMAT = "cnclip-shards"
HASH = "crc32(id) % shards"


@dataclass(frozen=True)
class ShardSet:
    """A sharded root's ``shards.json``: how many shards, and how an id picks its shard."""

    shards: int
    hash: str = HASH

    def write(self, root: Path) -> None:
        data = {
            "format": SHARDS_FORMAT,
            "format_version": 1,
            "shards": self.shards,
            "hash": self.hash,
        }
        write_json(root / SHARDS, data)

    @classmethod
    def read(cls, root: Path) -> ShardSet:
        # Written without format fields before they existed: read as version 1.
        data = read_json(
            root / SHARDS,
            format=SHARDS_FORMAT,
            version=1,
            error=IndexVersionError,
            what="shard set",
            fix="build the sharded index again",
            legacy=True,
        )
        try:
            shards, hash_ = int(data["shards"]), str(data.get("hash", HASH))
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexVersionError(f"{root / SHARDS}: unreadable ({exc!r})") from exc
        if shards < 1 or hash_ != HASH:
            raise IndexVersionError(f"{root / SHARDS}: {shards} shards by {hash_!r}; not readable")
        return cls(shards, hash_)


def shard_of(item_id: str, shards: int) -> int:
    """The shard of an item: a stable hash of its id, the same in every process."""
    return zlib.crc32(item_id.encode("utf-8")) % shards


def _shard_dir(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:03d}"


def shard_roots(path: str | Path) -> list[Path]:
    """The index roots under ``path``: each shard's for a sharded root, else ``path``."""
    root = Path(path)
    if not (root / SHARDS).is_file():
        return [root]
    return [_shard_dir(root, shard) for shard in range(ShardSet.read(root).shards)]


def _split(corpus: Corpus, shards: int) -> list[Corpus]:
    owner = np.array([shard_of(i, shards) for i in corpus.ids], dtype=np.int64)
    parts = []
    for shard in range(shards):
        rows = np.flatnonzero(owner == shard)
        items = None if corpus.items is None else [corpus.items[int(r)] for r in rows]
        parts.append(Corpus(corpus.vectors[rows], [corpus.ids[int(r)] for r in rows], items))
    return parts


def build_sharded(root: str | Path, corpus: Corpus, shards: int, **options: Any) -> list[Path]:
    """Split ``corpus`` by id into ``shards`` indexes under ``root``; returns their versions.

    ``options`` are those of :func:`index.build.build_version` (``model`` included).
    """
    if shards < 1:
        raise DataError(f"shards must be at least 1, not {shards}")
    root = Path(root)
    parts = _split(corpus, shards)
    empty = [shard for shard, part in enumerate(parts) if not len(part.ids)]
    if empty:
        raise DataError(f"{len(corpus.ids)} items leave shard {empty[0]} empty; use fewer shards")
    versions = [
        build_version(_shard_dir(root, shard), part, **options) for shard, part in enumerate(parts)
    ]
    ShardSet(shards).write(root)
    return versions


def merge_results(results: Sequence[SearchResult], k: int) -> SearchResult:
    """The best ``k`` of several shards' results for the same queries, by score.

    ``rows`` of the merged result are -1: a row number means something only inside
    its shard.
    """
    count = len(results[0].scores)
    scores = np.full((count, k), np.nan, dtype=np.float32)
    with_items = all(r.items is not None for r in results)
    ids: list[list[str]] = []
    items: list[list[dict[str, Any]]] = []
    for q in range(count):
        found = [
            (float(r.scores[q, j]), r.ids[q][j], r.items[q][j] if r.items is not None else {})
            for r in results
            for j in range(len(r.ids[q]))
        ]
        found.sort(key=lambda hit: -hit[0])
        top = found[:k]
        scores[q, : len(top)] = [hit[0] for hit in top]
        ids.append([hit[1] for hit in top])
        items.append([hit[2] for hit in top])
    rows = np.full((count, k), -1, dtype=np.int64)
    return SearchResult(scores, rows, ids, items if with_items else None)


class ShardedIndex:
    """The shards of a sharded root, searched together."""

    def __init__(self, root: Path, *, mmap: bool | None = None, gpu: bool | None = None) -> None:
        count = ShardSet.read(root).shards
        self.root = root
        self.shards: list[CatalogIndex] = [
            load_one(_shard_dir(root, shard), mmap=mmap, gpu=gpu) for shard in range(count)
        ]
        for shard in self.shards[1:]:  # every shard holds vectors of the first one's model
            check_serves(shard.model, self.shards[0].model, shard.directory)
        self.dim = self.shards[0].dim
        self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="shard")

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def model(self) -> ModelRef:
        return self.shards[0].model

    def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        *,
        nprobe: int | None = None,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
    ) -> SearchResult:
        """As :meth:`CatalogIndex.search`, over every shard at once."""
        futures = [
            self._pool.submit(
                shard.search, queries, k, nprobe=nprobe, filter=filter, with_metadata=with_metadata
            )
            for shard in self.shards
        ]
        return merge_results([f.result() for f in futures], k)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for shard in self.shards:
            shard.close()


def load_sharded(
    root: str | Path, *, mmap: bool | None = None, gpu: bool | None = None
) -> ShardedIndex:
    return ShardedIndex(Path(root), mmap=mmap, gpu=gpu)


def add_sharded(root: str | Path, corpus: Corpus, **options: Any) -> None:
    """Route ``corpus`` to its shards and add it there (a new version in each touched shard).

    Every shard is checked before any is changed: an id already present anywhere stops
    the whole addition.
    """
    root = Path(root)
    sharded = ShardedIndex(root)
    try:
        if options.get("model") is not None:
            check_serves(sharded.model, options["model"], root)
        parts = _split(corpus, len(sharded.shards))
        for catalog, part in zip(sharded.shards, parts, strict=True):
            present = catalog.store.rows_of(list(part.ids))
            if present:
                shown = ", ".join(sorted(present)[:5])
                raise DataError(f"{len(present)} ids are already in the index ({shown})")
    finally:
        sharded.close()
    for shard, part in enumerate(parts):
        if len(part.ids):
            add_items(_shard_dir(root, shard), part, **options)


def remove_sharded(
    root: str | Path, ids: Sequence[str], *, missing_ok: bool = False, **options: Any
) -> None:
    """Remove ``ids`` from the shards that hold them (all checked before any change)."""
    root = Path(root)
    sharded = ShardedIndex(root)
    by_shard: dict[int, list[str]] = {}
    try:
        for item_id in ids:
            by_shard.setdefault(shard_of(item_id, len(sharded.shards)), []).append(item_id)
        missing = [
            item_id
            for shard, part in by_shard.items()
            for item_id in sorted(set(part) - set(sharded.shards[shard].store.rows_of(part)))
        ]
    finally:
        sharded.close()
    if missing and not missing_ok:
        raise DataError(f"{len(missing)} ids are not in the index ({', '.join(missing[:5])})")
    for shard, part in by_shard.items():
        remove_items(_shard_dir(root, shard), part, missing_ok=True, **options)
