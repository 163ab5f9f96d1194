"""Zero-shot classification on an ImageFolder dataset with Chinese class names.

>>> from evaluation import open_model, load_zeroshot_data, evaluate_zeroshot
>>> data = load_zeroshot_data("datasets/cifar-100/test", "datasets/cifar-100/label_cn.txt")
>>> run = evaluate_zeroshot(open_model("clip_cn_vit-b-16.pt"), data)
>>> run.metrics["top1"]

Each class is described by every template filled with its Chinese name; the template
embeddings are normalized, averaged and normalized again (prompt ensembling, Radford et
al. 2021). An image's logits are ``100 x cosine`` with each class embedding, as in the
official ``zeroshot_evaluation.py``; top-1/top-5 accuracy and the mean of the per-class
recalls are reported, with the confusion matrix and the most confused pairs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evaluation.encode import IMAGE_BATCH, TEXT_BATCH, embed_images, embed_texts
from evaluation.metrics import ConfusedPair, confusion_matrix, most_confused
from evaluation.models import EvalModel
from runtime.retrieval import class_embeddings, classification_metrics
from runtime.templates import check_templates, fill

LOGIT_SCALE = 100.0


@dataclass
class ZeroShotData:
    """Images with their class index; ``read(i)`` returns image ``i``'s encoded bytes."""

    name: str
    classes: list[str]  # folder names
    class_names: list[str]  # display (Chinese) names
    labels: list[int]
    keys: list[str]
    read: Callable[[int], bytes]
    skipped: dict[str, int] = field(default_factory=dict)


def load_zeroshot_data(
    data: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None
) -> ZeroShotData:
    """An ImageFolder tree or archive (``root/<class>/<image>``) and its class names.

    ``labels``: a ``label_cn.txt`` of one name per line in class-index order (class
    folders sorted by name, as torchvision's ImageFolder does), or a ``folder<TAB>name``
    .tsv; without it the folder names are the class names.

    Raises:
        DataError: a missing or empty tree, or names that do not fit the folders.
    """
    from sources.imagefolder import ImageFolderSource

    source = ImageFolderSource(data, labels)

    def read(index: int) -> bytes:
        return source.get(index).image

    return ZeroShotData(
        name=Path(data).name,
        classes=list(source.classes),
        class_names=list(source.class_names),
        labels=source.labels,
        keys=source.keys,
        read=read,
        skipped=dict(source.skipped),
    )


@dataclass
class ZeroShotRun:
    """Metrics (percent), per-class recall, the confusion matrix and its worst cells."""

    metrics: dict[str, float]
    per_class: list[float | None]
    confusion: npt.NDArray[np.int64]
    confused: list[ConfusedPair]
    counts: dict[str, int]
    seconds: dict[str, float]
    templates: list[str]
    failed_images: list[tuple[str, str]] = field(default_factory=list)

    def confused_rows(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        return [
            {
                "true": class_names[p.true],
                "predicted": class_names[p.predicted],
                "count": p.count,
                "share": p.share,
            }
            for p in self.confused
        ]


def evaluate_zeroshot(
    model: EvalModel,
    data: ZeroShotData,
    templates: Sequence[str],
    *,
    text_batch: int = TEXT_BATCH,
    image_batch: int = IMAGE_BATCH,
    workers: int | None = None,
    progress: bool | None = None,
    confused_pairs: int = 10,
) -> ZeroShotRun:
    """Classify every image of ``data`` against its class names, prompt-ensembled."""
    chosen = check_templates(list(templates))
    names = data.class_names
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    prompts = [fill(t, name) for name in names for t in chosen]
    desc = f"{model.info.label}: prompts"
    texts = embed_texts(model, prompts, batch_size=text_batch, progress=progress, desc=desc)
    classes = class_embeddings(texts.vectors.reshape(len(names), len(chosen), -1))
    seconds["embed_prompts"] = time.perf_counter() - started
    started = time.perf_counter()
    images = embed_images(
        model,
        len(data.labels),
        data.read,
        lambda i: data.keys[i],
        batch_size=image_batch,
        workers=workers,
        progress=progress,
        desc=f"{model.info.label}: images",
    )
    seconds["embed_images"] = time.perf_counter() - started
    labels = np.asarray([data.labels[i] for i in images.kept], dtype=np.int64)
    logits = LOGIT_SCALE * images.vectors @ classes.T
    metrics = classification_metrics(logits, labels, len(names))
    predicted = np.argsort(-logits, axis=1, kind="stable")[:, 0]
    matrix = confusion_matrix(labels, predicted, len(names))
    totals = matrix.sum(axis=1)
    per_class: list[float | None] = [
        100.0 * float(matrix[c, c]) / float(totals[c]) if totals[c] else None
        for c in range(len(names))
    ]
    counts = {
        "images": len(data.labels),
        "images_used": len(images.kept),
        "images_unreadable": len(images.failed),
        "classes": len(names),
        "templates": len(chosen),
        "prompts_truncated": len(texts.truncated),
        **{f"skipped_{k}": v for k, v in data.skipped.items() if v},
    }
    failed = [(data.keys[i], why) for i, why in images.failed]
    return ZeroShotRun(
        metrics=metrics,
        per_class=per_class,
        confusion=matrix,
        confused=most_confused(matrix, confused_pairs),
        counts=counts,
        seconds=seconds,
        templates=chosen,
        failed_images=failed,
    )
