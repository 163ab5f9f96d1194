"""CatalogSource: jsonl catalogs pointing at the real COCO photos."""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runtime.errors import DataError
from sources.catalog import CatalogSource
from sources.records import IndexedSource


def _write(path: Path, lines: list[Any]) -> Path:
    text = "\n".join(
        line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines
    )
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture
def photos(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "coco-photos").glob("*.jpg"))[:3]


def test_reads_relative_and_absolute_images(tmp_path: Path, photos: list[Path]) -> None:
    items = [
        {"id": "p1", "image": photos[0].name, "title": "踢足球的人", "price": 12.5},
        {"id": 2, "image": photos[1].name, "title": "生日蛋糕"},
        {"id": "p3", "image": str(photos[2]), "title": "吃饭"},  # absolute
    ]
    catalog = CatalogSource(_write(tmp_path / "items.jsonl", items), root=photos[0].parent)
    assert isinstance(catalog, IndexedSource)
    assert len(catalog) == 3
    assert catalog.ids == ["p1", "2", "p3"]
    assert catalog.skipped == {"malformed_lines": 0}
    for index, (item, photo) in enumerate(zip(items, photos, strict=True)):
        record = catalog.get(index)
        assert (record.key, record.text, record.label) == (str(item["id"]), item["title"], -1)
        assert record.image == photo.read_bytes()
        assert catalog.image_path(index) == photo
    with Image.open(io.BytesIO(catalog.get(0).image)) as image:
        image.load()
        assert image.format == "JPEG"
    assert catalog.item(0) == items[0]
    assert catalog.item(1)["id"] == "2"
    copy = pickle.loads(pickle.dumps(catalog))
    assert copy.get(2) == catalog.get(2)


def test_root_defaults_to_the_catalog_directory(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.bin").write_bytes(b"\xff\xd8\xffbytes")
    catalog = CatalogSource(
        _write(tmp_path / "c.jsonl", [{"id": "a", "image": "images/a.bin", "title": "t"}])
    )
    assert catalog.get(0).image == b"\xff\xd8\xffbytes"


def test_malformed_lines_are_skipped_and_counted(
    tmp_path: Path, photos: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    good = {"id": "ok", "image": str(photos[0]), "title": "好"}
    lines: list[Any] = [
        "{oops",
        good,
        "",
        ["a", "list"],
        {"id": "", "image": "x.jpg", "title": "empty id"},
        {"id": "no-title", "image": "x.jpg"},
        {"id": "bad-image", "image": 5, "title": "t"},
        {"id": True, "image": "x.jpg", "title": "bool id"},
    ]
    with caplog.at_level(logging.WARNING, logger="sources.catalog"):
        catalog = CatalogSource(_write(tmp_path / "c.jsonl", lines))
    assert catalog.skipped == {"malformed_lines": 6}
    assert catalog.ids == ["ok"]
    assert "skipped 6 malformed lines (first at lines 1, 4, 5, 6, 7)" in caplog.text


def test_urls_are_refused_at_open(tmp_path: Path) -> None:
    item = {"id": "u", "image": "HTTPS://example.com/a.jpg", "title": "t"}
    with pytest.raises(DataError, match=r"line 1: image .* is a URL; download the images first"):
        CatalogSource(_write(tmp_path / "c.jsonl", [item]))


def test_duplicate_ids_are_refused(tmp_path: Path, photos: list[Path]) -> None:
    items = [{"id": "same", "image": str(p), "title": "t"} for p in photos[:2]]
    with pytest.raises(DataError, match=r"line 2: duplicate id 'same' \(first at line 1\)"):
        CatalogSource(_write(tmp_path / "c.jsonl", items))


def test_missing_image_fails_at_get(tmp_path: Path, photos: list[Path]) -> None:
    items = [
        {"id": "here", "image": str(photos[0]), "title": "t"},
        {"id": "gone", "image": "missing.jpg", "title": "t"},
    ]
    catalog = CatalogSource(_write(tmp_path / "c.jsonl", items))
    assert catalog.get(0).key == "here"
    with pytest.raises(DataError, match=r"line 2: cannot read image .*missing\.jpg"):
        catalog.get(1)
    with pytest.raises(IndexError):
        catalog.get(2)
    with pytest.raises(DataError, match="catalog not found"):
        CatalogSource(tmp_path / "none.jsonl")
