"""Synthetic CLIP-like vectors, exact search, recall, search parameters and tuning."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from index import evaluate
from index.evaluate import exact_search, recall_at, search_params, tune
from index.synthetic import CHUNK, clip_like, clip_like_split, describe, topic_labels
from runtime.errors import ConfigError

Matrix = npt.NDArray[np.float32]
DIM = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small trainings and searches run faster on one thread than on two busy cores."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


# ---------------------------------------------------------------- synthetic data


def test_pairs_neighbours_and_spectrum_look_like_clip() -> None:
    base, queries = clip_like_split(20_000, 1_000)  # 512 dimensions, as the calibration
    assert base.dtype == np.float32 and base.shape == (20_000, 512)
    assert np.allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    stats = describe(base, queries, sample=500)
    assert 0.40 <= stats["random_pair_cosine"] <= 0.50
    # 0.86 at 20k, 0.87 at 100k (see the module docstring of index.synthetic).
    assert 0.80 <= stats["nn_cosine_median"] <= 0.92
    assert -1.25 <= stats["spectrum_slope"] <= -0.75


def test_topics_are_uneven_and_tighter_than_random_pairs() -> None:
    n = 20_000
    vectors = clip_like(n, DIM, seed=3)
    labels = topic_labels(n, seed=3)
    sizes = np.bincount(labels)
    assert len(sizes) == round(np.sqrt(n))
    assert sizes.max() > 5 * np.median(sizes)
    big = np.flatnonzero(labels == np.argmax(sizes))[:200]
    within = vectors[big] @ vectors[big].T
    assert within[np.triu_indices(len(big), 1)].mean() > 0.6  # random pairs: 0.45


def test_generation_is_deterministic_and_chunked() -> None:
    n = CHUNK + 1_000  # two chunks
    first = clip_like(n, DIM, seed=7)
    assert np.array_equal(first, clip_like(n, DIM, seed=7))
    assert not np.allclose(first[:100], clip_like(n, DIM, seed=8)[:100])
    base, queries = clip_like_split(n - 500, 500, DIM, seed=7)
    assert np.array_equal(np.concatenate([base, queries]), first)


def test_queries_are_not_in_the_base() -> None:
    base, queries = clip_like_split(10_000, 500, DIM, seed=2)
    scores, _ = exact_search(base, queries, 1)
    assert scores.max() < 0.999
    assert np.median(scores) > 0.8  # but they have close neighbours there


# ---------------------------------------------------------------- recall and exact search


def test_recall_against_a_hand_counted_case() -> None:
    truth = np.array(
        [
            list(range(10)),
            list(range(10, 20)),
            [-1] * 10,  # no exact neighbour (everything filtered): left out
        ]
    )
    found = np.array(
        [
            [0, 1, 2, 3, 4, 50, 51, 52, 53, 54],  # nearest first, 5 of 10
            [-1, 99, 10, 11, -1, -1, -1, -1, -1, -1],  # nearest third, 2 of 10
            [5, 6, 7, 8, 9, 1, 2, 3, 4, 0],
        ]
    )
    assert recall_at(found, truth) == {"R@1": 0.5, "R@10": 1.0, "10-recall@10": 0.35}
    assert recall_at(found[:, :1], truth) == {"R@1": 0.5}


def test_exact_search_in_blocks_with_a_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1_000, 16)).astype(np.float32)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    scores, ids = exact_search(base, queries, 5)
    expected = np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :5]
    assert np.array_equal(ids, expected)
    monkeypatch.setattr(evaluate, "BLOCK_BYTES", 16 * 4 * 128)  # blocks of 128 rows
    assert np.array_equal(exact_search(base, queries, 5, batch=7)[1], expected)

    mask = np.zeros(1_000, dtype=bool)
    mask[::3] = True
    masked_scores, masked = exact_search(base, queries, 5, valid=mask)
    expected = np.flatnonzero(mask)[np.argsort(-(queries @ base[mask].T), axis=1)[:, :5]]
    assert np.array_equal(masked, expected)
    assert np.array_equal(exact_search(base, queries, 5, valid=np.flatnonzero(mask))[1], masked)
    assert (masked_scores <= scores[:, :1]).all()

    few_scores, few = exact_search(base, queries, 5, valid=np.array([4, 500]))
    assert set(few[:, :2].ravel()) == {4, 500}
    assert (few[:, 2:] == -1).all() and np.isneginf(few_scores[:, 2:]).all()


# ---------------------------------------------------------------- search parameters

TRAIN = 2_560  # 40 per list of IVF64; PQ k-means on fewer points (faiss warns): fast on 2 cores


def _quick(index: faiss.Index) -> None:
    """Cut training time: no polysemous training, 6 k-means iterations, a short OPQ."""
    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexPreTransform):
        chain: Any = node.chain  # a SWIG vector (faiss's stubs say list)
        for i in range(chain.size()):
            transform = faiss.downcast_VectorTransform(chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = 2
                transform.niter_pq = transform.niter_pq_0 = 4
        _quick(node.index)
    elif isinstance(node, faiss.IndexIDMap):
        _quick(node.index)
    elif isinstance(node, faiss.IndexRefine):
        _quick(node.base_index)
    elif isinstance(node, faiss.IndexIVFPQ):
        ivfpq: Any = node  # do_polysemous_training is missing from faiss's stubs
        ivfpq.do_polysemous_training = False  # faiss's factory trains it: slow, unused here
        node.pq.cp.niter = 6


def _build(factory: str, base: Matrix, ids: npt.NDArray[np.int64] | None = None) -> faiss.Index:
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    _quick(index)
    index.train(base[:TRAIN])
    if ids is None:
        index.add(base)
    else:
        index.add_with_ids(base, ids)
    return index


Small = tuple[Matrix, Matrix, npt.NDArray[np.int64], dict[str, faiss.Index]]


@pytest.fixture(scope="module")
def small() -> Small:
    base, queries = clip_like_split(8_000, 200, DIM, seed=5)
    _, truth = exact_search(base, queries, 100)
    return base, queries, truth, {}


def _external(factory: str, n: int) -> npt.NDArray[np.int64] | None:
    return np.arange(n, dtype=np.int64) * 3 + 7 if "IDMap" in factory else None


def _cached(small: Small, factory: str) -> faiss.Index:
    base, _, _, built = small
    if factory not in built:
        built[factory] = _build(factory, base, _external(factory, len(base)))
    return built[factory]


@pytest.mark.parametrize(
    ("factory", "knobs", "weak", "strong"),
    [
        ("IDMap2,Flat", {}, None, None),
        ("IVF64,PQ16x8,Refine(SQ8)", {"k_factor": 16}, {"nprobe": 1}, {"nprobe": 64}),
        ("IVF64,PQ16x8,Refine(SQ8)", {"nprobe": 64}, {"k_factor": 1}, {"k_factor": 16}),
        ("OPQ16,IVF64,PQ16", {}, {"nprobe": 1}, {"nprobe": 64}),
        ("HNSW32,SQ8", {}, {"ef_search": 16}, {"ef_search": 256}),
        ("IVF64_HNSW32,PQ16", {"ef_search": 128}, {"nprobe": 1}, {"nprobe": 64}),
    ],
)
def test_search_params_are_honoured(
    small: Small,
    factory: str,
    knobs: dict[str, Any],
    weak: dict[str, Any] | None,
    strong: dict[str, Any] | None,
) -> None:
    base, queries, truth, _ = small
    external = _external(factory, len(base))
    index = _cached(small, factory)
    ids = np.arange(len(base), dtype=np.int64) if external is None else external
    truth = ids[truth]

    allowed = np.sort(np.random.default_rng(1).choice(ids, size=len(ids) // 4, replace=False))
    mask = np.zeros(ids.max() + 1, dtype=bool)
    mask[allowed] = True
    best = {**knobs, **(strong or {})}
    _, free = index.search(queries, 10, params=search_params(index, **best))
    assert not np.isin(free, allowed).all()
    for selector in (allowed, mask):
        params = search_params(index, selector=selector, **best)
        _, got = index.search(queries, 10, params=params)
        assert (got >= 0).mean() > 0.9
        assert np.isin(got[got >= 0], allowed).all()

    if weak is not None and strong is not None:
        _, low = index.search(queries, 10, params=search_params(index, **knobs, **weak))
        _, high = index.search(queries, 10, params=search_params(index, **knobs, **strong))
        assert recall_at(low, truth)["10-recall@10"] < recall_at(high, truth)["10-recall@10"]
        if "nprobe" in weak:
            assert recall_at(low, truth)["R@10"] + 0.05 < recall_at(high, truth)["R@10"]


def test_params_outlive_their_parts(small: Small) -> None:
    base, queries, _, _ = small
    index = _cached(small, "IVF64,PQ16x8,Refine(SQ8)")
    allowed = np.arange(0, len(base), 5, dtype=np.int64)
    params = search_params(index, nprobe=8, k_factor=8, selector=allowed.copy())
    gc.collect()  # only ``params`` refers to the selector and the nested parameters now
    _, got = index.search(queries, 10, params=params)
    assert (got >= 0).all() and np.isin(got, allowed).all()
    assert faiss.extract_index_ivf(index).nprobe == 1  # knobs go per search, not on the index


# ---------------------------------------------------------------- tuning


def test_tune_reaches_the_target_on_a_refined_ivf_pq() -> None:
    base, queries = clip_like_split(20_000, 300, DIM, seed=11)
    _, truth = exact_search(base, queries, 100)
    index = _build("IVF128,PQ16x8,Refine(SQ8)", base)
    result = tune(index, queries, truth, k=10, target=0.95, threads=2)
    assert faiss.omp_get_max_threads() == 1 and result.threads == 2
    assert result.knob == "nprobe" and result.reached
    assert result.chosen["R@10"] >= 0.95 and result.chosen["reached"] is True
    sweep = [p for p in result.points if p["k_factor"] == 16]
    nprobes = [p["nprobe"] for p in sweep]
    assert nprobes == sorted(nprobes) and nprobes[0] == 1 and len(nprobes) < 8  # stopped early
    recalls = [p["R@10"] for p in sweep]
    assert all(b >= a - 0.02 for a, b in pairwise(recalls))
    assert recalls[-1] > recalls[0] + 0.1
    assert {p["k_factor"] for p in result.points} == {4.0, 8.0, 16.0, 32.0}
    assert all(p["R@100"] >= p["R@10"] >= p["R@1"] and p["qps"] > 0 for p in result.points)
    assert faiss.extract_index_ivf(index).nprobe == 1  # knobs go per search, not on the index
    assert json.loads(json.dumps(result.to_dict()))["chosen"] == result.chosen
    assert set(result.setting) == {"nprobe", "k_factor"}


def test_tune_flat_is_one_exact_point() -> None:
    base, queries = clip_like_split(5_000, 100, DIM, seed=4)
    _, truth = exact_search(base, queries, 100)
    index = faiss.IndexFlatIP(DIM)
    index.add(base)
    result = tune(index, queries, truth)
    assert result.knob is None and result.reached and len(result.points) == 1
    assert result.chosen["R@10"] == result.chosen["10-recall@10"] == 1.0
    assert result.setting == {}
    assert evaluate.exact_qps(base, queries, 10) > 0
    with pytest.raises(ConfigError, match="metric"):
        tune(index, queries, truth, metric="recall")
    with pytest.raises(ConfigError, match="10 results"):
        tune(index, queries, truth, k=5)


def test_tune_hnsw_sweeps_ef_search(small: Small) -> None:
    base, queries, truth, _ = small
    index = _build("HNSW16,SQ8", base)
    result = tune(index, queries, truth, target=0.9, metric="10-recall@10")
    efs = [p["ef_search"] for p in result.points]
    assert result.knob == "ef_search" and efs == [16, 32, 64, 128, 256, 512, 1024][: len(efs)]
    assert result.chosen["10-recall@10"] >= 0.9 or not result.reached
