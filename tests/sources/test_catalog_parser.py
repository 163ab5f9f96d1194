"""The one catalog parser: line numbers in every error, the id rules, BOM, and the same
verdict from every reader (the index builder's read_catalog, the trainer's CatalogSource)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.errors import DataError
from sources.catalog import CatalogSource, read_catalog


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_catalog_refuses_duplicate_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"id": "a", "image": "a.jpg"}',
        "",
        '{"id": "b", "image": "b.jpg"}',
        '{"id": "a", "image": "c.jpg"}',
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:4: duplicate id 'a', first used at line 1"):
        read_catalog(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": "b", "image": "b.jpg"', "invalid JSON"),
        ('["b", "b.jpg"]', "expected a JSON object"),
        ('{"image": "b.jpg"}', 'missing "id"'),
        ('{"id": "", "image": "b.jpg"}', '"id" is empty'),
        ('{"id": 7.5, "image": "b.jpg"}', '"id" must be a string (or an integer)'),
        ('{"id": true, "image": "b.jpg"}', '"id" must be a string (or an integer)'),
        ('{"id": "b"}', 'missing "image"'),
        ('{"id": "b\\nc", "image": "b.jpg"}', "line break"),
        ('{"id": "b", "image": "b.jpg", "title": 3}', '"title" must be a string'),
    ],
)
def test_read_catalog_names_line_and_problem(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, '{"id": "a", "image": "a.jpg"}', "   ", line)
    with pytest.raises(DataError, match=r"bad\.jsonl:3: ") as info:
        read_catalog(path)
    assert problem in str(info.value)


def test_read_catalog_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read the catalog"):
        read_catalog(tmp_path / "nope.jsonl")


def test_integer_ids_are_their_decimal_text_and_a_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        "\ufeff".encode() + b'{"id": 7, "image": "a.jpg", "title": "t"}\n'
        b'{"id": "x", "image": "b.jpg", "title": "t"}\n'
    )
    assert [item.id for item in read_catalog(path)] == ["7", "x"]
    assert CatalogSource(path).ids == ["7", "x"]
    path.write_bytes(b'{"id": 7, "image": "a.jpg"}\n{"id": "7", "image": "b.jpg"}\n')
    with pytest.raises(DataError, match="c.jsonl:2: duplicate id '7', first used at line 1"):
        read_catalog(path)


def test_every_reader_refuses_the_same_lines(tmp_path: Path) -> None:
    bad = [
        {"id": 7.5, "image": "a.jpg", "title": "t"},
        {"id": True, "image": "a.jpg", "title": "t"},
        {"id": "", "image": "a.jpg", "title": "t"},
        {"id": "a\nb", "image": "a.jpg", "title": "t"},
        {"id": "y" * 257, "image": "a.jpg", "title": "t"},
        {"id": "z", "image": "", "title": "t"},
        {"id": "w", "image": "a.jpg", "title": 3},
    ]
    good = {"id": "ok", "image": "a.jpg", "title": "t"}
    for record in bad:
        path = tmp_path / "c.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=r"c\.jsonl:2: "):
            read_catalog(path)
        source = CatalogSource(path)  # the trainer skips and counts what the parser refuses
        assert source.ids == ["ok"] and source.skipped == {"malformed_lines": 1}, record


def test_the_service_applies_the_same_id_rules_to_the_items_it_is_sent() -> None:
    import pydantic

    from service.schemas import CatalogItem as ApiItem

    image = {"base64": "AA=="}
    assert ApiItem.model_validate({"id": 7, "image": image}).id == "7"
    for bad in (7.5, True, "", "a\nb", "y" * 257):
        with pytest.raises(pydantic.ValidationError, match='"id"|id'):
            ApiItem.model_validate({"id": bad, "image": image})
