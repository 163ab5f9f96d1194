"""write_wds and WdsSource: WebDataset shards round trip, manifests and damaged tars."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from runtime.errors import DataError
from sources.official import OfficialSource
from sources.records import Record, ShardedSource
from sources.wds import WdsSource, image_extension, write_wds


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def records(muge: Path) -> list[Record]:
    """The five MUGE pairs with labels 0, -1, 2, -1, 4, plus a PNG and an unknown format."""
    source = OfficialSource(muge, "valid")
    out = [
        Record(r.key, r.image, r.text, i if i % 2 == 0 else -1)
        for i, r in enumerate(source.get(i) for i in range(len(source)))
    ]
    out.append(Record("png/一", _encoded("PNG"), "红色 方块", 7))
    out.append(Record("raw.bin", b"\x00\x01 not an image", "", -1))
    return out


def _read_all(source: WdsSource) -> list[Record]:
    return [record for shard in range(source.num_shards) for record in source.read_shard(shard)]


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_round_trip_with_labels_and_manifest(tmp_path: Path, records: list[Record]) -> None:
    out = tmp_path / "shards"
    manifest = write_wds(records, out, samples_per_shard=3, progress=False)
    assert manifest == json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest == {
        "format": "cnclip-wds",
        "version": 1,
        "num_samples": 7,
        "shards": [
            {"name": "shard-000000.tar", "num_samples": 3},
            {"name": "shard-000001.tar", "num_samples": 3},
            {"name": "shard-000002.tar", "num_samples": 1},
        ],
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]  # no staging left over
    assert _members(out / "shard-000000.tar") == [
        "000000000.jpg",
        "000000000.txt",
        "000000000.cls",
        "000000000.json",
        "000000001.jpg",
        "000000001.txt",
        "000000001.json",
        "000000002.jpg",
        "000000002.txt",
        "000000002.cls",
        "000000002.json",
    ]
    assert _members(out / "shard-000002.tar") == [
        "000000006.img",
        "000000006.txt",
        "000000006.json",
    ]
    assert "000000005.png" in _members(out / "shard-000001.tar")

    source = WdsSource(out)
    assert isinstance(source, ShardedSource)
    assert (source.num_shards, source.num_samples) == (3, 7)
    assert _read_all(source) == records
    assert source.corrupt_shards == 0


def test_image_extension_from_magic_numbers() -> None:
    for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")]:
        assert image_extension(_encoded(fmt)) == ext
    assert image_extension(_encoded("BMP")) == "bmp"
    assert image_extension(b"") == image_extension(b"hello") == "img"


def test_shards_without_manifest_and_a_single_tar(tmp_path: Path, records: list[Record]) -> None:
    out = tmp_path / "shards"
    write_wds(records, out, samples_per_shard=4, prefix="part", progress=False)
    (out / "manifest.json").unlink()
    source = WdsSource(out)
    assert source.num_samples is None
    assert [p.name for p in source.shards] == ["part-000000.tar", "part-000001.tar"]
    assert _read_all(source) == records
    single = WdsSource(out / "part-000001.tar")
    assert (single.num_shards, single.num_samples) == (1, None)
    assert list(single.read_shard(0)) == records[4:]
    with pytest.raises(IndexError):
        list(single.read_shard(1))


def test_bad_paths_and_manifests_are_data_errors(tmp_path: Path, records: list[Record]) -> None:
    with pytest.raises(DataError, match="not found"):
        WdsSource(tmp_path / "nothing")
    with pytest.raises(DataError, match="no .tar shards"):
        WdsSource(tmp_path)
    out = tmp_path / "shards"
    write_wds(records, out, samples_per_shard=4, progress=False)
    (out / "shard-000001.tar").unlink()
    with pytest.raises(DataError, match="missing: shard-000001.tar"):
        WdsSource(out)
    (out / "manifest.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(DataError, match="not a cnclip-wds v1 manifest"):
        WdsSource(out)


def test_non_empty_out_dir_is_refused_unless_overwrite(
    tmp_path: Path, records: list[Record]
) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    (out / "old.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError, match="not empty; pass overwrite=True"):
        write_wds(records, out, progress=False)

    def failing() -> Iterator[Record]:
        yield records[0]
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_wds(failing(), out, overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]

    manifest = write_wds(records, out, overwrite=True, progress=False)
    assert manifest["num_samples"] == 7
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-000000.tar"]
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]

    empty = write_wds([], tmp_path / "empty", progress=False)
    assert (empty["num_samples"], empty["shards"]) == (0, [])


def test_truncated_and_garbage_tars_end_the_shard_without_raising(
    tmp_path: Path, records: list[Record], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "shards"
    write_wds(records[:5], out, samples_per_shard=5, progress=False)
    shard = out / "shard-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    source = WdsSource(out)
    with caplog.at_level(logging.WARNING, logger="sources.wds"):
        got = list(source.read_shard(0))
    assert 0 < len(got) < 5
    assert got == records[: len(got)]
    assert source.corrupt_shards == 1
    assert "corrupt or truncated tar" in caplog.text

    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 40)
    broken = WdsSource(garbage)
    assert list(broken.read_shard(0)) == []
    assert broken.corrupt_shards == 1


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_incomplete_groups_yield_empty_parts(tmp_path: Path) -> None:
    jpeg = _encoded("JPEG")
    path = tmp_path / "hand.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "dir/a.jpg", jpeg)
        _add(tar, "dir/a.cls", b"3")  # no caption
        _add(tar, "dir/b.txt", "只有文字".encode())  # no image
        _add(tar, "dir/c.JPEG", jpeg)
        _add(tar, "dir/c.txt", b"\xff\xfe")  # not UTF-8
        _add(tar, "dir/c.cls", b"three")  # not a number
        _add(tar, "dir/d.seg.png", jpeg)  # the key ends at the first dot
        _add(tar, "dir/d.txt", "双扩展名".encode())
        _add(tar, "dir/d.json", b"{broken")
    source = WdsSource(path)
    assert list(source.read_shard(0)) == [
        Record("dir/a", jpeg, "", 3),
        Record("dir/b", b"", "只有文字", -1),
        Record("dir/c", jpeg, "", -1),
        Record("dir/d", b"", "双扩展名", -1),
    ]
    assert source.corrupt_shards == 0
