"""open_source: one factory for every reader kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import DataError
from sources import SOURCE_KINDS, open_source
from sources.catalog import CatalogSource
from sources.imagefolder import ImageFolderSource
from sources.official import LmdbSource, OfficialSource, build_lmdb
from sources.records import Record
from sources.wds import WdsSource, write_wds


def test_every_kind_opens_its_reader(tmp_path: Path, muge: Path, data_dir: Path) -> None:
    official = open_source("official", muge, split="valid")
    assert isinstance(official, OfficialSource)
    build_lmdb(muge, "valid", tmp_path / "lmdb", progress=False)
    lmdb_source = open_source("lmdb", tmp_path / "lmdb" / "valid")
    assert isinstance(lmdb_source, LmdbSource)
    lmdb_source.close()
    write_wds([Record("k", b"\xff\xd8\xff", "t")], tmp_path / "wds", progress=False)
    assert isinstance(open_source("wds", tmp_path / "wds"), WdsSource)
    photo = sorted((data_dir / "coco-photos").glob("*.jpg"))[0]
    catalog = tmp_path / "c.jsonl"
    catalog.write_text(f'{{"id": "a", "image": "{photo.name}", "title": "t"}}\n', "utf-8")
    source = open_source("catalog", catalog, root=photo.parent)
    assert isinstance(source, CatalogSource)
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    (tmp_path / "folder" / "cat" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    folder = open_source("imagefolder", tmp_path / "folder", class_names={"cat": "猫"})
    assert isinstance(folder, ImageFolderSource)
    assert folder.class_names == ["猫"]
    assert sorted(SOURCE_KINDS) == ["catalog", "imagefolder", "lmdb", "official", "wds"]


def test_unknown_kinds_and_options_are_data_errors(muge: Path) -> None:
    with pytest.raises(DataError, match="use one of official, lmdb, wds, catalog, imagefolder"):
        open_source("parquet", muge)
    with pytest.raises(DataError, match="'official' needs option split; its options: split"):
        open_source("official", muge)
    with pytest.raises(DataError, match="'wds' has no option split; its options: none"):
        open_source("wds", muge, split="valid")
