"""Embedding an evaluation set in batches: texts, and images decoded in worker threads.

Images are read, decoded and preprocessed by a thread pool one batch ahead of the
encoder (Pillow releases the GIL while decoding), so at most two batches of pixels are
held at a time. An image that cannot be read or decoded is left out and reported, never
a crash: the caller decides what its absence means for the metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from evaluation.models import EvalModel
from runtime.errors import CnClipError, DataError
from runtime.images import load_and_preprocess

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
TEXT_BATCH = 128
IMAGE_BATCH = 32


def progress_bar(total: int, desc: str, unit: str, enabled: bool | None) -> tqdm[Any]:
    """A tqdm bar: on a terminal when ``enabled`` is None, always when True, never when
    False."""
    disable = None if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)


@dataclass
class EmbeddedTexts:
    vectors: FloatArray
    #: input positions of the texts longer than the context and truncated
    truncated: list[int] = field(default_factory=list)


@dataclass
class EmbeddedImages:
    """Vectors of the images that could be used; ``kept[i]`` is row i's input position."""

    vectors: FloatArray
    kept: list[int]
    #: (input position, reason) of every image left out
    failed: list[tuple[int, str]] = field(default_factory=list)


def _check_batch(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CnClipError(f"batch size must be a positive integer, not {batch_size!r}")


def embed_texts(
    model: EvalModel,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH,
    progress: bool | None = None,
    desc: str = "texts",
) -> EmbeddedTexts:
    """Unit vectors of ``texts`` in input order; each batch is padded to its longest text."""
    _check_batch(batch_size)
    dim: int | None = None
    parts: list[FloatArray] = []
    truncated: list[int] = []
    with progress_bar(len(texts), desc, "text", progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = model.tokenizer(list(texts[start : start + batch_size]), pad_to="longest")
            truncated += [start + int(i) for i in np.flatnonzero(batch.truncated)]
            vectors = model.encode_token_ids(batch.ids)
            dim = vectors.shape[1]
            parts.append(vectors)
            bar.update(len(batch.ids))
    if truncated:
        log.warning(
            "%d of %d texts were longer than the context and were truncated, as the official "
            "models were trained (first at position %d)",
            len(truncated),
            len(texts),
            truncated[0],
        )
    if not parts:
        return EmbeddedTexts(np.zeros((0, dim or 0), dtype=np.float32))
    return EmbeddedTexts(np.concatenate(parts), truncated)


def embed_images(
    model: EvalModel,
    count: int,
    read: Callable[[int], bytes],
    name: Callable[[int], str],
    *,
    batch_size: int = IMAGE_BATCH,
    workers: int | None = None,
    progress: bool | None = None,
    desc: str = "images",
) -> EmbeddedImages:
    """Unit vectors of images ``0 .. count-1``, read as encoded bytes by ``read(i)``.

    ``name(i)`` names image ``i`` in warnings. Images that cannot be read, decoded or
    that are too large are left out: ``kept`` lists the positions that made it.

    Raises:
        DataError: when there are images but none of them could be used.
    """
    _check_batch(batch_size)
    config = model.preprocess_config
    workers = workers or min(8, os.cpu_count() or 1)

    def load(index: int) -> FloatArray:
        return load_and_preprocess(read(index), config, name=name(index))

    starts = list(range(0, count, batch_size))
    parts: list[FloatArray] = []
    kept: list[int] = []
    failed: list[tuple[int, str]] = []
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-decode") as pool,
        progress_bar(count, desc, "image", progress) as bar,
    ):

        def submit(start: int) -> list[tuple[int, Future[FloatArray]]]:
            stop = min(count, start + batch_size)
            return [(i, pool.submit(load, i)) for i in range(start, stop)]

        pending = submit(starts[0]) if starts else []
        try:
            for number in range(len(starts)):
                ready = pending
                pending = submit(starts[number + 1]) if number + 1 < len(starts) else []
                pixels: list[FloatArray] = []
                for index, future in ready:
                    try:
                        pixels.append(future.result())
                        kept.append(index)
                    except CnClipError as exc:
                        log.warning("left out image %s: %s", name(index), exc)
                        failed.append((index, str(exc)))
                if pixels:
                    parts.append(model.encode_pixels(np.stack(pixels)))
                bar.update(len(ready))
        finally:
            for _, future in pending:
                future.cancel()
    if count and not kept:
        raise DataError(f"none of the {count} images could be read (first: {failed[0][1]})")
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    return EmbeddedImages(vectors, kept, failed)
