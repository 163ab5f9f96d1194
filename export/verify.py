"""Parity of an exported tower pair against PyTorch, on real photos and real sentences.

Texts: real Chinese captions cut to every length from 1 to 50 word pieces
(with [CLS] and [SEP]: 3 to 52 tokens), each padded to the longest of its
batch, so a graph that baked in a sequence length or ignored the padding mask
fails. Images: real photos. For both towers the per-row cosine between
PyTorch and the graph, and whether every row's top-10 neighbours (texts among
texts, images among texts) are the same set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from model.modeling import ChineseCLIP
from runtime.errors import CnClipError
from runtime.images import PreprocessConfig, load_image, preprocess_batch
from runtime.retrieval import topk_indices
from runtime.sessions import EncoderSession
from runtime.tokenizer import ChineseTokenizer

THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
TOP_K = 10


class VerificationError(CnClipError):
    """The exported graph does not reproduce PyTorch closely enough; nothing was written."""


@dataclass
class VerificationSet:
    token_ids: npt.NDArray[np.int64]  # [n, 52] rows of every length, 0-padded
    pixels: npt.NDArray[np.float32]  # [m, 3, N, N]


def verification_set(
    captions: Sequence[str],
    photos: Sequence[Path] | Sequence[Image.Image],
    tokenizer: ChineseTokenizer,
    image_config: PreprocessConfig,
    extra_texts: int = 40,
) -> VerificationSet:
    """Rows of every piece count 1..context-2 (each a prefix of the shortest caption that
    is long enough), plus ``extra_texts`` whole captions, and the photos preprocessed."""
    pieces = [tokenizer.encode(c) for c in captions]
    by_length = sorted(pieces, key=len)
    limit = tokenizer.context_length - 2
    rows: list[list[int]] = []
    for length in range(1, limit + 1):
        source = next((p for p in by_length if len(p) >= length), by_length[-1])
        rows.append([tokenizer.cls_id, *source[:length], tokenizer.sep_id])
    step = max(1, len(pieces) // extra_texts)
    rows += [[tokenizer.cls_id, *p[:limit], tokenizer.sep_id] for p in pieces[::step][:extra_texts]]
    ids = np.zeros((len(rows), tokenizer.context_length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    images = [p if isinstance(p, Image.Image) else load_image(p) for p in photos]
    return VerificationSet(ids, preprocess_batch(images, image_config))


def _batches(ids: npt.NDArray[np.int64], size: int) -> list[npt.NDArray[np.int64]]:
    """Batches padded to their own longest row (a mix of lengths in every batch)."""
    out = []
    for start in range(0, len(ids), size):
        batch = ids[start : start + size]
        width = int((batch != 0).sum(axis=1).max())
        out.append(np.ascontiguousarray(batch[:, :width]))
    return out


def _neighbours_agree(
    a: npt.NDArray[np.float32],
    b: npt.NDArray[np.float32],
    keys_a: npt.NDArray[np.float32],
    keys_b: npt.NDArray[np.float32],
) -> float:
    """Share of rows whose top-10 neighbours are the same, up to ties within the error.

    The graph's top 10 count as the same as PyTorch's when each of them scores, by
    PyTorch, at least PyTorch's 10th best minus twice the largest similarity error
    measured on the whole matrix: only items whose order the numerical error can flip
    may trade places. (Random-weight models put many items within 1e-6 of each other.)
    """
    ref, got = a @ keys_a.T, b @ keys_b.T
    k = min(TOP_K, ref.shape[1])
    tolerance = 2 * float(np.abs(ref - got).max())
    kth = np.sort(ref, axis=1)[:, -k]
    got_top = topk_indices(got, k)
    same = np.take_along_axis(ref, got_top, axis=1) >= (kth - tolerance)[:, None]
    return float(same.all(axis=1).mean())


@torch.no_grad()
def measure_parity(
    model: ChineseCLIP,
    text: EncoderSession,
    image: EncoderSession,
    data: VerificationSet,
    batch_size: int = 16,
) -> dict[str, float | int]:
    """Cosine and neighbour agreement of the graphs against ``model`` (eval, fp32, CPU)."""
    model.eval()
    ref_txt, got_txt = [], []
    for batch in _batches(data.token_ids, batch_size):
        ref_txt.append(model.encode_text(torch.from_numpy(batch)).float().numpy())
        got_txt.append(text.run(batch))
    ref_img, got_img = [], []
    for start in range(0, len(data.pixels), batch_size):
        pixels = np.ascontiguousarray(data.pixels[start : start + batch_size])
        ref_img.append(model.encode_image(torch.from_numpy(pixels)).float().numpy())
        got_img.append(image.run(pixels))
    rt, gt = np.concatenate(ref_txt), np.concatenate(got_txt)
    ri, gi = np.concatenate(ref_img), np.concatenate(got_img)
    return {
        "texts": len(rt),
        "images": len(ri),
        "text_min_cosine": float((rt * gt).sum(axis=1).min()),
        "image_min_cosine": float((ri * gi).sum(axis=1).min()),
        "text_top10_agreement": _neighbours_agree(rt, gt, rt, gt),
        "image_top10_agreement": _neighbours_agree(ri, gi, rt, gt),
    }


def check_parity(parity: dict[str, float | int], precision: str, what: str | None = None) -> None:
    """Raise :class:`VerificationError` when a tower misses the precision's thresholds."""
    threshold = THRESHOLDS[precision]
    problems = []
    for tower in ("text", "image"):
        cosine = float(parity[f"{tower}_min_cosine"])
        if cosine < threshold:
            problems.append(f"{tower} cosine {cosine:.6f} < {threshold}")
        if float(parity[f"{tower}_top10_agreement"]) < 1.0:
            share = float(parity[f"{tower}_top10_agreement"])
            problems.append(
                f"{tower} top-10 neighbours differ for {100 * (1 - share):.1f}% of rows"
            )
    if problems:
        raise VerificationError(
            f"the {what or precision + ' export'} does not match PyTorch ({'; '.join(problems)}); "
            "no bundle was written"
        )
