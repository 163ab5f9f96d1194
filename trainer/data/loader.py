"""The streaming training loader: every rank its own shard, exact resume, bounded memory.

The data of a stage is cut into ``world_size x streams`` disjoint *streams*
(``streams`` = DataLoader workers, at least one). Stream ``g = rank x streams
+ s`` of epoch ``e`` is a deterministic sequence of records:

* indexed sources (official tsv/jsonl, LMDB, catalogs, ImageFolders): a
  permutation of all pairs drawn from ``(seed, stage, epoch)``, every ``G``-th
  entry starting at ``g``; a worker keeps only its share of the permutation
  (4 bytes per pair while it is drawn at an epoch's start);
* sharded sources (WebDataset tars): the epoch's shard order, every ``G``-th
  shard (or every ``G``-th record when there are fewer shards than streams),
  read sequentially through a seeded shuffle buffer of bounded size.

Each stream produces whole micro-batches and loops over epochs forever (the
stage's step count decides when training stops), so ranks never wait on each
other at an epoch's end. Augmentation randomness is drawn from a generator
seeded by the record's place in its stream. The position of a stream is
``(epoch, records consumed)``; every batch carries the position it leaves its
stream in, the trainer keeps the positions of the batches it has *used* (not
those prefetched), and a resumed run restarts each stream there — with the
workers rotated so that the stream whose batch was due next comes first.
Records that cannot be read, decoded or captioned are skipped and counted.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from runtime.errors import CnClipError, DataError
from runtime.images import DEFAULT_MAX_PIXELS, load_image
from runtime.tokenizer import ChineseTokenizer
from sources.records import IndexedSource, Record, ShardedSource

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image, np.random.Generator], npt.NDArray[np.float32]]
Source = IndexedSource | ShardedSource


@dataclass
class LoaderState:
    """Where each stream of a stage stands, and how many batches were used."""

    streams: int
    positions: list[tuple[int, int]]  # per stream: (epoch, records consumed in it)
    batches: int = 0
    corrupt: int = 0

    @classmethod
    def start(cls, streams: int) -> LoaderState:
        return cls(streams, [(0, 0)] * streams)

    def to_dict(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "positions": [list(p) for p in self.positions],
            "batches": self.batches,
            "corrupt": self.corrupt,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderState:
        positions = [(int(e), int(c)) for e, c in data["positions"]]
        return cls(int(data["streams"]), positions, int(data["batches"]), int(data["corrupt"]))

    @property
    def epoch(self) -> int:
        return min(e for e, _ in self.positions)


@dataclass
class Batch:
    """A collated micro-batch plus the stream position it leaves behind."""

    images: torch.Tensor  # [b, 3, N, N] float32
    input_ids: torch.Tensor  # [b, L] int64
    groups: torch.Tensor  # [b] int64: class index, or a hash of the caption
    stream: int
    epoch: int
    cursor: int
    corrupt: int = 0


def text_group(text: str) -> int:
    """A stable id for a caption, so identical captions can count as positives."""
    return zlib.crc32(" ".join(text.split()).lower().encode("utf-8")) + (1 << 40)


@dataclass
class StreamSpec:
    """Everything a worker needs to produce the batches of its streams (picklable)."""

    source: Any
    batch_size: int
    rank: int
    world_size: int
    streams: int
    seed: int
    stage: int
    tokenizer: ChineseTokenizer
    transform: Transform
    templates: tuple[str, ...] = ()
    shuffle_buffer: int = 2000
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_samples: int | None = None
    state: LoaderState = field(default_factory=lambda: LoaderState.start(1))


def _epoch_rng(spec: StreamSpec, epoch: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, spec.stage, epoch, *extra])


def _indexed_records(
    spec: StreamSpec, source: IndexedSource, stream_id: int, epoch: int, start: int
) -> Iterator[tuple[int, Record | None]]:
    total = len(source) if spec.max_samples is None else min(len(source), spec.max_samples)
    # The epoch's permutation (4 bytes a pair while it is drawn), of which this stream
    # keeps only its share: memory stays at total / streams indices per worker.
    permutation = np.arange(total, dtype=np.int32 if total < 2**31 else np.int64)
    _epoch_rng(spec, epoch).shuffle(permutation)
    order = permutation[stream_id :: spec.world_size * spec.streams].copy()
    del permutation
    for position in range(start, len(order)):
        try:
            yield position, source.get(int(order[position]))
        except (CnClipError, OSError, ValueError) as exc:
            log.warning("skipping pair %d: %s", int(order[position]), exc)
            yield position, None


def _sharded_records(
    spec: StreamSpec, source: ShardedSource, stream_id: int, epoch: int, start: int
) -> Iterator[tuple[int, Record | None]]:
    streams_total = spec.world_size * spec.streams
    shard_order = _epoch_rng(spec, epoch).permutation(source.num_shards)

    def raw() -> Iterator[Record]:
        if source.num_shards >= streams_total:
            for shard in shard_order[stream_id::streams_total]:
                yield from source.read_shard(int(shard))
        else:
            index = 0
            for shard in shard_order:
                for record in source.read_shard(int(shard)):
                    if index % streams_total == stream_id:
                        yield record
                    index += 1

    rng = _epoch_rng(spec, epoch, stream_id, 1)
    buffer: list[Record] = []
    position = 0

    def emit(i: int) -> Record:
        record = buffer[i]
        buffer[i] = buffer[-1]
        buffer.pop()
        return record

    for record in raw():
        buffer.append(record)
        if len(buffer) >= spec.shuffle_buffer:
            chosen = emit(int(rng.integers(len(buffer))))
            if position >= start:
                yield position, chosen
            position += 1
    while buffer:
        chosen = emit(int(rng.integers(len(buffer))))
        if position >= start:
            yield position, chosen
        position += 1


class PairStream(IterableDataset[Batch]):
    """An endless iterable of micro-batches for this rank (see the module docstring)."""

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__()
        self.spec = spec

    def _records(
        self, stream_id: int, epoch: int, start: int
    ) -> Iterator[tuple[int, Record | None]]:
        source = self.spec.source
        if isinstance(source, IndexedSource):
            return _indexed_records(self.spec, source, stream_id, epoch, start)
        return _sharded_records(self.spec, source, stream_id, epoch, start)

    def _sample(
        self, record: Record, stream_id: int, epoch: int, position: int
    ) -> tuple[npt.NDArray[np.float32], str, int]:
        rng = np.random.default_rng([self.spec.seed, self.spec.stage, epoch, stream_id, position])
        text = record.text.strip()
        if not text:
            raise DataError(f"{record.key}: empty caption")
        if record.label >= 0 and self.spec.templates:
            text = self.spec.templates[int(rng.integers(len(self.spec.templates)))].format(text)
        image = load_image(record.image, max_pixels=self.spec.max_pixels, name=record.key)
        group = record.label if record.label >= 0 else text_group(text)
        return self.spec.transform(image, rng), text, group

    def _collate(
        self, samples: list[tuple[npt.NDArray[np.float32], str, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.stack([s[0] for s in samples]))
        tokens = self.spec.tokenizer([s[1] for s in samples], pad_to="longest")
        groups = torch.tensor([s[2] for s in samples], dtype=torch.int64)
        return images, torch.from_numpy(tokens.ids), groups

    def stream_batches(self, stream: int) -> Iterator[Batch]:
        """The batches of logical stream ``stream`` of this rank, from its saved position."""
        spec = self.spec
        stream_id = spec.rank * spec.streams + stream
        epoch, start = spec.state.positions[stream]
        empty_epochs = 0
        while True:
            samples: list[tuple[npt.NDArray[np.float32], str, int]] = []
            corrupt = 0
            produced = False
            for position, record in self._records(stream_id, epoch, start):
                try:
                    if record is None:
                        raise DataError("unreadable pair")
                    samples.append(self._sample(record, stream_id, epoch, position))
                except (CnClipError, OSError, ValueError) as exc:
                    corrupt += 1
                    if record is not None:
                        log.warning("skipping %s: %s", record.key, exc)
                    continue
                if len(samples) == spec.batch_size:
                    images, ids, groups = self._collate(samples)
                    yield Batch(images, ids, groups, stream, epoch, position + 1, corrupt)
                    samples, corrupt, produced = [], 0, True
            # The epoch's last partial batch is dropped; the next epoch starts.
            empty_epochs = 0 if produced or start > 0 else empty_epochs + 1
            if empty_epochs >= 2:
                raise DataError(
                    f"stream {stream_id} of {spec.world_size * spec.streams} got no full batch "
                    f"of {spec.batch_size} pairs in a whole epoch: the dataset is too small "
                    f"(or too corrupt) for this batch size and number of ranks/workers"
                )
            epoch, start = epoch + 1, 0

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is None:  # in the main process: interleave the streams like workers would
            iterators = [self.stream_batches(s) for s in range(self.spec.streams)]
            turn = self.spec.state.batches % self.spec.streams
            while True:
                yield next(iterators[turn])
                turn = (turn + 1) % self.spec.streams
        torch.set_num_threads(1)
        # The DataLoader asks worker 0 first; make that the stream whose turn it is.
        yield from self.stream_batches((info.id + self.spec.state.batches) % self.spec.streams)


def build_loader(spec: StreamSpec, workers: int, pin_memory: bool = False) -> DataLoader[Batch]:
    """A DataLoader over :class:`PairStream` with ``workers`` processes (0: in-process)."""
    if workers and workers != spec.streams:
        raise ValueError("spec.streams must equal the number of workers")
    return DataLoader(
        PairStream(spec),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        # Its own generator: starting workers must not draw from the global random
        # state, which a resumed run restores and replays (dropout masks).
        generator=torch.Generator().manual_seed(spec.seed),
    )


def source_size(source: Source, max_samples: int | None, declared: int | None) -> int | None:
    """Pairs per epoch: the indexed length, the shards' manifest, or ``data.num_samples``."""
    if isinstance(source, IndexedSource):
        n = len(source)
        return n if max_samples is None else min(n, max_samples)
    return declared if declared is not None else source.num_samples
