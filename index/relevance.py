"""Calibrated relevance: a map from a query's cosine with an item to the probability that
the item is relevant, fitted per index version from the catalog itself.

The question every CLIP user asks ("相似度 0.3 算不算相关?") has no answer in cosines:
their scale depends on the model, the catalog and the query. A version answers it for its
own model and catalog at build:

- **positives**: an item's own title against its own picture (the title embedded by the
  bundle's text tower with its model codes taken out, which no picture shows and the
  lexical side matches; the picture's vector from the index);
- **negatives**: the same title against the picture of an item whose title differs (a
  catalog often repeats a title, and an item with the same title is no negative), drawn
  at random and, as many, among the pictures nearest to the title: the items a search
  meets first, whose cosines decide where relevance falls off;
- **Platt scaling** (a logistic curve in the cosine, fitted by Newton's method with a
  small ridge) on a balanced sample, so that ``relevance = 0.5`` is where a relevant and
  an irrelevant item are equally likely. Why Platt and not isotonic regression: a CLIP
  cosine enters the model's own softmax through one scale and one offset, so a logistic
  in the cosine is the right shape; two parameters need a few hundred pairs where
  isotonic regression needs thousands, and its steps would make a relevance that jumps
  between two neighbouring cosines;
- the **expected calibration error** (10 equal-width bins) measured on held-out items by
  5-fold cross-validation (each item's pairs predicted by a fit that never saw them),
  recorded with the fit (on every sampled item) in the version's manifest.

A catalog without titles has no positives: its versions get a **null** calibration, the
distribution of cosines between random pairs of its pictures, and ``relevance`` is then
the share of random pairs that score lower (named ``"null"``: a rank against noise, not a
probability).

Lexical hits are put on the same [0, 1] scale by their **coverage** (:func:`coverage`):
the IDF-weighted share of the query's words that the title holds (1.0: every word, 0.0:
none), with a word the catalog has never seen weighing as much as the rarest one. It is
not fitted: relevance by words is defined by the words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from runtime.errors import DataError

__all__ = [
    "Calibration",
    "expected_calibration_error",
    "fit_null",
    "fit_platt",
    "fit_titles",
]

BINS: Final = 10
FOLDS: Final = 5
NEGATIVES_PER_ITEM: Final = 4  # at random, and as many among the nearest
HARD_NEAREST: Final = 10
HARD_POOL: Final = 4_000  # pictures searched for each title's nearest negatives
MAX_ITEMS: Final = 5_000  # items sampled for the fit: plenty for two parameters
NULL_PAIRS: Final = 20_000
NULL_QUANTILES: Final = 101
RIDGE: Final = 1e-3


@dataclass(frozen=True)
class Calibration:
    """How a version turns cosines into relevance, and how well (``ece`` on held-out
    items). ``method``: ``platt`` (``params`` a, b: relevance = 1 / (1 + exp(-(a s + b))))
    or ``null`` (``params`` quantiles: the null distribution's, relevance = its CDF)."""

    method: str
    params: Mapping[str, Any]
    ece: float | None = None
    pairs: int = 0
    held_out_pairs: int = 0
    source: str = ""
    notes: Sequence[str] = field(default_factory=tuple)

    def relevance(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The relevance in [0, 1] of each cosine (NaN stays NaN)."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            z = float(self.params["a"]) * s + float(self.params["b"])
            return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
        if self.method == "null":
            quantiles = np.asarray(self.params["quantiles"], dtype=np.float64)
            levels = np.linspace(0.0, 1.0, len(quantiles))
            out = np.interp(s, quantiles, levels, left=0.0, right=1.0)
            return np.where(np.isnan(s), np.nan, out)
        raise DataError(f"unknown calibration method {self.method!r}; upgrade cnclip")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": dict(self.params),
            "ece": self.ece,
            "pairs": self.pairs,
            "held_out_pairs": self.held_out_pairs,
            "source": self.source,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Calibration | None:
        if not data:
            return None
        try:
            return cls(
                method=str(data["method"]),
                params=dict(data["params"]),
                ece=None if data.get("ece") is None else float(data["ece"]),
                pairs=int(data.get("pairs", 0)),
                held_out_pairs=int(data.get("held_out_pairs", 0)),
                source=str(data.get("source", "")),
                notes=tuple(str(n) for n in data.get("notes") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"a malformed relevance calibration ({exc}); rebuild the index"
            ) from exc


def fit_platt(
    scores: npt.ArrayLike, labels: npt.ArrayLike, *, ridge: float = RIDGE
) -> tuple[float, float]:
    """``(a, b)`` of the logistic ``1 / (1 + exp(-(a s + b)))`` that best predicts the 0/1
    ``labels`` from ``scores`` (maximum likelihood with a small ridge on ``a``, by Newton's
    method; the ridge keeps ``a`` finite when the classes separate)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.shape != y.shape or s.ndim != 1 or len(s) < 2:
        raise DataError("calibration needs matching 1-d scores and labels")
    if y.min() == y.max():
        raise DataError("calibration needs positive and negative pairs")
    # Scores centred and scaled, so that Newton starts well whatever the cosine range.
    mean, std = float(s.mean()), float(s.std()) or 1.0
    x = (s - mean) / std
    a, b = 0.0, math.log(y.mean() / (1.0 - y.mean()))
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * x + b, -60.0, 60.0)))
        w = p * (1.0 - p)
        grad = np.array([np.dot(p - y, x) + ridge * a, np.sum(p - y)])
        hess = np.array(
            [[np.dot(w, x * x) + ridge, np.dot(w, x)], [np.dot(w, x), np.sum(w) + 1e-12]]
        )
        step = np.linalg.solve(hess, grad)
        a, b = a - float(step[0]), b - float(step[1])
        if float(np.abs(step).max()) < 1e-10:
            break
    return a / std, b - a * mean / std


def expected_calibration_error(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = BINS
) -> float:
    """The mean gap between predicted and observed rates over ``bins`` equal-width bins
    of the prediction, weighted by how many pairs fall in each."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        raise DataError("no pairs to measure the calibration error on")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += float(inside.sum()) * abs(float(p[inside].mean()) - float(y[inside].mean()))
    return total / len(p)


def _pairs(
    images: npt.NDArray[np.float32],
    texts: npt.NDArray[np.float32],
    title_ids: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    pool: npt.NDArray[np.int64],
    near_pool: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Cosines and labels: each item's title with its picture; with the pictures of
    ``NEGATIVES_PER_ITEM`` titled items (``pool``) of other titles drawn at random; and
    with ``NEGATIVES_PER_ITEM`` drawn among the ``HARD_NEAREST`` of them nearest to the
    title in ``near_pool`` (a sample of the pool): the items a search meets first."""
    scores: list[float] = []
    labels: list[float] = []
    sims = texts[items] @ images[near_pool].T  # [items, near pool]
    for row, i in enumerate(items):
        scores.append(float(images[i] @ texts[i]))
        labels.append(1.0)
        drawn = rng.choice(pool, size=min(len(pool), NEGATIVES_PER_ITEM * 3))
        others = [int(j) for j in drawn if title_ids[j] != title_ids[i]][:NEGATIVES_PER_ITEM]
        order = np.argsort(-sims[row], kind="stable")
        nearest = [int(near_pool[n]) for n in order if title_ids[near_pool[n]] != title_ids[i]]
        nearest = nearest[:HARD_NEAREST]
        if nearest:
            picks = rng.choice(len(nearest), size=min(NEGATIVES_PER_ITEM, len(nearest)))
            others += [nearest[int(n)] for n in picks]
        for j in others:
            scores.append(float(images[j] @ texts[i]))
            labels.append(0.0)
    return np.asarray(scores), np.asarray(labels)


def _balanced(
    scores: npt.NDArray[np.float64], labels: npt.NDArray[np.float64], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """As many negatives as positives (drawn at random), so that the fitted curve's
    prior is one half."""
    pos, neg = np.flatnonzero(labels == 1.0), np.flatnonzero(labels == 0.0)
    n = min(len(pos), len(neg))
    keep = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    return scores[keep], labels[keep]


def fit_titles(
    images: npt.ArrayLike,
    titles: npt.ArrayLike,
    title_text: Sequence[str | None],
    *,
    seed: int = 0,
) -> Calibration:
    """The Platt calibration of a catalog (module documentation): ``images[i]`` and
    ``titles[i]`` are item i's picture and title embeddings (unit rows; a zero row: not
    embedded, the item is no positive but its picture may be a negative),
    ``title_text[i]`` its title (None: the item takes no part).

    Raises:
        DataError: fewer than 20 titled items, or titles that are all the same.
    """
    img = np.ascontiguousarray(images, dtype=np.float32)
    txt = np.ascontiguousarray(titles, dtype=np.float32)
    if img.shape != txt.shape or len(title_text) != len(img):
        raise DataError("calibration needs one title embedding per item")
    titled = np.asarray([i for i, t in enumerate(title_text) if t], dtype=np.int64)
    encoded = titled[np.any(txt[titled] != 0.0, axis=1)] if len(titled) else titled
    if len(titled) < 20:
        raise DataError(f"{len(titled)} items have titles; calibration needs at least 20")
    names: dict[str, int] = {}
    title_ids = np.asarray([names.setdefault(t or "", len(names)) for t in title_text])
    if len({int(title_ids[i]) for i in titled}) < 2:
        raise DataError("every item has the same title: nothing to tell relevant items apart")
    if len(encoded) < 20:
        raise DataError(f"{len(encoded)} items have embedded titles; calibration needs 20")
    rng = np.random.default_rng(seed)
    sample = rng.permutation(encoded)[:MAX_ITEMS]
    near_pool = rng.choice(titled, size=min(len(titled), HARD_POOL), replace=False)
    # Each item's pairs are drawn once; the folds split the items, not the pairs.
    pairs = [
        _pairs(img, txt, title_ids, sample[n : n + 1], titled, near_pool, rng)
        for n in range(len(sample))
    ]
    folds = np.arange(len(sample)) % FOLDS
    held_scores: list[npt.NDArray[np.float64]] = []
    held_labels: list[npt.NDArray[np.float64]] = []
    held_predicted: list[npt.NDArray[np.float64]] = []
    for fold in range(FOLDS):
        inside = [p for p, f in zip(pairs, folds, strict=True) if f != fold]
        outside = [p for p, f in zip(pairs, folds, strict=True) if f == fold]
        if not outside:
            continue
        a, b = fit_platt(*_balanced(*_joined(inside), rng))
        scores, labels = _balanced(*_joined(outside), rng)
        held_predicted.append(Calibration("platt", {"a": a, "b": b}).relevance(scores))
        held_scores.append(scores)
        held_labels.append(labels)
    ece = expected_calibration_error(np.concatenate(held_predicted), np.concatenate(held_labels))
    fit_scores, fit_labels = _balanced(*_joined(pairs), rng)
    a, b = fit_platt(fit_scores, fit_labels)
    return Calibration(
        "platt",
        {"a": round(a, 6), "b": round(b, 6)},
        ece=round(ece, 4),
        pairs=len(fit_scores),
        held_out_pairs=sum(len(x) for x in held_scores),
        source="titles vs pictures",
        notes=(
            f"fitted on {len(sample)} items; the calibration error measured by {FOLDS}-fold "
            "cross-validation (each item's pairs held out of the fit that predicts them); "
            "balanced: relevance 0.5 is where a relevant and an irrelevant item are "
            "equally likely",
        ),
    )


def _joined(
    pairs: Sequence[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def fit_null(images: npt.ArrayLike, *, seed: int = 0) -> Calibration:
    """The null calibration of a catalog without titles: quantiles of the cosines between
    random pairs of its pictures.

    Raises:
        DataError: fewer than 2 items.
    """
    img = np.ascontiguousarray(images, dtype=np.float32)
    if len(img) < 2:
        raise DataError("calibration needs at least 2 items")
    rng = np.random.default_rng(seed)
    n = min(NULL_PAIRS, len(img) * (len(img) - 1))
    first = rng.integers(0, len(img), n)
    second = (first + rng.integers(1, len(img), n)) % len(img)
    cosines = np.einsum("ij,ij->i", img[first], img[second]).astype(np.float64)
    quantiles = np.quantile(cosines, np.linspace(0.0, 1.0, NULL_QUANTILES))
    return Calibration(
        "null",
        {"quantiles": [round(float(q), 6) for q in np.maximum.accumulate(quantiles)]},
        pairs=n,
        source="random pairs of pictures (no titles)",
        notes=("relevance is the share of random pairs scoring lower, not a probability",),
    )
