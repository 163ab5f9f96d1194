"""The recall of a built index: against exact search, and for another bundle's queries.

- :func:`evaluate_index` is ``cnclip index eval DIR``: the version a root serves (or
  the version directory given) measured against exact search over its stored vectors
  and tuned to a target, the report written beside the version as ``eval.json``.
- :func:`cross_precision` is ``cnclip index eval DIR --bundle B``: text queries embedded
  by the bundle ``B`` (another precision of the index's model: an int8 bundle on CPU
  replicas against an index an fp16 bundle built on a GPU) searched as the service
  searches them. It separates what the index costs from what ``B``'s precision costs:

  ``ann``        the index's answers to B's queries against exact search of B's queries;
  ``precision``  exact search of B's queries against exact search of the reference's;
  ``total``      the index's answers to B's queries against exact search of the
                 reference's queries: what a user of ``B`` gets, against the ideal;
  ``reference``  the index's answers to the reference's own queries (its ANN recall).

  The reference is a bundle of the same model (``--reference``, typically the one that
  built the index); without it only ``ann`` is measured. Queries are a text file (one
  per line) or the titles stored with the index's items. Both backends are measured
  alike, through the backend protocol (the stored vectors read back for exact search).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.build import measure
from index.evaluate import exact_search, recall_at
from index.search import load as load_version
from index.search import load_vectors
from index.versions import resolve
from runtime.errors import DataError
from runtime.identity import check_serves
from runtime.manifests import write_json

EVAL_REPORT = "eval.json"
CROSS_REPORT = "cross-precision.json"
QUERY_SAMPLE = 1_000
K = 10


@dataclass(frozen=True)
class VersionReport:
    """One version's measured recall (``report``: :func:`index.build.measure`'s)."""

    directory: Path
    report: dict[str, Any]

    @property
    def chosen(self) -> dict[str, Any]:
        return dict(self.report.get("chosen") or {})


def evaluate_index(
    path: str | Path, *, queries: npt.NDArray[np.float32] | None = None, target: float = 0.95
) -> list[VersionReport]:
    """Measure and tune the version ``path`` serves (a root or a version); writes
    ``eval.json`` beside it.

    ``queries``: ``[n, d]`` held-out queries (normalized here); default: 1,000 live
    catalog vectors, each left out of its own answers.
    """
    if queries is not None:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    catalog = load_version(path)
    try:
        live = np.setdiff1d(np.arange(catalog.total), catalog.deleted)
        vectors = load_vectors(catalog.directory)
        report = measure(catalog.index, vectors, queries, target, valid=live)
    finally:
        catalog.close()
    write_json(catalog.directory / EVAL_REPORT, report)
    return [VersionReport(catalog.directory, report)]


def read_queries(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, one query each."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read queries ({exc})") from exc
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise DataError(f"{path}: no queries (one per line)")
    return texts


def _overlap(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in recall_at(found, truth).items()}


def cross_precision(
    location: str | Path,
    bundle: Any,
    *,
    reference: Any | None = None,
    texts: Sequence[str] | None = None,
    sample: int = QUERY_SAMPLE,
    seed: int = 0,
) -> dict[str, Any]:
    """Recall of ``bundle``'s text queries against the index at ``location`` (a FAISS
    version or root, or ``milvus://``), as the module documentation describes, through
    the backend protocol. A FAISS version gets the report as ``cross-precision.json``.

    ``bundle`` and ``reference`` are loaded bundles (:func:`runtime.bundle.load_bundle`);
    both must be of the index's model (:func:`runtime.identity.check_serves`).

    Raises:
        ModelMismatchError: ``bundle`` or ``reference`` is of another model.
        DataError: no queries, or an empty index.
        IndexUnavailableError: a Milvus server that cannot be reached.
    """
    from index import is_milvus, load

    backend = load(location)
    try:
        where = backend.location if is_milvus(location) else str(resolve(location))
        notes = [check_serves(backend.model, bundle.identity, where)]
        if reference is not None:
            notes.append(check_serves(backend.model, reference.identity, where))
        queries = list(texts) if texts else backend.sample_titles(sample, seed=seed)
        if not queries:
            raise DataError(f"{where}: its items have no titles to query with; give --texts FILE")
        ids, vectors = backend.stored()
        if not ids:
            raise DataError(f"{where}: the index holds no items")
        position = {item: n for n, item in enumerate(ids)}

        def found(q: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
            """The index's answers as positions in ``ids`` (-1 past the end)."""
            rows = np.full((len(q), K), -1, dtype=np.int64)
            for n, answer in enumerate(backend.search(q, K).ids):
                rows[n, : len(answer)] = [position.get(item, -1) for item in answer]
            return rows

        mine = np.ascontiguousarray(bundle.encode_texts(queries), dtype=np.float32)
        found_mine = found(mine)
        _, exact_mine = exact_search(vectors, mine, K)
        report: dict[str, Any] = {
            "index": where,
            "version": backend.version,
            "queries": len(queries),
            "query_source": "given" if texts else "item titles",
            "k": K,
            "search": next((dict(v.search) for v in backend.versions() if v.current), {}),
            "factory": backend.factory,
            "index_model": backend.model.to_dict(),
            "bundle": {"path": str(bundle.directory), **bundle.identity.to_dict()},
            "ann": _overlap(found_mine, exact_mine),
            "notes": [n for n in notes if n],
        }
        if reference is not None:
            theirs = np.ascontiguousarray(reference.encode_texts(queries), dtype=np.float32)
            cosines = np.sum(mine * theirs, axis=1)
            _, exact_theirs = exact_search(vectors, theirs, K)
            report["reference"] = {
                "path": str(reference.directory),
                **reference.identity.to_dict(),
                "ann": _overlap(found(theirs), exact_theirs),
            }
            report["precision"] = _overlap(exact_mine, exact_theirs)
            report["total"] = _overlap(found_mine, exact_theirs)
            report["query_cosine"] = {
                "min": round(float(cosines.min()), 6),
                "mean": round(float(cosines.mean()), 6),
            }
    finally:
        backend.close()
    if not is_milvus(location):
        write_json(Path(where) / CROSS_REPORT, report)
    return report
