"""E-commerce catalogs: one JSON object per line, ``{"id", "image", "title", ...}``.

``id`` is a non-empty string (integers are taken as their decimal text), ``image`` a
local file path, absolute or relative to ``root`` (by default the jsonl's own
directory), and ``title`` the caption; any other attributes are kept on disk and
returned by :meth:`CatalogSource.item`. Image URLs are refused: download the images
first and point ``image`` at the files.
"""

from __future__ import annotations

import json
import logging
import os
from array import array
from pathlib import Path
from typing import Any

from runtime.errors import DataError
from trainer.data.records import ByteRangeFile, Record, SkipCounter

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def _parse_item(line: bytes) -> dict[str, Any] | None:
    """The item of one line with a normalized ``id``, or None when malformed."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(item, dict):
        return None
    item_id, image, title = item.get("id"), item.get("image"), item.get("title")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id:
        return None
    if not isinstance(image, str) or not image or not isinstance(title, str):
        return None
    return {**item, "id": item_id}


def _is_url(image: str) -> bool:
    return image.lower().startswith(("http://", "https://"))


class CatalogSource:
    """An IndexedSource over a jsonl catalog: ``Record(key=id, image=file bytes, text=title)``.

    Open reads the file once into a byte-offset index (the lines stay on disk).
    Malformed lines (not a JSON object, or ``id``/``image``/``title`` missing or of
    the wrong type) are skipped, counted in ``skipped`` and logged. DataError at open
    for a missing file, an image URL, or a duplicated id; DataError at ``get`` for an
    image file that is missing or unreadable.
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
                    item = _parse_item(line)
                    if item is None:
                        skips.add("malformed_lines", lineno)
                        continue
                    self._check_item(item, lineno, first_line)
                    first_line[item["id"]] = lineno
                    self._ids.append(item["id"])
                    self._offsets.append(start)
                    self._lengths.append(len(line))
                    self._lines.append(lineno)
        except OSError as e:
            raise DataError(f"{self.path}: cannot read ({e.strerror}); check the file") from e
        self.skipped: dict[str, int] = skips.as_dict()
        skips.log(log, str(self.path))
        self._file = ByteRangeFile(self.path)

    def _check_item(self, item: dict[str, Any], lineno: int, first_line: dict[str, int]) -> None:
        where = f"{self.path}: line {lineno}"
        if _is_url(item["image"]):
            raise DataError(
                f"{where}: image {item['image']} is a URL; download the images first "
                "and give local paths"
            )
        if item["id"] in first_line:
            raise DataError(
                f"{where}: duplicate id {item['id']!r} (first at line {first_line[item['id']]});"
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
        item = _parse_item(line)
        if item is None or item["id"] != self._ids[index]:
            raise DataError(f"{where}: the catalog changed since it was opened; open it again")
        return item

    def image_path(self, index: int) -> Path:
        """The image file of the item at ``index``, resolved against ``root``."""
        return self.root / self.item(index)["image"]

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
