"""Ranking, recall and confusion counts, computed as the official Chinese-CLIP scripts do.

Retrieval (``cn_clip/eval/evaluation.py`` and ``evaluation_tr.py``): every query of the
annotation counts; a query's hit at k is true when any of its relevant ids is among its
top k predictions; recall@k is hits / queries; mean recall is the mean of R@1, R@5 and
R@10. Rankings put higher scores first and, among equal scores, the candidate that comes
first in the candidate list (Python's stable ``sorted(..., reverse=True)``, as the
official prediction scripts use).

Classification: the confusion matrix and the pairs of classes confused most often
(accuracy and mean per-class recall are :func:`runtime.retrieval.classification_metrics`,
shared with the trainer's validation).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from runtime.errors import DataError
from runtime.retrieval import topk_indices

KS: tuple[int, ...] = (1, 5, 10)
#: Query rows scored against all candidates at once; bounds memory to chunk x candidates.
CHUNK = 1024

Q = TypeVar("Q", bound=Hashable)  # a query's id
V = TypeVar("V", bound=Hashable)  # a candidate's id
FloatArray = npt.NDArray[np.float32]


def top_k(
    queries: npt.ArrayLike, candidates: npt.ArrayLike, k: int, chunk: int = CHUNK
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Indices and scores of each query's ``k`` best candidates by inner product.

    Best first; ties go to the lower candidate index. Queries are scored ``chunk`` rows
    at a time, so memory stays at ``chunk x len(candidates)`` floats.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    c = np.ascontiguousarray(candidates, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise DataError(f"cannot score queries {list(q.shape)} against candidates {list(c.shape)}")
    k = min(k, len(c))
    rows = np.zeros((len(q), k), dtype=np.int64)
    scores = np.zeros((len(q), k), dtype=np.float32)
    if k == 0:
        return rows, scores
    for start in range(0, len(q), chunk):
        sims = q[start : start + chunk] @ c.T
        order = topk_indices(sims, k)  # stable: equal scores stay in candidate order
        rows[start : start + chunk] = order
        scores[start : start + chunk] = np.take_along_axis(sims, order, axis=1)
    return rows, scores


def recall_at_k(
    reference: Mapping[Q, Sequence[V]],
    predictions: Mapping[Q, Sequence[V]],
    ks: Sequence[int] = KS,
) -> dict[str, float]:
    """R@k (in percent) of ``predictions`` against ``reference``, and their mean.

    ``reference[q]`` lists the ids relevant to query ``q``; ``predictions[q]`` its ranked
    predicted ids, best first. A query of the reference without predictions, or with no
    relevant id at all, is a miss at every k (the official script refuses a file with
    missing queries instead). Returns ``{"r1", "r5", "r10", "mean_recall"}`` for the
    default ``ks``; an empty reference gives zeros.
    """
    if not ks or any(k < 1 for k in ks):
        raise DataError(f"cut-offs must be positive integers, not {list(ks)}")
    hits = dict.fromkeys(ks, 0)
    for query, relevant in reference.items():
        ranked = list(predictions.get(query, ()))
        wanted = set(relevant)
        # The rank of the first relevant prediction decides every cut-off at once.
        first = next((rank for rank, pid in enumerate(ranked) if pid in wanted), None)
        if first is None:
            continue
        for k in ks:
            if first < k:
                hits[k] += 1
    total = len(reference)
    out = {f"r{k}": 100.0 * hits[k] / total if total else 0.0 for k in ks}
    out["mean_recall"] = float(np.mean([out[f"r{k}"] for k in ks]))
    return out


def invert(reference: Mapping[Q, Sequence[V]]) -> dict[V, list[Q]]:
    """Text-to-image annotation -> image-to-text annotation (the official
    ``transform_ir_annotation_to_tr.py``): each image's texts, in text order; images in
    order of first mention."""
    out: dict[V, list[Q]] = {}
    for text, images in reference.items():
        for image in images:
            texts = out.setdefault(image, [])
            if text not in texts:
                texts.append(text)
    return out


# ---------------------------------------------------------------- classification


@dataclass(frozen=True)
class ConfusedPair:
    """``count`` images of class ``true`` were predicted as ``predicted``;
    ``share`` is their percentage of class ``true``."""

    true: int
    predicted: int
    count: int
    share: float


def confusion_matrix(
    labels: npt.ArrayLike, predicted: npt.ArrayLike, num_classes: int
) -> npt.NDArray[np.int64]:
    """``m[t, p]``: how many images of true class ``t`` were predicted as ``p``."""
    t = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predicted, dtype=np.int64)
    if t.shape != p.shape:
        raise DataError(f"{t.size} labels but {p.size} predictions")
    for name, values in (("label", t), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise DataError(f"a {name} is outside the {num_classes} classes")
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


def most_confused(matrix: npt.NDArray[np.integer], limit: int = 10) -> list[ConfusedPair]:
    """Off-diagonal cells by count (ties: lower true class, then lower predicted class)."""
    m = np.asarray(matrix)
    totals = m.sum(axis=1)
    cells = [
        (int(m[t, p]), t, p)
        for t in range(m.shape[0])
        for p in range(m.shape[1])
        if t != p and m[t, p] > 0
    ]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [
        ConfusedPair(t, p, count, 100.0 * count / int(totals[t])) for count, t, p in cells[:limit]
    ]
