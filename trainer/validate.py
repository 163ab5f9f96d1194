"""Zero-shot validation during training: retrieval recall or classification accuracy.

The validation set is read once (undecoded) when the trainer starts; each
validation embeds it with the current weights, in eval mode and in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from model.modeling import ChineseCLIP
from runtime.errors import CnClipError, DataError
from runtime.images import PreprocessConfig, load_and_preprocess
from runtime.retrieval import class_embeddings, classification_metrics, retrieval_metrics
from runtime.tokenizer import ChineseTokenizer
from sources.records import IndexedSource, Record

log = logging.getLogger(__name__)


@dataclass
class RetrievalSet:
    """Distinct images and distinct texts, with each text's relevant images."""

    images: list[Record]
    texts: list[str]
    text_to_images: list[list[int]]


@dataclass
class ZeroShotSet:
    images: list[Record]
    labels: list[int]
    class_names: list[str]
    templates: list[str]


def _records(source: IndexedSource, max_samples: int | None) -> Iterator[Record]:
    total = len(source) if max_samples is None else min(len(source), max_samples)
    for index in range(total):
        try:
            yield source.get(index)
        except CnClipError as exc:
            log.warning("validation: skipping pair %d: %s", index, exc)


def retrieval_set(source: IndexedSource, max_samples: int | None = None) -> RetrievalSet:
    """Group pairs by image and by caption; a caption is relevant to each image it pairs with."""
    image_index: dict[str, int] = {}
    images: list[Record] = []
    text_index: dict[str, int] = {}
    relevant: list[set[int]] = []
    for record in _records(source, max_samples):
        if record.key not in image_index:
            image_index[record.key] = len(images)
            images.append(record)
        text = record.text.strip()
        if text not in text_index:
            text_index[text] = len(relevant)
            relevant.append(set())
        relevant[text_index[text]].add(image_index[record.key])
    if not images:
        raise DataError("the validation set holds no readable pairs")
    return RetrievalSet(images, list(text_index), [sorted(r) for r in relevant])


def zeroshot_set(
    source: IndexedSource,
    class_names: Sequence[str],
    templates: Sequence[str],
    max_samples: int | None = None,
) -> ZeroShotSet:
    """Images with their class index; the class names and templates make the classifier."""
    if not templates:
        raise DataError("zero-shot validation needs at least one caption template")
    images: list[Record] = []
    labels: list[int] = []
    if max_samples is not None and max_samples < len(source):
        # A strided subset keeps every class present.
        picks: Sequence[int] = np.linspace(0, len(source) - 1, max_samples).astype(int).tolist()
    else:
        picks = range(len(source))
    for index in picks:
        try:
            record = source.get(index)
        except CnClipError as exc:
            log.warning("validation: skipping image %d: %s", index, exc)
            continue
        images.append(record)
        labels.append(record.label)
    return ZeroShotSet(images, labels, list(class_names), list(templates))


def _device_of(model: ChineseCLIP) -> torch.device:
    return model.text_projection.device


@torch.no_grad()
def embed_images(
    model: ChineseCLIP, records: Sequence[Record], batch_size: int
) -> tuple[npt.NDArray[np.float32], list[int]]:
    """Normalized embeddings of the decodable images, and the indices that were decodable."""
    config = PreprocessConfig(image_size=model.config.vision.image_size)
    out: list[npt.NDArray[np.float32]] = []
    kept: list[int] = []
    device = _device_of(model)
    for start in range(0, len(records), batch_size):
        arrays = []
        for offset, record in enumerate(records[start : start + batch_size]):
            try:
                arrays.append(load_and_preprocess(record.image, config, name=record.key))
                kept.append(start + offset)
            except CnClipError as exc:
                log.warning("validation: skipping image %s: %s", record.key, exc)
        if arrays:
            batch = torch.from_numpy(np.stack(arrays)).to(device)
            out.append(model.encode_image(batch).float().cpu().numpy())
    if not out:
        raise DataError("no validation image could be decoded")
    return np.concatenate(out), kept


@torch.no_grad()
def embed_texts(
    model: ChineseCLIP, tokenizer: ChineseTokenizer, texts: Sequence[str], batch_size: int
) -> npt.NDArray[np.float32]:
    device = _device_of(model)
    out = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[start : start + batch_size]), pad_to="longest").ids
        out.append(model.encode_text(torch.from_numpy(ids).to(device)).float().cpu().numpy())
    return np.concatenate(out)


def validate(
    model: ChineseCLIP,
    tokenizer: ChineseTokenizer,
    data: RetrievalSet | ZeroShotSet,
    batch_size: int = 256,
) -> dict[str, float]:
    """Metrics in percent; the key ``score`` is the one the best checkpoint follows
    (mean recall for retrieval, top-1 accuracy for zero-shot)."""
    was_training = model.training
    model.eval()
    try:
        image_emb, kept = embed_images(model, data.images, batch_size)
        if isinstance(data, RetrievalSet):
            position = {old: new for new, old in enumerate(kept)}
            relevant = [[position[i] for i in rel if i in position] for rel in data.text_to_images]
            has_image = [t for t, rel in enumerate(relevant) if rel]
            text_emb = embed_texts(model, tokenizer, [data.texts[t] for t in has_image], batch_size)
            metrics = retrieval_metrics(text_emb, image_emb, [relevant[t] for t in has_image])
            metrics["score"] = metrics["mean_recall"]
        else:
            prompts = [t.format(name) for name in data.class_names for t in data.templates]
            text_emb = embed_texts(model, tokenizer, prompts, batch_size)
            classes = class_embeddings(
                text_emb.reshape(len(data.class_names), len(data.templates), -1)
            )
            labels = np.asarray([data.labels[i] for i in kept])
            metrics = classification_metrics(image_emb @ classes.T, labels, len(data.class_names))
            metrics["score"] = metrics["top1"]
    finally:
        model.train(was_training)
    return metrics
