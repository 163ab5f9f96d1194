"""OfficialSource: the official tsv/jsonl format on the real MUGE sample."""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
from pathlib import Path

import pytest
from PIL import Image

from runtime.errors import DataError
from sources.official import OfficialSource, decode_base64_image
from sources.records import IndexedSource
from tests.sources.conftest import MessySplit, jsonl_lines, tsv_lines


def test_pairs_follow_text_then_image_id_order(muge: Path) -> None:
    source = OfficialSource(muge, "valid")
    assert isinstance(source, IndexedSource)
    expected = [
        (str(image_id), obj["text"])
        for obj in map(json.loads, jsonl_lines(muge))
        for image_id in obj["image_ids"]
    ]
    assert len(source) == len(expected) == 5
    assert [(source.get(i).key, source.get(i).text) for i in range(len(source))] == expected
    assert all(source.get(i).label == -1 for i in range(len(source)))
    assert set(source.skipped.values()) == {0}
    assert source.texts() == [
        (248816, "圣诞 抱枕", ["286314", "141999", "183846"]),
        (248931, "32不粘锅", ["349934", "941660"]),
    ]
    assert source.image_ids() == [line.split("\t")[0] for line in tsv_lines(muge)]
    assert source.num_images == 8


def test_records_hold_the_decoded_tsv_images(muge: Path) -> None:
    source = OfficialSource(muge, "valid")
    b64 = dict(line.split("\t") for line in tsv_lines(muge))
    for i in range(len(source)):
        record = source.get(i)
        assert record.image == base64.urlsafe_b64decode(b64[record.key])
        with Image.open(io.BytesIO(record.image)) as image:
            image.load()
            assert (image.format, image.size) == ("JPEG", (224, 224))
    # An image no text refers to is still reachable by id (for retrieval galleries).
    assert source.image(139500) == base64.urlsafe_b64decode(b64["139500"])
    with pytest.raises(DataError, match="no image with id 42"):
        source.image("42")
    with pytest.raises(IndexError):
        source.get(len(source))


def test_malformed_lines_are_skipped_and_counted(
    messy: MessySplit, muge: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sources.official"):
        source = OfficialSource(messy.directory, messy.split)
    assert source.skipped == messy.skipped
    assert [(source.get(i).key, source.get(i).text) for i in range(len(source))] == messy.pairs
    log = caplog.text
    assert "skipped 3 malformed tsv lines (first at lines 2, 7, 13)" in log
    assert "skipped 4 malformed jsonl lines (first at lines 2, 3, 4, 7)" in log
    assert "skipped 1 missing images (first at line 6)" in log
    # The first line of a duplicated id wins.
    first_id = tsv_lines(muge)[0].split("\t")[0]
    assert source.image(first_id) == OfficialSource(muge, "valid").image(first_id)
    assert source.texts()[-1] == (7, "新的 文本", [first_id])


def test_base64_padding_is_optional_and_bad_base64_fails_at_get(tmp_path: Path) -> None:
    payload = b"\xff\xd8\xff" + bytes(range(200))  # 203 bytes: padded base64 ends in "="
    padded = base64.urlsafe_b64encode(payload).decode()
    assert padded.endswith("=")
    lines = [f"1\t{padded.rstrip('=')}", f"2\t{padded}", "3\t***not base64***"]
    (tmp_path / "x_imgs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = {"text_id": 1, "text": "t", "image_ids": [1, 2, 3]}
    (tmp_path / "x_texts.jsonl").write_text(json.dumps(text) + "\n", encoding="utf-8")
    source = OfficialSource(tmp_path, "x")
    assert source.get(0).image == source.get(1).image == payload
    with pytest.raises(DataError, match=r"x_imgs\.tsv: image 3: invalid base64"):
        source.get(2)
    with pytest.raises(DataError, match="empty image"):
        decode_base64_image(b"", "here")


def test_missing_files_are_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train_imgs\.tsv: not found"):
        OfficialSource(tmp_path, "train")


def test_source_pickles_for_dataloader_workers(muge: Path) -> None:
    source = OfficialSource(muge, "valid")
    first = source.get(0)
    copy = pickle.loads(pickle.dumps(source))
    assert [copy.get(i) for i in range(len(copy))] == [source.get(i) for i in range(len(source))]
    assert copy.get(0) == first
    source.close()
    copy.close()
