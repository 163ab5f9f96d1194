"""Item ids and metadata of an index version, on disk: no catalog in Python dicts.

- ``ids.npy``: the string id of every row (the FAISS index's internal id is the row),
  UTF-8 in a fixed-width byte array, memory-mapped: turning search results into ids
  costs a few microseconds whatever the catalog size.
- ``items.sqlite``: one row per item (``row``, ``id``, ``title``, the other attributes
  as JSON, ``deleted``; an id is unique among live items, so a removed item may come
  back) and an ``attributes`` table (``key``, ``value``, ``row``)
  indexed on (key, value), so a filter such as ``{"category": "鞋"}`` becomes the
  sorted rows that match, through SQLite, without scanning the catalog.

Attribute values are matched by their JSON form (``"鞋"``, ``42``, ``true``); a list
value (tags) matches each of its elements. Opened read-only, one connection per
thread, so concurrent searches never share a cursor.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.understand import vocabulary_of
from runtime.errors import DataError

IDS = "ids.npy"
ITEMS = "items.sqlite"
MAX_ID_BYTES = 512

_SCHEMA = """
CREATE TABLE items (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    title TEXT,
    attributes TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE attributes (key TEXT NOT NULL, value TEXT NOT NULL, row INTEGER NOT NULL);
CREATE UNIQUE INDEX items_live_id ON items (id) WHERE deleted = 0;
CREATE INDEX items_id ON items (id);
"""
_ATTRIBUTE_INDEX = "CREATE INDEX attributes_key_value ON attributes (key, value, row)"


def write_ids(path: Path, ids: Sequence[str]) -> None:
    """``ids`` as a fixed-width UTF-8 array (``.npy``)."""
    encoded = [i.encode("utf-8") for i in ids]
    width = max((len(e) for e in encoded), default=1)
    if width > MAX_ID_BYTES:
        raise DataError(f"an item id is {width} bytes long; ids are limited to {MAX_ID_BYTES}")
    np.save(path, np.array(encoded, dtype=f"S{max(width, 1)}"))


def read_ids(path: Path) -> npt.NDArray[np.bytes_]:
    ids: npt.NDArray[np.bytes_] = np.load(path, mmap_mode="r")
    return ids


def _json_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _attribute_rows(row: int, attributes: Mapping[str, Any]) -> Iterable[tuple[str, str, int]]:
    for key, value in attributes.items():
        values = value if isinstance(value, list) else [value]
        for element in values:
            if isinstance(element, str | int | float | bool):
                yield key, _json_value(element), row


def create_store(
    path: Path,
    first_row: int,
    ids: Sequence[str],
    items: Sequence[Mapping[str, Any]] | None,
) -> None:
    """A new ``items.sqlite`` holding rows ``first_row ..`` (see :func:`append_items`)."""
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA)
    append_items(path, first_row, ids, items)
    with sqlite3.connect(path) as db:
        db.execute(_ATTRIBUTE_INDEX)


def append_items(
    path: Path,
    first_row: int,
    ids: Sequence[str],
    items: Sequence[Mapping[str, Any]] | None,
) -> None:
    """Rows ``first_row, first_row + 1, ...`` for ``ids``, with their metadata.

    ``items[i]`` is the catalog line of ``ids[i]``: ``title`` and every key other
    than ``id`` and ``image`` become its attributes.
    """
    if items is not None and len(items) != len(ids):
        raise DataError(f"{len(items)} metadata records for {len(ids)} ids")
    db = sqlite3.connect(path)
    try:
        with db:
            for start in range(0, len(ids), 10_000):
                rows: list[tuple[int, str, str | None, str]] = []
                attributes: list[tuple[str, str, int]] = []
                for offset, item_id in enumerate(ids[start : start + 10_000]):
                    row = first_row + start + offset
                    meta = dict(items[start + offset]) if items is not None else {}
                    title = meta.pop("title", None)
                    meta.pop("id", None)
                    meta.pop("image", None)
                    text = _json_value(meta)
                    rows.append((row, item_id, None if title is None else str(title), text))
                    attributes.extend(_attribute_rows(row, meta))
                try:
                    db.executemany(
                        "INSERT INTO items (row, id, title, attributes) VALUES (?, ?, ?, ?)", rows
                    )
                except sqlite3.IntegrityError as exc:
                    raise DataError(f"duplicate item id among those added ({exc})") from exc
                db.executemany("INSERT INTO attributes VALUES (?, ?, ?)", attributes)
    finally:
        db.close()


def mark_deleted(path: Path, rows: Sequence[int]) -> None:
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany("UPDATE items SET deleted = 1 WHERE row = ?", [(int(r),) for r in rows])
    finally:
        db.close()


class ItemStore:
    """Read-only access to a version's ids and metadata, safe across threads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ids = read_ids(directory / IDS)
        self._uri = f"file:{directory / ITEMS}?mode=ro"
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            self._local.db = db
        return db

    def id_of(self, row: int) -> str:
        return bytes(self.ids[row]).decode("utf-8")

    def rows_of(self, ids: Sequence[str], include_deleted: bool = False) -> dict[str, int]:
        """Rows of the ``ids`` present (deleted ones only with ``include_deleted``)."""
        out: dict[str, int] = {}
        db = self._db()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id, row FROM items WHERE id IN ({marks})"
            if not include_deleted:
                query += " AND deleted = 0"
            out.update({str(i): int(r) for i, r in db.execute(query, chunk)})
        return out

    def metadata(self, rows: Sequence[int]) -> dict[int, dict[str, Any]]:
        """``{row: {"id", "title", ...attributes}}`` for the given rows."""
        out: dict[int, dict[str, Any]] = {}
        db = self._db()
        wanted = sorted({int(r) for r in rows if r >= 0})
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT row, id, title, attributes FROM items WHERE row IN ({marks})"
            for row, item_id, title, attributes in db.execute(query, chunk):
                record: dict[str, Any] = {"id": item_id}
                if title is not None:
                    record["title"] = title
                record.update(json.loads(attributes))
                out[int(row)] = record
        return out

    def attribute_keys(self) -> set[str]:
        """Every attribute name a filter can use."""
        return {str(k) for (k,) in self._db().execute("SELECT DISTINCT key FROM attributes")}

    def vocabulary(self, max_values: int) -> dict[str, tuple[str, ...]]:
        """The text values of live items' attributes that queries may name
        (:func:`index.understand.vocabulary_of`'s rule)."""
        query = (
            "SELECT key, value, COUNT(*) FROM attributes WHERE row IN "
            "(SELECT row FROM items WHERE deleted = 0) AND value LIKE '\"%' GROUP BY key, value"
        )
        counts: dict[str, dict[str, int]] = {}
        for key, value, count in self._db().execute(query):
            text = json.loads(value)
            if isinstance(text, str):
                counts.setdefault(str(key), {})[text] = int(count)
        return vocabulary_of(counts, max_values)

    def matching_any(self, conditions: Mapping[str, Any]) -> npt.NDArray[np.int64]:
        """Sorted live rows that match at least one key of ``conditions`` (the rows an
        exclusion removes)."""
        parts = [self.matching({key: wanted}) for key, wanted in conditions.items()]
        if not parts:
            raise DataError("an exclusion needs at least one attribute")
        return np.unique(np.concatenate(parts)).astype(np.int64)

    def matching(self, conditions: Mapping[str, Any]) -> npt.NDArray[np.int64]:
        """Sorted live rows whose attributes match every key (any of a key's values)."""
        if not conditions:
            raise DataError("a filter needs at least one attribute")
        db = self._db()
        clauses, params = [], []
        for key, wanted in conditions.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            if not values or not all(isinstance(v, str | int | float | bool) for v in values):
                raise DataError(
                    f"filter {key!r}: give a value or a list of values (strings, numbers "
                    "or booleans)"
                )
            marks = ",".join("?" * len(values))
            clauses.append(f"SELECT row FROM attributes WHERE key = ? AND value IN ({marks})")
            params += [str(key), *(_json_value(v) for v in values)]
        query = " INTERSECT ".join(clauses)
        query = f"SELECT row FROM items WHERE deleted = 0 AND row IN ({query}) ORDER BY row"
        rows = [r for (r,) in db.execute(query, params)]
        return np.asarray(rows, dtype=np.int64)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
