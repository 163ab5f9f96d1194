"""The metric code against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import confusion_matrix, invert, most_confused, recall_at_k, top_k
from runtime.errors import DataError


def test_top_k_orders_by_score_and_breaks_ties_by_candidate_order() -> None:
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # Candidates 0 and 2 tie for query 0 (score 1), 1 and 3 tie for query 1 (score 0.5).
    candidates = np.array([[1, 0], [0, 0.5], [1, 0], [0, 0.5], [0.2, 0.1]], dtype=np.float32)
    rows, scores = top_k(queries, candidates, 3)
    assert rows.tolist() == [[0, 2, 4], [1, 3, 4]]
    np.testing.assert_allclose(scores, [[1, 1, 0.2], [0.5, 0.5, 0.1]], rtol=1e-6)


def test_top_k_is_the_same_in_chunks_and_caps_k() -> None:
    rng = np.random.default_rng(0)
    q, c = rng.standard_normal((50, 8)), rng.standard_normal((7, 8))
    whole, _ = top_k(q, c, 10)
    chunked, _ = top_k(q, c, 10, chunk=3)
    assert whole.shape == (50, 7)  # k capped at the candidate count
    assert (whole == chunked).all()
    with pytest.raises(DataError):
        top_k(q, rng.standard_normal((7, 9)), 5)


def test_recall_counts_a_hit_when_any_relevant_id_is_in_the_top_k() -> None:
    reference = {
        "a": [10],  # relevant at rank 1
        "b": [20, 21],  # several relevant: 21 at rank 3, 20 at rank 7
        "c": [30],  # rank 6
        "d": [40],  # not in the top 10
    }
    predictions = {
        "a": [10, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "b": [1, 2, 21, 3, 4, 5, 20, 6, 7, 8],
        "c": [1, 2, 3, 4, 5, 30, 6, 7, 8, 9],
        "d": [1, 2, 3, 4, 5, 6, 7, 8, 9, 11],
    }
    got = recall_at_k(reference, predictions)
    assert got["r1"] == pytest.approx(25.0)  # a
    assert got["r5"] == pytest.approx(50.0)  # a, b
    assert got["r10"] == pytest.approx(75.0)  # a, b, c
    assert got["mean_recall"] == pytest.approx(50.0)


def test_missing_predictions_and_texts_without_images_are_misses() -> None:
    reference = {1: [5], 2: [6], 3: []}  # text 2 has no prediction, text 3 no relevant image
    predictions = {1: [5, 6], 3: [5, 6]}
    got = recall_at_k(reference, predictions, ks=(1, 2))
    assert got == {
        "r1": pytest.approx(100 / 3),
        "r2": pytest.approx(100 / 3),
        "mean_recall": pytest.approx(100 / 3),
    }
    # Predictions for queries outside the reference do not count at all.
    assert recall_at_k({1: [5]}, {1: [5], 9: [1]})["r1"] == 100.0
    assert recall_at_k({}, {})["r10"] == 0.0
    with pytest.raises(DataError):
        recall_at_k(reference, predictions, ks=(0,))


def test_a_duplicate_relevant_id_counts_once() -> None:
    got = recall_at_k({"t": [7, 7]}, {"t": [1, 7]}, ks=(1, 2))
    assert (got["r1"], got["r2"]) == (0.0, 100.0)


def test_invert_gives_each_image_its_texts_in_text_order() -> None:
    reference = {"t1": [1, 2], "t2": [2], "t3": [3, 1], "t4": []}
    assert invert(reference) == {1: ["t1", "t3"], 2: ["t1", "t2"], 3: ["t3"]}


def test_confusion_matrix_and_most_confused_pairs() -> None:
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    predicted = [0, 1, 1, 2, 1, 0, 2, 1, 0]
    m = confusion_matrix(labels, predicted, 3)
    assert m.tolist() == [[1, 2, 1], [1, 1, 0], [1, 1, 1]]
    pairs = most_confused(m, limit=3)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [(0, 1, 2), (0, 2, 1), (1, 0, 1)]
    assert pairs[0].share == pytest.approx(50.0)
    assert pairs[2].share == pytest.approx(50.0)
    with pytest.raises(DataError):
        confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(DataError):
        confusion_matrix([0], [0, 1], 3)
