"""build_lmdb and LmdbSource: the official LMDB layout, read and written."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from runtime.errors import DataError
from sources import official
from sources.official import LmdbSource, OfficialSource, build_lmdb, unpickle_pair
from tests.official import official_clip, official_training_data
from tests.sources.conftest import MessySplit


def _dump(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def _records(source: OfficialSource | LmdbSource) -> list[Any]:
    return [source.get(i) for i in range(len(source))]


def test_lmdb_source_gives_the_official_source_records(tmp_path: Path, muge: Path) -> None:
    summaries = build_lmdb(muge, "valid", tmp_path / "lmdb", progress=False)
    summary = summaries["valid"]
    assert (summary.path, summary.num_samples, summary.num_images) == (
        tmp_path / "lmdb" / "valid",
        5,
        8,
    )
    assert set(summary.skipped.values()) == {0}
    assert sorted(p.name for p in (tmp_path / "lmdb").iterdir()) == ["valid"]
    source, reference = LmdbSource(summary.path), OfficialSource(muge, "valid")
    assert len(source) == 5 and source.num_images == 8
    assert _records(source) == _records(reference)
    assert source.texts() == reference.texts()
    assert source.image_ids() == sorted(reference.image_ids())
    assert source.image("139500") == reference.image("139500")
    source.close()


def test_same_bytes_as_the_official_builder(tmp_path: Path, muge: Path) -> None:
    command = [sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset"]
    command += ["--data_dir", str(muge), "--splits", "valid", "--lmdb_dir", str(tmp_path / "ref")]
    subprocess.run(command, check=True, capture_output=True)
    build_lmdb(muge, ["valid"], tmp_path / "ours", progress=False)
    for part in ("pairs", "imgs"):
        assert _dump(tmp_path / "ours" / "valid" / part) == _dump(tmp_path / "ref" / "valid" / part)


def test_the_official_reader_reads_our_lmdb(
    tmp_path: Path, muge: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = official_training_data()
    clip = official_clip()

    def to_array(image: Image.Image) -> np.ndarray[Any, Any]:
        return np.asarray(image.convert("RGB"))

    monkeypatch.setattr(data.LMDBDataset, "_build_transform", lambda self, size: to_array)
    build_lmdb(muge, "valid", tmp_path, progress=False)
    dataset = data.LMDBDataset(str(tmp_path / "valid"), split="val")
    reference = OfficialSource(muge, "valid")
    try:
        assert len(dataset) == len(reference) == 5
        for index in (0, 2, 4):
            image, text, eos = dataset[index]
            record = reference.get(index)
            with Image.open(io.BytesIO(record.image)) as expected:
                assert np.array_equal(image, np.asarray(expected.convert("RGB")))
            tokens = clip.tokenize([record.text.lower()], context_length=64)[0]
            assert torch.equal(text, tokens)
            assert int(text[eos]) == 102  # [SEP]
    finally:
        dataset.env_pairs.close()
        dataset.env_imgs.close()


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("code ran",))


def test_restricted_unpickler_refuses_globals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert unpickle_pair(pickle.dumps((1, "2", "文本"))) == (1, "2", "文本")
    for bad in [(1, 2, _Evil()), (1, 2, Path("x")), os.system]:
        with pytest.raises(DataError, match="refused"):
            unpickle_pair(pickle.dumps(bad))
    assert capsys.readouterr().out == ""
    for wrong in [[1, 2, "t"], (1, 2), (1.5, 2, "t"), (True, 2, "t"), (1, 2, b"t"), {"a": 1}]:
        with pytest.raises(DataError, match="expected a pickled"):
            unpickle_pair(pickle.dumps(wrong))
    with pytest.raises(DataError, match="not a valid pair pickle"):
        unpickle_pair(b"\x80\x04garbage")

    # The same through an LMDB whose pair 0 was tampered with.
    split = tmp_path / "evil"
    split.mkdir()
    for part, entries in {
        "pairs": {b"0": pickle.dumps((1, 2, _Evil())), b"num_samples": b"1"},
        "imgs": {b"1": b"AAAA", b"num_images": b"1"},
    }.items():
        env = lmdb.open(str(split / part))
        with env.begin(write=True) as txn:
            for key, value in entries.items():
                txn.put(key, value)
        env.close()
    source = LmdbSource(split)
    with pytest.raises(DataError, match=r"evil/pairs: pair 0: not a valid pair pickle"):
        source.get(0)
    assert capsys.readouterr().out == ""
    source.close()


def test_a_failing_build_leaves_no_split(
    tmp_path: Path, muge: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = official._text_lines

    def failing(*args: Any) -> Iterator[Any]:
        yield next(real(*args))
        raise RuntimeError("disk on fire")

    out = tmp_path / "lmdb"
    with monkeypatch.context() as patch:
        patch.setattr(official, "_text_lines", failing)
        with pytest.raises(RuntimeError, match="disk on fire"):
            build_lmdb(muge, "valid", out, progress=False)
    assert list(out.iterdir()) == []

    # With overwrite, the old split stays until the new one is complete.
    build_lmdb(muge, "valid", out, progress=False)
    before = _dump(out / "valid" / "pairs")
    with monkeypatch.context() as patch:
        patch.setattr(official, "_text_lines", failing)
        with pytest.raises(RuntimeError):
            build_lmdb(muge, "valid", out, overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["valid"]
    assert _dump(out / "valid" / "pairs") == before


def test_existing_split_is_refused_unless_overwrite(tmp_path: Path, muge: Path) -> None:
    build_lmdb(muge, "valid", progress=False, lmdb_dir=tmp_path)
    with pytest.raises(DataError, match="already exists; pass overwrite=True"):
        build_lmdb(muge, "valid", tmp_path, progress=False)
    summary = build_lmdb(muge, "valid", tmp_path, overwrite=True, progress=False)["valid"]
    assert summary.num_samples == 5
    assert [p.name for p in tmp_path.iterdir()] == ["valid"]
    with pytest.raises(DataError, match=r"test_imgs\.tsv: not found"):
        build_lmdb(muge, "valid,test", tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_malformed_lines_are_skipped_in_the_build(tmp_path: Path, messy: MessySplit) -> None:
    summary = build_lmdb(messy.directory, messy.split, tmp_path / "out", progress=False)
    skipped = summary[messy.split].skipped
    assert skipped == messy.skipped
    source = LmdbSource(tmp_path / "out" / messy.split)
    assert [(r.key, r.text) for r in _records(source)] == messy.pairs
    assert _records(source) == _records(OfficialSource(messy.directory, messy.split))
    assert source.num_images == 8
    source.close()


def test_a_split_rebuilt_in_place_is_read_afresh(
    tmp_path: Path, muge: Path, messy: MessySplit
) -> None:
    build_lmdb(muge, "valid", tmp_path, progress=False)
    old = LmdbSource(tmp_path / "valid")
    before = _records(old)
    build_lmdb(messy.directory, "valid", tmp_path, overwrite=True, progress=False)
    new = LmdbSource(tmp_path / "valid")
    assert [(r.key, r.text) for r in _records(new)] == messy.pairs
    assert _records(old) == before  # still reads the files it opened
    new.close()
    with pytest.raises(DataError, match="not found; an official LMDB split directory"):
        LmdbSource(tmp_path)


def _read_all(source: LmdbSource, queue: Any) -> None:
    queue.put([record.key for record in _records(source)])


def test_lmdb_source_reopens_in_forked_and_spawned_workers(tmp_path: Path, muge: Path) -> None:
    build_lmdb(muge, "valid", tmp_path, progress=False)
    source = LmdbSource(tmp_path / "valid")
    keys = [record.key for record in _records(source)]  # opened in this process first
    for method in ("fork", "spawn"):
        context = multiprocessing.get_context(method)
        queue = context.Queue()
        worker = context.Process(target=_read_all, args=(source, queue))
        worker.start()
        assert queue.get(timeout=60) == keys
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [record.key for record in _records(source)] == keys
    source.close()
