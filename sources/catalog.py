"""E-commerce catalogs: one JSON object per line, ``{"id", "image", "title", ...}``.

The one parser of catalog lines, for every reader (the index builder, the trainer's
:class:`CatalogSource`, the ``--items`` and ``--text-corpus`` records of ``cnclip index``)
and the rules the service's catalog API applies to its items:

- the file is UTF-8 (a byte-order mark on the first line is ignored); blank lines are
  skipped; every error names the file and the line;
- ``id`` is a non-empty one-line string of at most 256 characters; an integer is taken
  as its decimal text (``7`` is the id ``"7"``); other JSON types are refused; ids are
  unique within a catalog (a repeat names both lines);
- ``image`` is a non-empty string: a local path (absolute, or relative to the catalog's
  folder or ``root``) or an http(s) URL where the reader can fetch it (the index builder,
  through :mod:`runtime.fetch`; the trainer cannot, and refuses URLs);
- ``title`` (optional) is a string; every other key is an attribute, kept as it is.
"""

from __future__ import annotations

import json
import logging
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import DataError
from sources.records import ByteRangeFile, Record, SkipCounter

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One catalog line: ``image`` as written (relative paths are resolved when embedding)."""

    id: str
    image: str
    title: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


def read_catalog(path: str | os.PathLike[str]) -> list[CatalogItem]:
    """All items of a jsonl catalog, checked; blank lines are skipped.

    Raises:
        DataError: an unreadable file, or a line that is not valid JSON, not an object,
            lacks a non-empty string ``id`` or ``image``, or repeats an earlier id; the
            message names the file and line.
    """
    path = Path(path)
    items: list[CatalogItem] = []
    seen: set[str] = set()
    for lineno, item in numbered_items(path):
        if item.id in seen:
            first = _first_line_of(path, item.id)
            raise DataError(
                f"{path}:{lineno}: duplicate id {item.id!r}, first used at line {first}; "
                "give every item its own id"
            )
        seen.add(item.id)
        items.append(item)
    return items


def iter_catalog(path: str | os.PathLike[str]) -> Iterator[CatalogItem]:
    """The items of a catalog one by one, each line checked as by :func:`read_catalog`.

    Duplicate ids are *not* detected here (that needs every id): use :func:`read_catalog`.
    """
    for _, item in numbered_items(Path(path)):
        yield item


def numbered_items(path: Path) -> Iterator[tuple[int, CatalogItem]]:
    for lineno, text in catalog_lines(path):
        yield lineno, parse_item(text, f"{path}:{lineno}")


def catalog_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a UTF-8 file (BOM ignored)."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the catalog ({exc.strerror or exc})") from exc
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 (byte {exc.start + 1} of the line); "
                    "save the catalog as UTF-8"
                ) from exc
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                yield lineno, text


def parse_item(text: str | bytes, where: str) -> CatalogItem:
    """The item of one catalog line (``where`` is ``file:line`` for messages).

    Raises:
        DataError: not a JSON object, or an ``id``, ``image`` or ``title`` that breaks
            the rules of the module documentation.
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); "
            'write one JSON object a line, like {"id": "a1", "image": "a1.jpg"}'
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{where}: invalid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise DataError(
            f'{where}: expected a JSON object {{"id": ..., "image": ...}}, '
            f"got a JSON {json_type(record)}"
        )
    if "id" not in record:
        raise DataError(f'{where}: missing "id" (a unique item id)')
    identifier = item_id(record.pop("id"), where)
    image = _required_string(record, "image", where)
    title = record.pop("title", None)
    if title is not None and not isinstance(title, str):
        raise DataError(f'{where}: "title" must be a string, got a JSON {json_type(title)}')
    return CatalogItem(identifier, image, title, record)


def item_id(value: Any, where: str) -> str:
    """An item id by the catalog rules: a string, or an integer as its decimal text.

    Raises:
        DataError: another JSON type, an empty or blank id, a line break, more than
            ``MAX_ID_CHARS`` characters or a lone surrogate.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(
            f'{where}: "id" must be a string (or an integer), got a JSON {json_type(value)}'
        )
    if not value.strip():
        raise DataError(f'{where}: "id" is empty')
    if "\n" in value or "\r" in value:
        raise DataError(f'{where}: "id" {value!r} contains a line break; ids are one line')
    if len(value) > MAX_ID_CHARS:
        raise DataError(f'{where}: "id" has {len(value)} characters; the limit is {MAX_ID_CHARS}')
    if not _is_unicode(value):
        raise DataError(f'{where}: "id" {value!r} is not valid Unicode (a lone surrogate)')
    return value


def _required_string(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise DataError(f'{where}: missing "{key}" (the image\'s path or URL)')
    value = record.pop(key)
    if not isinstance(value, str):
        raise DataError(f'{where}: "{key}" must be a string, got a JSON {json_type(value)}')
    if not value.strip():
        raise DataError(f'{where}: "{key}" is empty')
    if not _is_unicode(value):
        raise DataError(f'{where}: "{key}" {value!r} is not valid Unicode (a lone surrogate)')
    return value


def _first_line_of(path: Path, identifier: str) -> int:
    """The line of the first item with ``item_id`` (the lines are valid: read once already)."""
    for lineno, text in catalog_lines(path):
        if item_id(json.loads(text).get("id"), "") == identifier:
            return lineno
    raise DataError(f"{path}: changed while it was read; read it again")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_url(image: str) -> bool:
    return image.lower().startswith(("http://", "https://"))


class CatalogSource:
    """An IndexedSource over a jsonl catalog: ``Record(key=id, image=file bytes, text=title)``.

    Open reads the file once into a byte-offset index (the lines stay on disk). Lines the
    catalog parser refuses (:func:`parse_item`), and items without a title, are skipped,
    counted in ``skipped`` and logged with their line numbers: a training set tolerates a
    few bad lines. DataError at open for a missing file, an image URL (download the
    images first: the trainer reads local files), or a duplicated id; DataError at
    ``get`` for an image file that is missing or unreadable.
    """

    def __init__(self, jsonl_path: PathLike, root: PathLike | None = None) -> None:
        self.path = Path(jsonl_path)
        self.root = Path(root) if root is not None else self.path.parent
        if not self.path.is_file():
            raise DataError(f"{self.path}: catalog not found; give a jsonl file")
        skips = SkipCounter("malformed_lines")
        self._ids: list[str] = []
        self._offsets = array("q")
        self._lengths = array("q")
        self._lines = array("q")
        first_line: dict[str, int] = {}
        try:
            with self.path.open("rb") as f:
                offset = 0
                for lineno, line in enumerate(f, 1):
                    start, offset = offset, offset + len(line)
                    if not line.strip():
                        continue
                    item = self._parsed(line, lineno)
                    if item is None:
                        skips.add("malformed_lines", lineno)
                        continue
                    self._check_item(item, lineno, first_line)
                    first_line[item.id] = lineno
                    self._ids.append(item.id)
                    self._offsets.append(start)
                    self._lengths.append(len(line))
                    self._lines.append(lineno)
        except OSError as e:
            raise DataError(f"{self.path}: cannot read ({e.strerror}); check the file") from e
        self.skipped: dict[str, int] = skips.as_dict()
        skips.log(log, str(self.path))
        self._file = ByteRangeFile(self.path)

    def _parsed(self, line: bytes, lineno: int) -> CatalogItem | None:
        """The item of a line, or None (logged) for one the parser refuses or without title."""
        where = f"{self.path}:{lineno}"
        try:
            text = line.decode("utf-8")
            item = parse_item(text.removeprefix("\ufeff") if lineno == 1 else text, where)
        except UnicodeDecodeError:
            log.debug("%s: not UTF-8; skipped", where)
            return None
        except DataError as exc:
            log.debug("%s; skipped", exc)
            return None
        if item.title is None:
            log.debug('%s: no "title" (the caption); skipped', where)
            return None
        return item

    def _check_item(self, item: CatalogItem, lineno: int, first_line: dict[str, int]) -> None:
        where = f"{self.path}: line {lineno}"
        if is_url(item.image):
            raise DataError(
                f"{where}: image {item.image} is a URL; download the images first "
                "and give local paths"
            )
        if item.id in first_line:
            raise DataError(
                f"{where}: duplicate id {item.id!r} (first at line {first_line[item.id]});"
                " make the ids unique"
            )

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        """The item ids in file order."""
        return list(self._ids)

    def item(self, index: int) -> dict[str, Any]:
        """The whole JSON object of the item at ``index`` (all attributes)."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        where = f"{self.path}: line {self._lines[index]}"
        try:
            line = self._file.read(self._offsets[index], self._lengths[index])
        except OSError as e:
            raise DataError(f"{where}: cannot read ({e.strerror}); check the file") from e
        parsed = self._parsed(line, int(self._lines[index]))
        if parsed is None or parsed.id != self._ids[index]:
            raise DataError(f"{where}: the catalog changed since it was opened; open it again")
        return {"id": parsed.id, "image": parsed.image, "title": parsed.title, **parsed.attributes}

    def image_path(self, index: int) -> Path:
        """The image file of the item at ``index``, resolved against ``root``."""
        return self.root / str(self.item(index)["image"])

    def get(self, index: int) -> Record:
        item = self.item(index)
        path = self.root / item["image"]
        try:
            image = path.read_bytes()
        except OSError as e:
            raise DataError(
                f"{self.path}: line {self._lines[index]}: cannot read image {path} "
                f"({e.strerror}); fix the path or remove the item"
            ) from e
        return Record(key=item["id"], image=image, text=item["title"])

    def close(self) -> None:
        self._file.close()
