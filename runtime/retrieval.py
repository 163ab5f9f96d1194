"""Retrieval and zero-shot metrics on embeddings, numpy only.

Shared by the trainer's validation, the evaluation commands and the service's
zero-shot classifier, so all of them count hits and ensemble prompts the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


def normalize(x: npt.ArrayLike) -> FloatArray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    a = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.asarray(a / np.maximum(norms, 1e-12), dtype=np.float32)


def topk_indices(scores: npt.NDArray[np.floating], k: int) -> npt.NDArray[np.int64]:
    """Per row, the column indices of the ``k`` highest scores, best first.

    Ties are broken by the lower column index, so results are deterministic.
    """
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.asarray(order[:, :k], dtype=np.int64)


def recall_at_k(
    scores: npt.NDArray[np.floating], relevant: Sequence[Sequence[int]], ks: Sequence[int]
) -> dict[int, float]:
    """Share of queries with at least one relevant item among their top ``k``.

    Args:
        scores: ``[queries, items]`` similarities.
        relevant: per query, the indices of its relevant items (may be several).
        ks: the cut-offs, e.g. (1, 5, 10).
    """
    if scores.shape[0] != len(relevant):
        raise ValueError(f"{scores.shape[0]} score rows but {len(relevant)} relevance lists")
    top = topk_indices(scores, max(ks))
    out: dict[int, float] = {}
    for k in ks:
        hits = [bool(set(top[q, :k].tolist()) & set(rel)) for q, rel in enumerate(relevant)]
        out[k] = float(np.mean(hits)) if hits else 0.0
    return out


def retrieval_metrics(
    text_embeddings: FloatArray,
    image_embeddings: FloatArray,
    text_to_images: Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Text-to-image and image-to-text recall@k (in percent) and their mean.

    ``text_to_images[t]`` lists the images relevant to text ``t``; image-to-text
    uses the inverted relation (an image's texts are those that list it), as
    the official Chinese-CLIP evaluation does.
    """
    sims = np.asarray(text_embeddings, dtype=np.float32) @ np.asarray(image_embeddings).T
    image_to_texts: list[list[int]] = [[] for _ in range(sims.shape[1])]
    for t, images in enumerate(text_to_images):
        for i in images:
            image_to_texts[i].append(t)
    t2i = recall_at_k(sims, text_to_images, ks)
    keep = [i for i, texts in enumerate(image_to_texts) if texts]
    i2t = recall_at_k(sims.T[keep], [image_to_texts[i] for i in keep], ks)
    metrics = {f"t2i_r{k}": 100 * t2i[k] for k in ks}
    metrics.update({f"i2t_r{k}": 100 * i2t[k] for k in ks})
    metrics["mean_recall"] = float(np.mean(list(metrics.values())))
    return metrics


def class_embeddings(template_embeddings: FloatArray) -> FloatArray:
    """Prompt ensembling: ``[classes, templates, d]`` -> ``[classes, d]``.

    Each template embedding is normalized, the templates of a class averaged,
    and the mean normalized again (Radford et al. 2021).
    """
    return normalize(normalize(template_embeddings).mean(axis=1))


def classification_metrics(
    logits: npt.NDArray[np.floating], labels: npt.NDArray[np.integer], num_classes: int
) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean per-class recall, in percent."""
    labels = np.asarray(labels)
    top = topk_indices(np.asarray(logits), 5)
    top1 = top[:, 0] == labels
    top5 = (top == labels[:, None]).any(axis=1)
    per_class = [float(top1[labels == c].mean()) for c in range(num_classes) if (labels == c).any()]
    return {
        "top1": 100 * float(top1.mean()),
        "top5": 100 * float(top5.mean()),
        "mean_per_class": 100 * float(np.mean(per_class)),
    }
