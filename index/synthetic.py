"""Synthetic vectors drawn like real CLIP embeddings, for index tests and benchmarks.

Isotropic Gaussian clusters flatter some indexes and wrong others: real CLIP
embeddings are not spread evenly over the sphere. Three properties matter for
FAISS indexes, and the generator reproduces each:

1. **A power-law spectrum.** The variance along the i-th principal direction
   falls as ``i ** -ALPHA`` (``ALPHA = 1``), in a random orthonormal basis, so a
   few directions carry most of the variance (PQ and OPQ see that structure) and
   the effective dimension is a few dozen, not ``dim``.
2. **A common offset.** All vectors share one mean direction (CLIP's "cone"), so
   two unrelated vectors have a cosine of about 0.45 rather than 0: inner
   products are compressed into a narrow band, which is what makes quantization
   error matter.
3. **Topics of uneven size.** Each vector belongs to one of ``topics`` clusters
   (``sqrt(n)`` by default) whose shares are log-normal (sigma 1: the largest
   topic is 15-27 times the median one from 20k to 1M vectors, the smallest a
   tenth of it) and whose spreads vary (log-normal, sigma 0.2), as product
   categories do in a catalog.

A vector is ``normalize(offset + center[t] + spread[t] * noise)`` where, in the
eigenbasis, ``center[t]`` and ``noise`` are Gaussian with variances
``TOPIC_SHARE * lambda_i`` and ``NOISE_SHARE * lambda_i`` (``lambda`` the power
law, summing to 1) and ``|offset| ** 2 = OFFSET_SHARE``. Topic centers and noise
share the spectrum, so the covariance of the whole set is the power law.

Calibration (``describe``: 2,000 random pairs, 2,000 held-out queries, dim 512,
seed 0; the shares below were tuned to these figures):

=========  ==================  =======================  ================
base       random-pair cosine  median NN cosine (p10)   generation
=========  ==================  =======================  ================
20,000     0.449               0.860 (0.787)            0.4 s
100,000    0.462               0.873 (0.810)            2 s
1,000,000  0.456               0.875 (0.814)            19 s, 2.2 GB peak
=========  ==================  =======================  ================

The nearest neighbour gets closer as the base grows (more vectors per topic), as
it does in real catalogs; at 512 dimensions it stays in the 0.85-0.9 of real
CLIP image catalogs from 20k vectors on. At 64 dimensions (tests) the effective
dimension is lower and neighbours are closer (0.91 at 20k).

Vectors are generated in chunks of ``CHUNK`` rows, each from its own random
stream (seed, chunk number), so memory stays at the output plus one chunk and a
seed always gives the same vectors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]

ALPHA = 1.0  # variance of principal direction i is proportional to i ** -ALPHA
OFFSET_SHARE = 0.45  # |offset|^2: the mean cosine of two unrelated vectors
TOPIC_SHARE = 0.32  # variance of the topic centers
NOISE_SHARE = 0.23  # variance within a topic
TOPIC_SIZE_SIGMA = 1.0  # log-normal sigma of topic shares
TOPIC_SPREAD_SIGMA = 0.2  # log-normal sigma of the within-topic spreads
CHUNK = 16_384


class _Model:
    """The fixed part of the distribution: basis, spectrum, offset and topics."""

    def __init__(self, dim: int, topics: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        gauss = rng.standard_normal((dim, dim))
        q, r = np.linalg.qr(gauss)
        q *= np.sign(np.diag(r))  # a uniformly random orthonormal basis
        spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -ALPHA
        spectrum /= spectrum.sum()
        # Rows of ``mix`` map eigen-coordinates to the embedding space.
        self.mix: Matrix = (np.sqrt(spectrum)[:, None] * q.T).astype(np.float32)
        offset = rng.standard_normal(dim)
        self.offset: Matrix = (offset * math.sqrt(OFFSET_SHARE) / np.linalg.norm(offset)).astype(
            np.float32
        )
        sizes = np.random.default_rng([seed, 3])  # independent of dim: see topic_labels
        shares = sizes.lognormal(0.0, TOPIC_SIZE_SIGMA, topics)
        self.weights = shares / shares.sum()
        spreads = sizes.lognormal(0.0, TOPIC_SPREAD_SIGMA, topics)
        self.spreads: Matrix = (spreads / np.sqrt(np.mean(spreads**2))).astype(np.float32)
        centers = rng.standard_normal((topics, dim)).astype(np.float32) @ self.mix
        self.centers: Matrix = (centers * math.sqrt(TOPIC_SHARE) + self.offset).astype(np.float32)

    def labels(self, n: int, seed: int) -> npt.NDArray[np.int64]:
        rng = np.random.default_rng([seed, 1])
        return rng.choice(len(self.weights), size=n, p=self.weights).astype(np.int64)

    def chunk(self, labels: npt.NDArray[np.int64], seed: int, number: int) -> Matrix:
        rng = np.random.default_rng([seed, 2, number])
        noise = rng.standard_normal((len(labels), self.mix.shape[0]), dtype=np.float32)
        out = noise @ self.mix
        out *= (self.spreads[labels] * np.float32(math.sqrt(NOISE_SHARE)))[:, None]
        out += self.centers[labels]
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def default_topics(n: int) -> int:
    """The number of topics for ``n`` vectors: sqrt(n), at least 1."""
    return max(1, round(math.sqrt(n)))


def _generate(
    outputs: list[Matrix], dim: int, seed: int, topics: int | None
) -> npt.NDArray[np.int64]:
    """Fill ``outputs`` (consecutive row ranges of one draw); returns the topic labels."""
    n = sum(len(out) for out in outputs)
    model = _Model(dim, topics or default_topics(n), seed)
    labels = model.labels(n, seed)
    bounds = np.cumsum([0] + [len(out) for out in outputs])
    for number, start in enumerate(range(0, n, CHUNK)):
        stop = min(n, start + CHUNK)
        rows = model.chunk(labels[start:stop], seed, number)
        for out, lo, hi in zip(outputs, bounds[:-1], bounds[1:], strict=True):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                out[a - lo : b - lo] = rows[a - start : b - start]
    return labels


def _check(n: int, dim: int) -> None:
    if n < 0 or dim < 1:
        raise ValueError(f"need n >= 0 and dim >= 1, got n={n}, dim={dim}")


def clip_like(n: int, dim: int = 512, *, seed: int = 0, topics: int | None = None) -> Matrix:
    """``n`` unit vectors of ``dim`` float32 drawn like CLIP embeddings (module docstring)."""
    _check(n, dim)
    out = np.empty((n, dim), dtype=np.float32)
    _generate([out], dim, seed, topics)
    return out


def clip_like_split(
    n_base: int, n_queries: int, dim: int = 512, seed: int = 0
) -> tuple[Matrix, Matrix]:
    """A base and queries from one draw of ``n_base + n_queries`` vectors.

    Rows are exchangeable (topics are drawn independently per row), so the last
    ``n_queries`` rows are a random sample of the distribution that is not in the
    base.
    """
    _check(n_base + n_queries, dim)
    base = np.empty((n_base, dim), dtype=np.float32)
    queries = np.empty((n_queries, dim), dtype=np.float32)
    _generate([base, queries], dim, seed, None)
    return base, queries


def topic_labels(n: int, *, seed: int = 0, topics: int | None = None) -> npt.NDArray[np.int64]:
    """The topic of each row of ``clip_like(n, seed=seed, topics=topics)`` (any ``dim``)."""
    _check(n, 1)
    model = _Model(1, topics or default_topics(n), seed)
    return model.labels(n, seed)


def describe(vectors: Matrix, queries: Matrix | None = None, sample: int = 2000) -> dict[str, Any]:
    """Measured properties: random-pair cosine and nearest-neighbour cosine.

    ``random_pair_cosine`` is the mean cosine of ``sample`` random pairs of distinct
    rows; ``nn_cosine_*`` are quantiles of each query's exact top-1 inner product
    against ``vectors`` (up to ``sample`` queries; without queries, ``sample``
    rows against the other rows); ``spectrum_slope`` is the log-log slope of the
    top-64 eigenvalues of the sample covariance (about ``-ALPHA``).
    """
    from index.evaluate import exact_search

    n, dim = vectors.shape
    rng = np.random.default_rng(0)
    i = rng.integers(0, n, sample)
    j = rng.integers(0, n, sample)
    keep = i != j
    pair = np.einsum("ij,ij->i", vectors[i[keep]], vectors[j[keep]])
    if queries is not None:
        scores, _ = exact_search(vectors, queries[:sample], 1)
        nn = scores[:, 0]
    else:
        rows = rng.choice(n, size=min(sample, n), replace=False)
        scores, _ = exact_search(vectors, vectors[rows], 2)
        nn = scores[:, 1]
    rows = rng.choice(n, size=min(max(sample, 4 * 64), n), replace=False)
    sampled = vectors[rows].astype(np.float64)
    eig = np.linalg.eigvalsh(np.cov(sampled, rowvar=False))[::-1]
    top = min(64, dim, len(rows) - 1)
    slope = float(np.polyfit(np.log(np.arange(2, top + 1)), np.log(eig[1:top]), 1)[0])
    return {
        "n": int(n),
        "dim": int(dim),
        "random_pair_cosine": float(pair.mean()),
        "random_pair_cosine_std": float(pair.std()),
        "nn_cosine_median": float(np.median(nn)),
        "nn_cosine_p10": float(np.quantile(nn, 0.1)),
        "nn_cosine_p90": float(np.quantile(nn, 0.9)),
        "nn_queries": len(nn),
        "spectrum_slope": slope,
    }
