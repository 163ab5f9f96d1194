"""Real inputs for the encoder benchmarks: short queries and photos from ../shared/data."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from runtime.images import PreprocessConfig, load_image, preprocess_batch

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CNCLIP_DATA_DIR", ROOT.parent / "shared" / "data"))


def short_queries() -> list[str]:
    """The photos' Chinese queries, then COCO-CN captions cut to 4..16 characters."""
    photos = DATA / "coco-photos" / "queries.jsonl"
    out = [json.loads(x)["query"] for x in photos.read_text(encoding="utf-8").splitlines()]
    for line in (DATA / "coco-cn-captions.txt").read_text(encoding="utf-8").splitlines()[:400]:
        caption = line.split("\t", 1)[-1].strip()
        out.append(caption[: 4 + len(out) % 13])  # 4..16 characters
    return out


def photo_pixels(count: int, image_size: int = 224) -> npt.NDArray[np.float32]:
    """``count`` preprocessed real photos (the COCO photos, repeated as needed)."""
    photos = sorted((DATA / "coco-photos").glob("*.jpg"))
    pixels = preprocess_batch(
        [load_image(p) for p in photos], PreprocessConfig(image_size=image_size)
    )
    return np.ascontiguousarray(np.resize(pixels, (count, *pixels.shape[1:])))


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
