"""Recall of an index against exact search, and the search setting that reaches a target.

- :func:`exact_search` is the ground truth: inner products over the whole base,
  in blocks of ``BLOCK_BYTES`` so a 1M x 512 base is never copied whole, with an
  optional mask of valid rows (deleted items) applied through an ``IDSelector``.
- :func:`recall_at` scores an answer in FAISS's benchmark sense: ``R@r`` is the
  share of queries whose exact nearest neighbour is among the first ``r``
  results; ``10-recall@10`` is the mean overlap of the two top-10 lists.
- :func:`search_params` turns knobs (nprobe, efSearch, k_factor, an id filter)
  into the ``faiss.SearchParameters`` tree that the index structure reads, so a
  search sets them per call without touching the (shared) index.
- :func:`tune` sweeps the knob of an index (nprobe for inverted files, efSearch
  for HNSW graphs, nothing for flat indexes), timing each point, and picks the
  smallest setting that reaches a recall target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import faiss
import numpy as np
import numpy.typing as npt

from runtime.errors import ConfigError, DataError

Matrix = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]
Allowed = faiss.IDSelector | npt.NDArray[Any]

BLOCK_BYTES = 256 << 20  # base rows searched at once by exact_search
RANKS = (1, 10, 100)
METRICS = ("R@1", "R@10", "R@100", "10-recall@10")
NPROBE_MAX = 2048  # faiss-gpu's limit, kept on the CPU so a tuned value works on both
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
K_FACTORS = (4, 8, 16, 32)
REFINE_K_FACTOR = 16  # k_factor of refine indexes while nprobe is swept
AFTER_TARGET = 2  # points measured past the first one reaching the target
PLATEAU = 2  # stop when this many points in a row add less than PLATEAU_GAIN
PLATEAU_GAIN = 0.002


# ---------------------------------------------------------------- exact search


def _keep(owner: object, *refs: object) -> None:
    """Keep Python references that a SWIG object points to alive as long as it is."""
    vars(owner).setdefault("_cnclip_refs", []).extend(refs)


def _float32(x: npt.ArrayLike, name: str) -> Matrix:
    array = np.ascontiguousarray(x, dtype=np.float32)
    if array.ndim != 2:
        raise DataError(f"{name} must be a 2-D array of vectors, got shape {array.shape}")
    return array


def valid_mask(valid: npt.ArrayLike, n: int) -> npt.NDArray[np.bool_]:
    """A boolean mask over ``n`` rows from a mask or from a subset of row ids."""
    array = np.asarray(valid)
    if array.dtype == np.bool_:
        if array.shape != (n,):
            raise DataError(f"a mask of valid rows needs shape ({n},), got {array.shape}")
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"valid rows must be a boolean mask or integer ids, got {array.dtype}")
    ids = array.astype(np.int64).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise DataError(f"valid row ids must lie in [0, {n}), got {ids.min()}..{ids.max()}")
    mask = np.zeros(n, dtype=bool)
    mask[ids] = True
    return mask


def bitmap_selector(mask: npt.NDArray[np.bool_]) -> faiss.IDSelector:
    """An ``IDSelectorBitmap`` admitting the ids ``i`` where ``mask[i]`` is true."""
    bits = np.packbits(mask, bitorder="little")  # faiss reads bit i & 7 of byte i >> 3
    selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
    _keep(selector, bits)
    return selector


def make_selector(allowed: Allowed) -> faiss.IDSelector:
    """A selector from a selector, a boolean mask over ids, or an array of allowed ids."""
    if isinstance(allowed, faiss.IDSelector):
        return allowed
    array = np.asarray(allowed)
    if array.dtype == np.bool_:
        return bitmap_selector(array.ravel())
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"allowed ids must be a boolean mask or integer ids, got {array.dtype}")
    ids = np.ascontiguousarray(array.ravel(), dtype=np.int64)
    return faiss.IDSelectorBatch(ids)


def _merge(scores: Matrix, ids: Ids, new_scores: Matrix, new_ids: Ids) -> None:
    """Keep in ``scores``/``ids`` (in place) the best of both lists, ties to the old ones."""
    k = scores.shape[1]
    both = np.concatenate([scores, new_scores], axis=1)
    order = np.argsort(-both, axis=1, kind="stable")[:, :k]
    scores[:] = np.take_along_axis(both, order, axis=1)
    ids[:] = np.take_along_axis(np.concatenate([ids, new_ids], axis=1), order, axis=1)


def exact_search(
    base: npt.ArrayLike,
    queries: npt.ArrayLike,
    k: int,
    *,
    batch: int = 4096,
    valid: npt.ArrayLike | None = None,
) -> tuple[Matrix, Ids]:
    """The exact top ``k`` rows of ``base`` by inner product for each query.

    ``valid`` (a boolean mask over the rows or an array of row ids) excludes the
    other rows. Missing results (fewer than ``k`` valid rows) have id -1 and score
    -inf. Ties go to the lower row.
    """
    base = _float32(base, "base")
    queries = _float32(queries, "queries")
    n, dim = base.shape
    if queries.shape[1] != dim:
        raise DataError(f"queries have {queries.shape[1]} dimensions, the base {dim}")
    if k < 1:
        raise DataError(f"k must be at least 1, got {k}")
    mask = None if valid is None else valid_mask(valid, n)
    nq = len(queries)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    block = max(1, BLOCK_BYTES // (4 * dim))
    for start in range(0, n, block):
        stop = min(n, start + block)
        params = None
        if mask is not None:
            local = mask[start:stop]
            if not local.any():
                continue
            if not local.all():
                params = faiss.SearchParameters()
                params.sel = bitmap_selector(local)
        flat = faiss.IndexFlatIP(dim)
        flat.add(base[start:stop])
        for q0 in range(0, nq, batch):
            q1 = min(nq, q0 + batch)
            got_scores, got_ids = flat.search(queries[q0:q1], k, params=params)
            found = got_ids >= 0
            got_ids = np.where(found, got_ids + start, -1)
            got_scores = np.where(found, got_scores, np.float32(-np.inf)).astype(np.float32)
            _merge(scores[q0:q1], ids[q0:q1], got_scores, got_ids)
    return scores, ids


def exact_qps(base: npt.ArrayLike, queries: npt.ArrayLike, k: int, *, repeats: int = 2) -> float:
    """Queries per second of :func:`exact_search` (best of ``repeats``), for speedups."""
    queries = _float32(queries, "queries")
    best = min(_timed(lambda: exact_search(base, queries, k)) for _ in range(max(1, repeats)))
    return len(queries) / best


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return max(time.perf_counter() - start, 1e-9)


# ---------------------------------------------------------------- recall


def recall_at(found: npt.ArrayLike, truth: npt.ArrayLike) -> dict[str, float]:
    """Recall of ``found`` [n, k'] against the exact ``truth`` [n, K] (FAISS's bench sense).

    ``R@r`` (for r in 1, 10, 100 up to k'): the share of queries whose exact
    nearest neighbour ``truth[:, 0]`` is among the first ``r`` found.
    ``10-recall@10`` (when k' and K are at least 10): the mean share of the exact
    top 10 that is in the found top 10. Entries of -1 never match; queries
    without any exact neighbour are left out.
    """
    got = np.asarray(found, dtype=np.int64)
    exact = np.asarray(truth, dtype=np.int64)
    if got.ndim != 2 or exact.ndim != 2 or len(got) != len(exact):
        raise DataError(f"found {got.shape} and truth {exact.shape} need the same rows")
    answered = exact[:, 0] >= 0
    got, exact = got[answered], exact[answered]
    result: dict[str, float] = {}
    if len(exact) == 0:
        return result
    nearest = exact[:, :1]
    for rank in RANKS:
        if rank <= got.shape[1]:
            hit = (got[:, :rank] == nearest).any(axis=1)
            result[f"R@{rank}"] = float(hit.mean())
    if got.shape[1] >= 10 and exact.shape[1] >= 10:
        top = exact[:, :10]
        mine = got[:, :10]
        overlap = ((mine[:, :, None] == top[:, None, :]) & (mine[:, :, None] >= 0)).any(axis=2)
        wanted = np.maximum((top >= 0).sum(axis=1), 1)
        result["10-recall@10"] = float((overlap.sum(axis=1) / wanted).mean())
    return result


# ---------------------------------------------------------------- search parameters


def _down(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index)


def search_params(
    index: faiss.Index,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    k_factor: float | None = None,
    selector: Allowed | None = None,
) -> faiss.SearchParameters:
    """The ``SearchParameters`` tree for ``index``'s structure, for ``index.search(params=)``.

    It walks ``IndexIDMap``/``IndexIDMap2`` (``selector`` filters the external
    ids), ``IndexPreTransform`` (OPQ), ``IndexRefine``/``IndexRefineFlat``
    (``k_factor``; the filter goes to the base index, which finds the
    candidates), inverted files (``nprobe``; ``ef_search`` goes to an HNSW coarse
    quantizer) and HNSW graphs (``ef_search``). A knob left as None keeps the
    index's own value; a knob the structure has no use for is ignored. The
    returned object keeps the selectors and nested parameters it points to alive.
    ``selector`` is a ``faiss.IDSelector``, a boolean mask over ids, or allowed ids.
    """
    sel = None if selector is None else make_selector(selector)
    params = _params(_down(index), nprobe, ef_search, k_factor, sel)
    _keep(params, index)  # a translated selector points into the index's id map
    return params


def _params(
    index: faiss.Index,
    nprobe: int | None,
    ef_search: int | None,
    k_factor: float | None,
    sel: faiss.IDSelector | None,
) -> faiss.SearchParameters:
    if isinstance(index, faiss.IndexIDMap):
        if sel is not None:
            # IndexIDMap only translates a selector set at the top of the tree.
            sel = faiss.IDSelectorTranslated(cast(Any, index.id_map), sel)
        return _params(_down(index.index), nprobe, ef_search, k_factor, sel)
    if isinstance(index, faiss.IndexPreTransform):
        inner = _params(_down(index.index), nprobe, ef_search, k_factor, sel)
        wrapper = faiss.SearchParametersPreTransform()
        wrapper.index_params = inner
        _keep(wrapper, inner)
        return wrapper
    if isinstance(index, faiss.IndexRefine):
        inner = _params(_down(index.base_index), nprobe, ef_search, None, sel)
        refine = faiss.IndexRefineSearchParameters()
        refine.k_factor = float(index.k_factor if k_factor is None else k_factor)
        refine.base_index_params = inner
        _keep(refine, inner)
        return refine
    params: faiss.SearchParameters
    if isinstance(index, faiss.IndexIVF):
        ivf = faiss.SearchParametersIVF()
        ivf.nprobe = int(index.nprobe if nprobe is None else nprobe)
        ivf.max_codes = index.max_codes
        quantizer = _down(index.quantizer)
        if ef_search is not None and not isinstance(quantizer, faiss.IndexFlat):
            coarse = _params(quantizer, None, ef_search, None, None)
            ivf.quantizer_params = coarse
            _keep(ivf, coarse)
        params = ivf
    elif isinstance(index, faiss.IndexHNSW):
        # Not in faiss's type stubs (1.15), present in the module.
        hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        hnsw.efSearch = int(index.hnsw.efSearch if ef_search is None else ef_search)
        params = cast(faiss.SearchParameters, hnsw)
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
        _keep(params, sel)
    return params


# ---------------------------------------------------------------- tuning


@dataclass
class TuneResult:
    """Every measured point of a sweep and the one chosen, for the index manifest."""

    knob: str | None  # "nprobe", "ef_search" or None (nothing to tune)
    metric: str
    target: float
    k: int
    queries: int
    threads: int
    points: list[dict[str, Any]]
    chosen: dict[str, Any]
    reached: bool

    @property
    def setting(self) -> dict[str, Any]:
        """The chosen knobs, as keyword arguments of :func:`search_params`."""
        return {
            key: self.chosen[key]
            for key in ("nprobe", "k_factor", "ef_search")
            if key in self.chosen
        }

    def to_dict(self) -> dict[str, Any]:
        return cast(dict[str, Any], _plain(asdict(self)))


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into JSON-serializable Python."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _structure(index: faiss.Index) -> tuple[faiss.Index, bool]:
    """The innermost index (past id maps, transforms and refinement), and whether it is refined."""
    refined = False
    while True:
        index = _down(index)
        if isinstance(index, faiss.IndexIDMap | faiss.IndexPreTransform):
            index = index.index
        elif isinstance(index, faiss.IndexRefine):
            refined = True
            index = index.base_index
        else:
            return index, refined


def _nprobes(nlist: int) -> list[int]:
    cap = max(1, min(nlist, NPROBE_MAX))
    values = [1 << i for i in range(cap.bit_length()) if 1 << i <= cap]
    if values[-1] != cap:
        values.append(cap)
    return values


def _stop(values: list[float], target: float) -> bool:
    """Whether a sweep can end after the recall values measured so far."""
    if values[-1] >= 1.0:
        return True
    reached = [i for i, value in enumerate(values) if value >= target]
    if reached and len(values) - 1 - reached[0] >= AFTER_TARGET:
        return True
    if len(values) > PLATEAU:
        before = max(values[:-PLATEAU])
        return max(values[-PLATEAU:]) < before + PLATEAU_GAIN
    return False


def _choose(
    points: list[dict[str, Any]], metric: str, target: float, knobs: tuple[str, ...]
) -> tuple[dict[str, Any], bool]:
    """The smallest setting reaching ``target``, else the best recall (then the fastest)."""
    hits = [p for p in points if p[metric] >= target]
    if hits:
        return min(hits, key=lambda p: tuple(p[key] for key in knobs)), True
    return max(points, key=lambda p: (p[metric], p["qps"])), False


def tune(
    index: faiss.Index,
    queries: npt.ArrayLike,
    truth: npt.ArrayLike,
    *,
    k: int = 10,
    target: float = 0.95,
    metric: str = "R@10",
    threads: int | None = None,
    exclude: npt.ArrayLike | None = None,
    selector: Any = None,
) -> TuneResult:
    """Sweep ``index``'s search knob and pick the smallest setting reaching ``target``.

    ``truth`` is the exact answer (:func:`exact_search`, at least 10 columns for
    ``10-recall@10``) in the index's id space. Inverted files sweep nprobe over
    powers of two up to nlist (at most ``NPROBE_MAX``); refined ones do so at
    k_factor 16, then sweep k_factor over ``K_FACTORS`` at the chosen nprobe. HNSW
    graphs sweep efSearch over ``EF_SEARCH``; other indexes give one point. A
    sweep ends at recall 1, ``AFTER_TARGET`` points past the target, or on a
    plateau. Each point times a search of all queries for ``k`` results (best of
    two) and scores it with :func:`recall_at`; R@100, when ``k`` < 100, comes
    from one more search for 100 results, because refined and HNSW answers depend
    on the number asked for.

    ``exclude`` (one id per query) leaves each query's own id out of its answers
    (leave-one-out queries drawn from the base; ``truth`` must exclude it too, see
    :func:`drop_ids`); ``selector`` restricts every search (deleted rows).
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if k < 10 and metric in ("R@10", "10-recall@10"):
        raise ConfigError(f"{metric} needs at least 10 results per query, not k={k}")
    xq = _float32(queries, "queries")
    exact = np.asarray(truth, dtype=np.int64)
    if exact.ndim != 2 or len(exact) != len(xq):
        raise DataError(f"truth {exact.shape} needs one row per query ({len(xq)})")
    previous = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        skip = None if exclude is None else np.asarray(exclude, dtype=np.int64)
        if skip is not None and skip.shape != (len(xq),):
            raise DataError(f"exclude needs one id per query ({len(xq)}), got {skip.shape}")
        return _tune(index, xq, exact, k, target, metric, skip, selector)
    finally:
        faiss.omp_set_num_threads(previous)


def drop_ids(found: npt.ArrayLike, exclude: npt.ArrayLike | None, k: int) -> Ids:
    """The first ``k`` ids of each row of ``found`` other than that row's ``exclude`` id."""
    got = np.asarray(found, dtype=np.int64)
    if exclude is None:
        return got[:, :k]
    keep = got != np.asarray(exclude, dtype=np.int64)[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")
    kept = np.where(
        np.take_along_axis(keep, order, axis=1), np.take_along_axis(got, order, axis=1), -1
    )
    return kept[:, :k]


def _tune(
    index: faiss.Index,
    xq: Matrix,
    truth: Ids,
    k: int,
    target: float,
    metric: str,
    exclude: Ids | None = None,
    selector: Any = None,
) -> TuneResult:
    extra_k = 0 if exclude is None else 1

    def measure(setting: dict[str, Any]) -> dict[str, Any]:
        params = search_params(index, **setting, selector=selector)
        seconds = float("inf")
        for _ in range(2):  # best of two: the first may pay for cold caches
            start = time.perf_counter()
            _, found = index.search(xq, k + extra_k, params=params)
            seconds = min(seconds, max(time.perf_counter() - start, 1e-9))
        recalls = recall_at(drop_ids(found, exclude, k), truth)
        if k < 100:
            _, more = index.search(xq, 100 + extra_k, params=params)
            more = drop_ids(more, exclude, 100)
            recalls.update(
                {key: value for key, value in recall_at(more, truth).items() if key == "R@100"}
            )
        point = {**setting, **recalls, "qps": len(xq) / seconds}
        point.setdefault(metric, 0.0)
        return point

    def sweep(settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        for setting in settings:
            done.append(measure(setting))
            if _stop([p[metric] for p in done], target):
                break
        return done

    core, refined = _structure(index)
    knob: str | None
    if isinstance(core, faiss.IndexIVF):
        knob = "nprobe"
        extra = {"k_factor": float(REFINE_K_FACTOR)} if refined else {}
        points = sweep([{"nprobe": n, **extra} for n in _nprobes(core.nlist)])
        knobs: tuple[str, ...] = ("nprobe", "k_factor") if refined else ("nprobe",)
        if refined:
            best, _ = _choose(points, metric, target, knobs)
            others = [f for f in K_FACTORS if f != REFINE_K_FACTOR]
            points += [measure({"nprobe": best["nprobe"], "k_factor": float(f)}) for f in others]
    elif isinstance(core, faiss.IndexHNSW):
        knob, knobs = "ef_search", ("ef_search",)
        points = sweep([{"ef_search": ef} for ef in EF_SEARCH])
    else:
        knob, knobs = None, ()
        points = [measure({})]
    chosen, reached = _choose(points, metric, target, knobs)
    return TuneResult(
        knob=knob,
        metric=metric,
        target=target,
        k=k,
        queries=len(xq),
        threads=faiss.omp_get_max_threads(),
        points=points,
        chosen={**chosen, "reached": reached},
        reached=reached,
    )
