"""The one record type every data reader produces, the reader protocols, and their helpers."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Record:
    """One image-text pair, the image still encoded.

    ``key`` names the pair in messages and rejects (an image id, a file path,
    a shard member). ``image`` holds the encoded file bytes (JPEG, PNG, ...).
    ``text`` is the caption; for classification data it is the class name, and
    the loader turns it into a caption with a template. ``label`` is the class
    index for classification data and -1 otherwise.
    """

    key: str
    image: bytes
    text: str
    label: int = -1


@runtime_checkable
class IndexedSource(Protocol):
    """Random access by position: official tsv/jsonl, LMDB, catalogs, ImageFolders."""

    def __len__(self) -> int: ...

    def get(self, index: int) -> Record:
        """The pair at ``index`` (0 <= index < len). Raises DataError for a corrupt one."""
        ...


@runtime_checkable
class ShardedSource(Protocol):
    """Sequential shards: WebDataset tar files."""

    @property
    def num_shards(self) -> int: ...

    @property
    def num_samples(self) -> int | None:
        """Pairs in all shards when known (from the manifest), else None."""
        ...

    def read_shard(self, shard: int) -> Iterator[Record]:
        """The shard's pairs in file order; corrupt members are skipped and counted."""
        ...


# ---------------------------------------------------------------- helpers shared by the readers


class SkipCounter:
    """Counts of skipped input lines by reason, keeping the first few line numbers of each.

    Readers skip malformed lines at open instead of failing; they report the counts
    (``as_dict``) and log one warning per reason that names the file and the lines.
    """

    EXAMPLES = 5

    def __init__(self, *reasons: str) -> None:
        self._counts: dict[str, int] = dict.fromkeys(reasons, 0)
        self._lines: dict[str, list[int]] = {reason: [] for reason in reasons}

    def add(self, reason: str, line: int) -> None:
        """Count one skipped item of ``reason`` at 1-based ``line`` (0 when not a line)."""
        self._counts[reason] = self._counts.get(reason, 0) + 1
        lines = self._lines.setdefault(reason, [])
        if line and len(lines) < self.EXAMPLES:
            lines.append(line)

    def as_dict(self) -> dict[str, int]:
        return dict(self._counts)

    def log(self, logger: logging.Logger, where: str) -> None:
        """One warning per reason with a non-zero count."""
        for reason, count in self._counts.items():
            if not count:
                continue
            lines = self._lines.get(reason, [])
            word = "line" if len(lines) == 1 else "lines"
            at = f" (first at {word} {', '.join(map(str, lines))})" if lines else ""
            logger.warning("%s: skipped %d %s%s", where, count, reason.replace("_", " "), at)


class ByteRangeFile:
    """Reads byte ranges of one file with ``os.pread``, for readers with a byte-offset index.

    ``pread`` leaves the file position alone, so one descriptor serves threads and
    forked DataLoader workers alike. The file is opened on first use; a pickled copy
    (spawned workers) drops the descriptor and opens its own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; OSError when unreadable."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "_fd": None}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
