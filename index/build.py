"""Build index versions from embeddings: choose, train, add, measure, write.

:func:`build_version` takes unit float32 vectors and their item ids (and optionally
each item's catalog record, and a text corpus), picks the index
(:mod:`index.factory`) unless a factory string is given, trains it on a seeded
sample, adds every vector with its row as the FAISS id, then measures recall against
exact search on held-out queries and tunes ``nprobe`` (or ``efSearch``) to the
smallest setting that reaches the target (:mod:`index.evaluate`). Everything lands
in a new version directory that replaces nothing until it is complete
(:mod:`index.versions`).

Held-out queries: ``queries`` when given; otherwise 1,000 catalog vectors, each
searched with itself left out of the answers (see :func:`measure`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from index.evaluate import bitmap_selector, drop_ids, exact_qps, exact_search, tune
from index.factory import IndexChoice, choose_index
from index.lexical import without_codes, write_lexical
from index.relevance import MAX_ITEMS as CALIBRATION_ITEMS
from index.relevance import Calibration, fit_null, fit_titles
from index.store import IDS, ITEMS, create_store, write_ids
from index.versions import (
    DELETED,
    INDEX,
    TEXTS,
    VECTORS,
    IndexManifest,
    new_version,
    switch,
)
from runtime.errors import ConfigError, DataError
from runtime.files import progress_disabled
from runtime.identity import ModelRef
from sources.catalog import catalog_lines, read_catalog
from sources.catalog import item_id as check_item_id

ADD_CHUNK = 65_536
EVAL_QUERIES = 1_000


@dataclass
class Corpus:
    """Vectors with their ids and (optionally) catalog records, for one index.

    ``titles``: the embeddings of the items' titles by the same model (``[n, d]``, zero
    rows for items without one; :func:`title_vectors`), from which a build fits the
    version's relevance calibration (:mod:`index.relevance`)."""

    vectors: npt.NDArray[np.float32]
    ids: Sequence[str]
    items: Sequence[Mapping[str, Any]] | None = None
    titles: npt.NDArray[np.float32] | None = None


def item_titles(items: Sequence[Mapping[str, Any]] | None, count: int) -> list[str | None]:
    """Each item's title (None where it has none)."""
    if items is None:
        return [None] * count
    return [
        t if isinstance(t, str) and t.strip() else None for t in (i.get("title") for i in items)
    ]


def title_vectors(
    bundle: Any,
    items: Sequence[Mapping[str, Any]] | None,
    *,
    progress: bool = True,
    limit: int = CALIBRATION_ITEMS,
    seed: int = 0,
) -> npt.NDArray[np.float32] | None:
    """The titles of up to ``limit`` items drawn at random (the calibration's sample: a
    catalog of millions needs no more) embedded by ``bundle``, each distinct title once
    with its model codes taken out (no picture shows one, and the lexical side matches
    them); zero rows for the other items; None when no item has a title."""
    from index.embed import embed_texts

    titles = [
        None if t is None else without_codes(t) or None
        for t in item_titles(items, len(items or ()))
    ]
    titled = [n for n, t in enumerate(titles) if t]
    if len(titled) > limit:
        keep = set(np.random.default_rng(seed).choice(titled, size=limit, replace=False).tolist())
        titles = [t if n in keep else None for n, t in enumerate(titles)]
    distinct = list(dict.fromkeys(t for t in titles if t))
    if not distinct:
        return None
    encoded = embed_texts(bundle, distinct, progress=progress)
    row = {t: n for n, t in enumerate(distinct)}
    out = np.zeros((len(titles), encoded.shape[1]), dtype=np.float32)
    for n, t in enumerate(titles):
        if t:
            out[n] = encoded[row[t]]
    return out


def calibrate(corpus: Corpus, vectors: npt.NDArray[np.float32], seed: int = 0) -> Calibration:
    """The relevance calibration of a corpus (:mod:`index.relevance`): fitted on its
    titles when it has their embeddings and enough of them, the null one otherwise."""
    if corpus.titles is not None:
        if corpus.titles.shape != vectors.shape:
            raise DataError(
                f"title embeddings {list(corpus.titles.shape)} for vectors {list(vectors.shape)}"
            )
        # Grouped as embedded: titles that differ only in their codes are one title.
        titles = [
            None if t is None else without_codes(t) or None
            for t in item_titles(corpus.items, len(vectors))
        ]
        try:
            return fit_titles(vectors, corpus.titles, titles, seed=seed)
        except DataError as exc:
            null = fit_null(vectors, seed=seed)
            return dataclasses.replace(null, notes=(*null.notes, f"not fitted on titles: {exc}"))
    return fit_null(vectors, seed=seed)


def catalog_corpus(
    bundle: Any,
    catalog: str | Path,
    work_dir: str | Path,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    allow_private_urls: bool = False,
    titles: bool = True,
) -> tuple[Corpus, Any]:
    """A jsonl catalog's images embedded with ``bundle`` as a :class:`Corpus`.

    The embedding runs (and resumes) in ``work_dir`` (:func:`index.embed.embed_catalog`);
    image paths are relative to the catalog's folder. Each item's metadata is its title
    and its other attributes. Images that cannot be used are left out: the returned
    :class:`index.embed.EmbeddedCatalog` lists them in ``rejects``. Image URLs are
    fetched by the service's fetcher (:mod:`runtime.fetch`); ``allow_private_urls`` lets
    it reach hosts on private networks (the SSRF guard is on by default). ``titles``:
    embed the titles too (:attr:`Corpus.titles`, for the relevance calibration).
    """

    from index.embed import CATALOG_FETCH, embed_catalog

    path = Path(catalog)
    items = read_catalog(path)
    embedded = embed_catalog(
        bundle,
        items,
        work_dir,
        base_dir=path.parent,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        fetch=dataclasses.replace(CATALOG_FETCH, allow_private=allow_private_urls),
    )
    records = {item.id: {"title": item.title, **item.attributes} for item in items}
    kept = [records[i] for i in embedded.ids]
    encoded = title_vectors(bundle, kept, progress=progress) if titles else None
    return Corpus(embedded.vectors, embedded.ids, kept, encoded), embedded


def read_records(path: Path, text_key: str | None = None) -> dict[str, dict[str, Any]]:
    """``{id: record}`` of a jsonl file of objects with an ``id`` (and a string
    ``text_key``), ids and lines as the catalog parser reads them
    (:mod:`sources.catalog`: UTF-8, BOM, integer ids as text, line numbers in errors)."""
    out: dict[str, dict[str, Any]] = {}
    for number, line in catalog_lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(record, dict) or "id" not in record:
            raise DataError(f'{where}: each line must be an object with an "id"')
        record_id = check_item_id(record.pop("id"), where)
        if text_key is not None and not isinstance(record.get(text_key), str):
            raise DataError(f'{where}: needs a string "{text_key}"')
        if record_id in out:
            raise DataError(f"{where}: duplicate id {record_id!r}")
        out[record_id] = record
    if not out:
        raise DataError(f"{path}: no records")
    return out


def check_vectors(vectors: npt.ArrayLike, ids: Sequence[str]) -> npt.NDArray[np.float32]:
    """Unit float32 rows, one per id; ids unique and non-empty (DataError otherwise)."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise DataError(f"embeddings must be a non-empty [n, d] array, got {list(array.shape)}")
    if len(ids) != len(array):
        raise DataError(f"{len(ids)} ids for {len(array)} embeddings")
    seen: set[str] = set()
    for item_id in ids:
        if not isinstance(item_id, str) or not item_id:
            raise DataError(f"item ids must be non-empty strings, got {item_id!r}")
        if item_id in seen:
            raise DataError(f"duplicate item id {item_id!r}")
        seen.add(item_id)
    norms = np.linalg.norm(array, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise DataError(f"embedding of {ids[int(bad[0])]!r} is zero or not finite")
    unit: npt.NDArray[np.float32] = (array / norms[:, None]).astype(np.float32, copy=False)
    return unit


def sample_rows(
    rows: npt.NDArray[np.int64], count: int = EVAL_QUERIES, seed: int = 0
) -> npt.NDArray[np.int64]:
    """``count`` of ``rows`` (seeded), to serve as leave-one-out queries."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=min(count, len(rows)), replace=False))


OPQ_ITERATIONS = 10
OPQ_TRAIN_MAX = 32_768


def make_index(choice: IndexChoice, dim: int) -> Any:
    """The empty index of ``choice.factory``, with OPQ's training kept to a budget."""
    try:
        index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise ConfigError(f"FAISS cannot build factory {choice.factory!r}: {first}") from exc
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        chain: Any = outer.chain
        for position in range(chain.size()):
            transform = faiss.downcast_VectorTransform(chain.at(position))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = OPQ_ITERATIONS
                transform.niter_pq_0 = OPQ_ITERATIONS
                transform.max_train_points = OPQ_TRAIN_MAX
    return index


def use_gpu_clustering(index: Any) -> bool:
    """With faiss-gpu and a GPU, an inverted file's k-means runs on every GPU."""
    if getattr(faiss, "get_num_gpus", lambda: 0)() == 0:
        return False
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return False
    flat = faiss.IndexFlatL2(ivf.d)
    ivf.clustering_index = faiss.index_cpu_to_all_gpus(flat)
    return True


def uses_id_map(index: Any) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexIDMap | faiss.IndexIDMap2)


def add_vectors(
    index: Any, vectors: npt.NDArray[np.float32], first_row: int, progress: bool
) -> None:
    """Add ``vectors`` as rows ``first_row ..``: FAISS ids are rows (IDMap or insertion order)."""
    if not uses_id_map(index) and index.ntotal != first_row:
        raise ConfigError(f"index holds {index.ntotal} vectors, expected {first_row}")
    bar = tqdm(
        total=len(vectors),
        desc="add",
        unit="vec",
        disable=progress_disabled(progress),
        file=sys.stderr,
    )
    with bar:
        for start in range(0, len(vectors), ADD_CHUNK):
            chunk = np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32)
            if uses_id_map(index):
                rows = np.arange(first_row + start, first_row + start + len(chunk), dtype=np.int64)
                index.add_with_ids(chunk, rows)
            else:
                index.add(chunk)
            bar.update(len(chunk))


def measure(
    index: Any,
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32] | None,
    target: float,
    valid: npt.NDArray[np.int64] | None = None,
) -> dict[str, Any]:
    """Recall and QPS against exact search, with the tuned search setting.

    Without ``queries``, 1,000 live catalog vectors are the queries, each with itself
    left out of both the exact and the index's answers (leave-one-out): a query then
    has the neighbours a new item like the catalog's would have.
    """
    rows = valid if valid is not None else np.arange(len(vectors), dtype=np.int64)
    selector = None
    if valid is not None and len(valid) < len(vectors):
        mask = np.zeros(len(vectors), dtype=bool)
        mask[valid] = True
        selector = bitmap_selector(mask)
    exclude = None
    if queries is None:
        exclude = sample_rows(rows)
        queries = np.ascontiguousarray(vectors[exclude], dtype=np.float32)
    extra = 0 if exclude is None else 1
    _, truth = exact_search(vectors, queries, 100 + extra, valid=valid)
    truth = drop_ids(truth, exclude, 100)
    result = tune(index, queries, truth, k=10, target=target, exclude=exclude, selector=selector)
    exact = exact_qps(vectors if valid is None else vectors[valid], queries, 10)
    report = result.to_dict()
    report["exact_qps"] = exact
    chosen = report.get("chosen") or {}
    if chosen.get("qps"):
        report["speedup"] = float(chosen["qps"]) / exact
    report["held_out"] = "leave-one-out catalog vectors" if exclude is not None else "given"
    return report


def search_settings(report: Mapping[str, Any]) -> dict[str, Any]:
    chosen = report.get("chosen") or {}
    return {key: chosen[key] for key in ("nprobe", "ef_search", "k_factor") if chosen.get(key)}


def _write_corpus(
    directory: Path,
    corpus: Corpus,
    vectors: npt.NDArray[np.float32],
    index: Any,
    manifest: IndexManifest,
    lexicon: Sequence[str],
) -> IndexManifest:
    (directory / VECTORS).mkdir()
    write_lexical(directory, corpus.items, lexicon)
    np.save(directory / VECTORS / "part-00000.npy", vectors)
    write_ids(directory / IDS, corpus.ids)
    create_store(directory / ITEMS, 0, corpus.ids, corpus.items)
    np.save(directory / DELETED, np.zeros(0, dtype=np.int64))
    faiss.write_index(index, str(directory / INDEX))
    size = (directory / INDEX).stat().st_size
    manifest = manifest.replace(bytes_per_vector=round(size / len(vectors), 1))
    manifest.write(directory)
    return manifest


def build_into(
    directory: Path,
    corpus: Corpus,
    *,
    model: ModelRef | None = None,
    factory: str | None = None,
    profile: str = "quality",
    target: float = 0.95,
    queries: npt.NDArray[np.float32] | None = None,
    seed: int = 0,
    progress: bool = True,
    lexicon: Sequence[str] = (),
) -> IndexManifest:
    """Build one index into the (empty, existing) ``directory``; returns its manifest.

    ``model`` is what the version records of the model that made the vectors
    (:attr:`runtime.bundle.Bundle.identity`, :func:`runtime.bundle_manifest.bundle_ref`);
    without it the version records none and no bundle can be checked against it. Items
    with titles also get a lexical index (:mod:`index.lexical`), whose segmenter knows
    the words of ``lexicon`` (brands, model codes).
    """
    vectors = check_vectors(corpus.vectors, corpus.ids)
    count, dim = vectors.shape
    if queries is not None and (queries.ndim != 2 or queries.shape[1] != dim):
        raise DataError(f"held-out queries must be [n, {dim}], got {list(queries.shape)}")
    if factory:
        choice = IndexChoice(factory, min(count, 256 * 1024), None, ["given with --factory"])
    else:
        choice = choose_index(count, dim, profile)
    index = make_index(choice, dim)
    log = print if progress else (lambda *args, **kwargs: None)
    log(f"index: {choice.factory} for {count:,} x {dim}", file=sys.stderr)
    for reason in choice.reasons:
        log(f"  - {reason}", file=sys.stderr)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if not index.is_trained:
        if use_gpu_clustering(index):
            log("  k-means on the GPU (faiss-gpu)", file=sys.stderr)
        rng = np.random.default_rng(seed)
        size = min(count, max(choice.train_size, 1))
        sample = np.sort(rng.choice(count, size=size, replace=False))
        log(f"  training on {size:,} vectors ...", file=sys.stderr)
        try:
            index.train(np.ascontiguousarray(vectors[sample]))
        except RuntimeError as exc:
            raise ConfigError(
                f"FAISS cannot train {choice.factory!r} on {size} vectors: {exc}"
            ) from exc
    timings["train_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    add_vectors(index, vectors, 0, progress)
    timings["add_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    report = measure(index, vectors, queries, target)
    timings["tune_s"] = round(time.perf_counter() - start, 2)
    calibration = calibrate(corpus, vectors, seed)
    manifest = IndexManifest(
        model=model or ModelRef(),
        dim=dim,
        count=count,
        total=count,
        factory=choice.factory,
        choice=choice.to_dict(),
        search=search_settings(report),
        recall=report,
        timings=timings,
        trained_on=count,
        relevance=calibration.to_dict(),
    )
    manifest = _write_corpus(directory, corpus, vectors, index, manifest, lexicon)
    log(
        f"  R@10 {manifest.chosen.get('R@10', 1.0):.3f} with "
        f"{dict(manifest.search) or 'exact search'}, {manifest.bytes_per_vector} bytes per vector",
        file=sys.stderr,
    )
    ece = "" if calibration.ece is None else f", ECE {calibration.ece:.3f} on held-out items"
    log(f"  relevance: {calibration.method} ({calibration.source}{ece})", file=sys.stderr)
    return manifest


def build_version(
    root: str | Path,
    corpus: Corpus,
    *,
    model: ModelRef | None = None,
    texts: Corpus | None = None,
    factory: str | None = None,
    profile: str = "quality",
    target: float = 0.95,
    queries: npt.NDArray[np.float32] | None = None,
    seed: int = 0,
    progress: bool = True,
    make_current: bool = True,
    lexicon: Sequence[str] = (),
) -> Path:
    """A new version under ``root`` (and ``CURRENT`` pointing at it); returns its path.

    ``lexicon``: words for the lexical index's segmenter (:func:`index.lexical.read_lexicon`).
    """
    root = Path(root)
    with new_version(root) as (staging, name):
        manifest = build_into(
            staging,
            corpus,
            model=model,
            factory=factory,
            profile=profile,
            target=target,
            queries=queries,
            seed=seed,
            progress=progress,
            lexicon=lexicon,
        )
        if texts is not None:
            (staging / TEXTS).mkdir()
            if texts.vectors.shape[1] != manifest.dim:
                raise DataError("the text corpus and the catalog have different dimensions")
            build_into(
                staging / TEXTS,
                texts,
                model=model,
                profile=profile,
                target=target,
                seed=seed,
                progress=progress,
            )
    if make_current:
        switch(root, name)
    return root / name
