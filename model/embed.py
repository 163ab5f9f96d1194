"""Embed texts and images with a PyTorch checkpoint: the engine of ``cnclip embed``.

>>> from model.embed import embed
>>> vectors = embed("clip_cn_vit-b-16.pt", texts=["红色的杯子", "蓝色的T恤"])
>>> vectors.shape, vectors.dtype
((2, 512), dtype('float32'))

Rows are L2-normalized and in input order. Texts are tokenized with the
official rules (see :mod:`runtime.tokenizer`); texts longer than 50 word pieces
are truncated, as the official models were trained, and a warning says which.
Images are decoded and preprocessed by :mod:`runtime.images` in worker threads
while the previous batch is encoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from tqdm import tqdm

from model.checkpoints import load_checkpoint
from model.configs import get_config
from model.modeling import ChineseCLIP
from runtime.devices import parse_device
from runtime.errors import CnClipError
from runtime.files import progress_disabled
from runtime.images import DEFAULT_MAX_PIXELS, PreprocessConfig, load_and_preprocess, preprocess
from runtime.tokenizer import ChineseTokenizer, default_tokenizer

log = logging.getLogger(__name__)

ImageInput = str | os.PathLike[str] | bytes | Image.Image
Embeddings = npt.NDArray[np.float32]

DEFAULT_TEXT_BATCH = 64
DEFAULT_IMAGE_BATCH = 16


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (:func:`runtime.devices.parse_device`), checked
    against what this machine has.

    Raises:
        CnClipError: for an unknown device or a CUDA device PyTorch cannot see.
    """
    if isinstance(device, torch.device):
        resolved = device
    else:
        parsed = parse_device(device)
        resolved = torch.device(str(parsed))
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise CnClipError(
                f"device {device!r} asked for, but PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} "
                "CUDA)"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise CnClipError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif resolved.type != "cpu":
        raise CnClipError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    return resolved


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class Embedder:
    """A loaded model plus its tokenizer and preprocessing, ready to embed in batches."""

    def __init__(
        self,
        model: ChineseCLIP,
        *,
        device: str | torch.device = "cpu",
        tokenizer: ChineseTokenizer | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer or default_tokenizer()
        self.preprocess_config = PreprocessConfig(
            image_size=model.config.vision.image_size, max_pixels=max_pixels
        )
        self.context_length = model.config.context_length

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        arch: str | None = None,
        *,
        device: str | torch.device = "cpu",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Embedder:
        """Load any checkpoint format (see :func:`model.checkpoints.load_checkpoint`)."""
        resolved = resolve_device(device)  # fail before reading gigabytes
        loaded = load_checkpoint(path, arch, device="cpu")
        return cls(loaded.model, device=resolved, max_pixels=max_pixels)

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    def _progress(self, total: int, unit: str, enabled: bool) -> tqdm[Any]:
        return tqdm(total=total, unit=unit, disable=progress_disabled(enabled), dynamic_ncols=True)

    def embed_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = DEFAULT_TEXT_BATCH,
        progress: bool = False,
    ) -> Embeddings:
        """texts (n) -> float32 [n, embed_dim], L2-normalized, in input order."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of texts, not one string")
        _check_batch_size(batch_size)
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        truncated: list[int] = []
        with self._progress(len(texts), "text", progress) as bar, torch.inference_mode():
            for part in _batches(len(texts), batch_size):
                # Pad only to the longest text of the batch: queries are short.
                batch = self.tokenizer(
                    texts[part], context_length=self.context_length, pad_to="longest"
                )
                truncated += [part.start + int(i) for i in np.flatnonzero(batch.truncated)]
                ids = torch.from_numpy(batch.ids).to(self.device)
                out[part] = self.model.encode_text(ids).float().cpu().numpy()
                bar.update(part.stop - part.start)
        if truncated:
            shown = ", ".join(str(i) for i in truncated[:5])
            log.warning(
                "%d of %d texts were longer than %d word pieces and were truncated "
                "(input positions, from 0: %s%s)",
                len(truncated),
                len(texts),
                self.context_length - 2,
                shown,
                ", ..." if len(truncated) > 5 else "",
            )
        return out

    def _load(self, image: ImageInput) -> npt.NDArray[np.float32]:
        if isinstance(image, Image.Image):
            return preprocess(image, self.preprocess_config)
        return load_and_preprocess(image, self.preprocess_config)

    def embed_images(
        self,
        images: Sequence[ImageInput],
        *,
        batch_size: int = DEFAULT_IMAGE_BATCH,
        progress: bool = False,
        workers: int | None = None,
    ) -> Embeddings:
        """images (paths, bytes or PIL images) -> float32 [n, embed_dim], in input order.

        Decoding runs in ``workers`` threads one batch ahead of the encoder.

        Raises:
            InvalidImageError: naming the first image that cannot be read.
        """
        _check_batch_size(batch_size)
        out = np.empty((len(images), self.embed_dim), dtype=np.float32)
        workers = workers or min(8, os.cpu_count() or 1)
        parts = list(_batches(len(images), batch_size))
        with (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool,
            self._progress(len(images), "image", progress) as bar,
            torch.inference_mode(),
        ):

            def submit(part: slice) -> list[Future[npt.NDArray[np.float32]]]:
                return [pool.submit(self._load, image) for image in images[part]]

            pending = submit(parts[0]) if parts else []
            try:
                for index, part in enumerate(parts):
                    ready = pending
                    pending = submit(parts[index + 1]) if index + 1 < len(parts) else []
                    pixels = torch.from_numpy(np.stack([f.result() for f in ready]))
                    features = self.model.encode_image(pixels.to(self.device))
                    out[part] = features.float().cpu().numpy()
                    bar.update(part.stop - part.start)
            finally:
                for future in pending:
                    future.cancel()
        return out


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CnClipError(f"batch size must be a positive integer, not {batch_size!r}")


def embed(
    model: str | os.PathLike[str] | ChineseCLIP,
    *,
    texts: Sequence[str] | None = None,
    images: Sequence[ImageInput] | None = None,
    arch: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: bool = False,
) -> Embeddings:
    """Embed either ``texts`` or ``images`` with a checkpoint (any format) or a loaded model.

    Returns:
        float32 ``[n, embed_dim]``, L2-normalized, rows in input order.

    Raises:
        CnClipError: bad arguments, an unreadable checkpoint or image (one-line message).
    """
    if (texts is None) == (images is None):
        raise CnClipError("give either texts or images to embed")
    if isinstance(model, ChineseCLIP):
        if arch is not None and not get_config(arch).same_architecture(model.config):
            raise CnClipError(f"the model is {model.config.name}, not {arch}")
        embedder = Embedder(model, device=device)
    else:
        embedder = Embedder.from_checkpoint(model, arch, device=device)
    if texts is not None:
        return embedder.embed_texts(
            texts, batch_size=batch_size or DEFAULT_TEXT_BATCH, progress=progress
        )
    assert images is not None
    return embedder.embed_images(
        images, batch_size=batch_size or DEFAULT_IMAGE_BATCH, progress=progress
    )
