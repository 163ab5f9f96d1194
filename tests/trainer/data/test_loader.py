"""The streaming loader: disjoint shards per rank and worker, determinism, exact positions."""

from __future__ import annotations

import io
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import DataError
from runtime.images import PreprocessConfig, preprocess
from runtime.tokenizer import default_tokenizer
from sources.records import Record
from sources.wds import WdsSource, write_wds
from trainer.data.loader import Batch, LoaderState, PairStream, StreamSpec, build_loader

CORRUPT = {5, 17}


def _png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (index % 256, (index * 7) % 256, 3)).save(buffer, "PNG")
    return buffer.getvalue()


class NumberedSource:
    """Pair ``i``: an 8x8 picture whose red channel is ``i``, captioned 图{i}; some are corrupt."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get(self, index: int) -> Record:
        image = b"not an image" if index in CORRUPT else _png(index)
        return Record(key=str(index), image=image, text=f"图{index}")


def _identity(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    return preprocess(image, PreprocessConfig(image_size=8))


def _spec(
    source: object, *, rank: int = 0, world: int = 1, streams: int = 1, **kw: object
) -> StreamSpec:
    return StreamSpec(
        source=source,
        batch_size=4,
        rank=rank,
        world_size=world,
        streams=streams,
        seed=0,
        stage=0,
        tokenizer=default_tokenizer(),
        transform=_identity,
        state=kw.pop("state", LoaderState.start(streams)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def _ids(batch: Batch) -> list[int]:
    """Recover each pair's index from the red channel of its picture."""
    mean, std = 0.48145466, 0.26862954
    red = batch.images[:, 0, 0, 0].numpy() * std + mean
    return [round(float(v) * 255) for v in red]


def _take(stream: Iterator[Batch], n: int) -> list[Batch]:
    return list(islice(stream, n))


def test_ranks_and_workers_read_disjoint_shards_of_an_epoch() -> None:
    source = NumberedSource(64)
    seen: list[int] = []
    for rank in range(2):
        for stream in range(2):
            spec = _spec(source, rank=rank, world=2, streams=2)
            batches = _take(PairStream(spec).stream_batches(stream), 3)
            assert all(b.epoch == 0 for b in batches)
            seen += [i for b in batches for i in _ids(b)]
    # 4 streams x 3 batches x 4 pairs = 48 distinct pairs, none of them corrupt
    assert len(seen) == len(set(seen)) == 48
    assert not set(seen) & CORRUPT


def test_corrupt_pairs_are_skipped_and_counted() -> None:
    stream = PairStream(_spec(NumberedSource(40))).stream_batches(0)
    batches = _take(stream, 9)  # 38 readable pairs: 9 full batches in epoch 0
    assert sum(b.corrupt for b in batches) == 2
    assert {i for b in batches for i in _ids(b)}.isdisjoint(CORRUPT)
    # The next batch comes from the next epoch, in a new order.
    nxt = next(stream)
    assert nxt.epoch == 1


def test_same_seed_same_batches_and_captions_match_images() -> None:
    a = _take(PairStream(_spec(NumberedSource(32))).stream_batches(0), 4)
    b = _take(PairStream(_spec(NumberedSource(32))).stream_batches(0), 4)
    tok = default_tokenizer()
    for x, y in zip(a, b, strict=True):
        assert _ids(x) == _ids(y)
        assert x.input_ids.tolist() == y.input_ids.tolist()
        expected = tok([f"图{i}" for i in _ids(x)], pad_to="longest").ids
        assert x.input_ids.tolist() == expected.tolist()


def test_a_saved_position_resumes_the_same_sequence() -> None:
    spec = _spec(NumberedSource(48), streams=2)
    whole = _take(iter(PairStream(spec)), 10)
    # Consume 5 batches, keep their positions, restart from them.
    state = LoaderState.start(2)
    for batch in whole[:5]:
        state.positions[batch.stream] = (batch.epoch, batch.cursor)
        state.batches += 1
    resumed = _take(iter(PairStream(_spec(NumberedSource(48), streams=2, state=state))), 5)
    assert [_ids(b) for b in resumed] == [_ids(b) for b in whole[5:]]


def test_worker_processes_give_the_in_process_order() -> None:
    spec = _spec(NumberedSource(48), streams=2)
    in_process = _take(iter(PairStream(spec)), 6)
    with_workers = _take(iter(build_loader(_spec(NumberedSource(48), streams=2), workers=2)), 6)
    assert [_ids(b) for b in with_workers] == [_ids(b) for b in in_process]
    assert [b.stream for b in with_workers] == [0, 1, 0, 1, 0, 1]


def test_too_small_a_dataset_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="too small"):
        next(PairStream(_spec(NumberedSource(3))).stream_batches(0))


def test_webdataset_shards_split_over_streams(tmp_path: Path) -> None:
    source = NumberedSource(60)
    records = (source.get(i) for i in range(60) if i not in CORRUPT)
    write_wds(records, tmp_path / "wds", samples_per_shard=7, progress=False)
    shards = WdsSource(tmp_path / "wds")
    seen: list[int] = []
    for stream in range(2):
        spec = _spec(shards, streams=2, shuffle_buffer=5)
        seen += [i for b in _take(PairStream(spec).stream_batches(stream), 5) for i in _ids(b)]
    assert len(seen) == len(set(seen)) == 40
    # Deterministic through the shuffle buffer, and resumable by position.
    spec = _spec(shards, streams=2, shuffle_buffer=5)
    first = _take(PairStream(spec).stream_batches(1), 4)
    state = LoaderState.start(2)
    state.positions[1] = (first[1].epoch, first[1].cursor)
    again = _take(
        PairStream(_spec(shards, streams=2, shuffle_buffer=5, state=state)).stream_batches(1), 2
    )
    assert [_ids(b) for b in again] == [_ids(b) for b in first[2:]]
