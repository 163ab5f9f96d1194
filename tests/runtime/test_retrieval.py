"""Retrieval and zero-shot metrics against hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.retrieval import (
    class_embeddings,
    classification_metrics,
    recall_at_k,
    retrieval_metrics,
    topk_indices,
)


def test_ties_go_to_the_lower_index() -> None:
    scores = np.array([[0.5, 0.9, 0.9, 0.1]])
    assert topk_indices(scores, 3).tolist() == [[1, 2, 0]]


def test_recall_counts_a_query_once_when_any_relevant_item_is_in_the_top_k() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.0],  # relevant 1 is second
            [0.1, 0.2, 0.3, 0.4],  # relevant 0 is last
            [0.4, 0.3, 0.2, 0.1],  # relevant 0 and 2: 0 is first
        ]
    )
    got = recall_at_k(scores, [[1], [0], [2, 0]], ks=(1, 2, 4))
    assert got == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 4: 1.0}


def test_retrieval_metrics_both_directions() -> None:
    # Two texts, three images; text 0 is about images 0 and 1, text 1 about image 2.
    texts = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    images = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]], dtype=np.float32)
    m = retrieval_metrics(texts, images, [[0, 1], [2]], ks=(1, 2))
    # t2i: text 0 -> image 0 (hit at 1); text 1 -> images 2 then 1 (hit at 1)
    assert m["t2i_r1"] == 100.0 and m["t2i_r2"] == 100.0
    # i2t: image 0 -> text 0 (hit); image 1 -> text 1 first (miss at 1, hit at 2); image 2 -> text 1
    assert m["i2t_r1"] == pytest.approx(200 / 3) and m["i2t_r2"] == 100.0
    assert m["mean_recall"] == pytest.approx((100 + 100 + 200 / 3 + 100) / 4)


def test_images_without_texts_are_not_counted() -> None:
    texts = np.eye(2, dtype=np.float32)
    images = np.eye(2, dtype=np.float32)
    m = retrieval_metrics(texts[:1], images, [[0]], ks=(1,))
    assert m["i2t_r1"] == 100.0  # image 1 has no text and is left out


def test_prompt_ensembling_normalizes_twice() -> None:
    per_template = np.array([[[3.0, 0.0], [0.0, 1.0]]], dtype=np.float32)  # 1 class, 2 templates
    got = class_embeddings(per_template)
    np.testing.assert_allclose(got, [[2**-0.5, 2**-0.5]], rtol=1e-6)


def test_classification_metrics() -> None:
    logits = np.array([[3, 2, 1], [1, 3, 2], [3, 1, 2], [1, 2, 3]], dtype=np.float32)
    labels = np.array([0, 2, 1, 2])
    m = classification_metrics(logits, labels, 3)
    assert m["top1"] == 50.0 and m["top5"] == 100.0
    # per class: class 0 1/1, class 1 0/1, class 2 1/2
    assert m["mean_per_class"] == pytest.approx(100 * (1 + 0 + 0.5) / 3)
