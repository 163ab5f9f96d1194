"""Catalog images to embeddings: a resumable pipeline through a model bundle, in bounded memory.

A catalog is jsonl, one item a line: ``{"id": str, "image": path-or-URL, "title": str, ...}``
(:func:`read_catalog`). :func:`embed_catalog` embeds its images into a *work directory*::

    progress.json            bundle id, item count, catalog ids sha256, shard size
    shard-00000.ids.txt      ids of the items embedded in shard 0, one a line
    shard-00000.npy          their float32 [n, d] unit vectors, in the same order
    shard-00000.done.json    written last: the shard is complete; lists its rejects
    rejects.jsonl            {"id", "image", "error"} of every image that could not be used
    ids.txt, embeddings.npy  all shards joined, in catalog order (rejects left out)

Shard ``k`` holds catalog items ``k * shard_size`` up to ``(k + 1) * shard_size``. Every
file is written to a temporary name and renamed, and a shard counts only once its
``.done.json`` is there and agrees with its other two files, so a run killed at any point
is resumed by calling :func:`embed_catalog` again with the same work directory: complete
shards are kept, the others are embedded again. A work directory belongs to one bundle
and one catalog; another bundle or a changed catalog is refused.

Memory stays bounded whatever the catalog's size: a thread pool reads, decodes and
preprocesses images (Pillow releases the GIL while decoding) while the calling thread
encodes batches, with at most ``batch_size + 2 * workers`` preprocessed images waiting; one
shard's vectors are held until they are written; the joined result is a memory map of
``embeddings.npy``.

Images that are missing, unreadable, too large or not decodable are rejects, never a crash:
they are appended to ``rejects.jsonl`` as they happen and left out of the result.

:func:`index.ray_embed.embed_catalog_ray` fills the same work directory on a Ray cluster
through :func:`open_work_dir` and :meth:`WorkDir.write_shard`; either path resumes the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import itertools
import json
import os
import re
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Protocol, TypeAlias

import httpx
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from runtime.bundle import BundleError
from runtime.errors import (
    CnClipError,
    ConfigError,
    DataError,
    ImageTooLargeError,
    InvalidImageError,
)
from runtime.fetch import FetchError, FetchPolicy
from runtime.fetch import fetch as fetch_url
from runtime.files import atomic_path, progress_disabled
from runtime.files import write_atomically as _write_atomic
from runtime.images import PreprocessConfig, load_image, preprocess
from sources.catalog import CatalogItem, iter_catalog, read_catalog
from sources.catalog import item_id as check_item_id

__all__ = [
    "CatalogItem",
    "EmbeddedCatalog",
    "ImageEncoder",
    "TextEncoder",
    "embed_catalog",
    "embed_texts",
    "iter_catalog",
    "load_embeddings",
    "read_catalog",
]

FORMAT: Final = "cnclip-embeddings"
FORMAT_VERSION: Final = 2  # 2: the bundle id instead of the manifest sha256
PROGRESS: Final = "progress.json"
REJECTS: Final = "rejects.jsonl"
IDS: Final = "ids.txt"
EMBEDDINGS: Final = "embeddings.npy"
# Catalog images by URL: the service's fetcher, with a catalog's limits.
CATALOG_FETCH: Final = FetchPolicy(timeout_s=30.0, max_bytes=64 << 20, retries=2)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_CHUNK_ROWS: Final = 65536
DEFAULT_SHARD_SIZE: Final = 8192
NON_FINITE: Final = "the image encoder gave non-finite values"

Loaded: TypeAlias = "npt.NDArray[np.float32] | str"
"""A preprocessed [3, N, N] image, or why the item is rejected."""


class ImageEncoder(Protocol):
    """What :func:`embed_catalog` needs of a bundle (:class:`runtime.bundle.Bundle` has it)."""

    @property
    def bundle_id(self) -> str: ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def preprocess_config(self) -> PreprocessConfig: ...

    def encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


class TextEncoder(Protocol):
    """What :func:`embed_texts` needs of a bundle."""

    @property
    def embed_dim(self) -> int: ...

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class EmbeddedCatalog:
    """The embedded items in catalog order (rejects left out) and the rejects.

    ``vectors`` is a copy-on-write memory map of the work directory's ``embeddings.npy``:
    float32 ``[len(ids), dim]`` unit rows; writing to it never changes the file.
    """

    ids: list[str]
    vectors: npt.NDArray[np.float32]
    rejects: list[dict[str, str]]
    dim: int


# --------------------------------------------------------------------------- embedding


@dataclass(frozen=True, slots=True)
class Shard:
    """Catalog items ``start`` up to ``stop``: the unit that is written, and resumed, whole."""

    index: int
    start: int
    stop: int

    def path(self, work_dir: Path, suffix: str) -> Path:
        return work_dir / f"shard-{self.index:05d}{suffix}"

    def __len__(self) -> int:
        return self.stop - self.start


class WorkDir:
    """A work directory held under its lock (:func:`open_work_dir`): what is left to embed,
    and the one writer of shards and rejects, whichever engine produces the vectors."""

    def __init__(
        self,
        path: Path,
        items: Sequence[CatalogItem],
        shards: Sequence[Shard],
        done: dict[int, list[dict[str, str]]],
        dim: int,
        shard_size: int,
        log: IO[str],
    ) -> None:
        self.path = path
        self.shard_size = shard_size
        self.items = items
        self.shards = shards
        self.done = done
        self.dim = dim
        self._log = log

    @property
    def todo(self) -> list[Shard]:
        """The shards still to embed, in catalog order."""
        return [shard for shard in self.shards if shard.index not in self.done]

    @property
    def finished(self) -> int:
        """Catalog items in complete shards (embedded or rejected)."""
        return sum(len(shard) for shard in self.shards if shard.index in self.done)

    @property
    def rejected(self) -> int:
        return sum(len(rejects) for rejects in self.done.values())

    def log_reject(self, entry: dict[str, str]) -> None:
        """Append a reject to ``rejects.jsonl`` as soon as it is known."""
        self._log.write(_json_line(entry))
        self._log.flush()

    def write_shard(
        self,
        shard: Shard,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        rejects: list[dict[str, str]],
    ) -> None:
        """Write a complete shard: ids, vectors, then the marker that makes it count."""
        if len(ids) + len(rejects) != len(shard) or vectors.shape != (len(ids), self.dim):
            raise DataError(
                f"shard {shard.index}: {len(ids)} vectors and {len(rejects)} rejects for "
                f"{len(shard)} items; not written"
            )
        _write_atomic(shard.path(self.path, ".ids.txt"), "".join(f"{i}\n" for i in ids).encode())
        _write_atomic(shard.path(self.path, ".npy"), _npy_bytes(vectors))
        marker: dict[str, Any] = {
            "shard": shard.index,
            "start": shard.start,
            "stop": shard.stop,
            "embedded": len(ids),
            "rejects": rejects,
        }
        _write_atomic(shard.path(self.path, ".done.json"), json.dumps(marker).encode())
        self.done[shard.index] = rejects

    def joined(self) -> EmbeddedCatalog:
        """All shards as one result (all must be complete)."""
        missing = [shard.index for shard in self.todo]
        if missing:
            raise DataError(f"{self.path}: shards {missing} are not complete; run again to resume")
        return _joined(self.path, self.items, self.shards, self.done, self.dim)


@contextlib.contextmanager
def open_work_dir(
    work_dir: str | os.PathLike[str],
    items: Sequence[CatalogItem],
    *,
    bundle_id: str,
    dim: int,
    shard_size: int | None = None,
) -> Iterator[WorkDir]:
    """Lock a work directory for ``items`` embedded by bundle ``bundle_id``, and resume it.

    A new directory is started with ``shard_size`` (default :data:`DEFAULT_SHARD_SIZE`);
    an existing one keeps the shard size it was started with (a different one given
    explicitly is refused). Incomplete shards are cleared; complete ones are kept.

    Raises:
        DataError: duplicate or empty ids, or a work directory of another bundle or catalog
            (or in use by another run).
        ConfigError: a shard size below 1.
    """
    work_dir = Path(work_dir)
    fingerprint = _catalog_fingerprint(items)
    work_dir.mkdir(parents=True, exist_ok=True)
    with _locked(work_dir):
        if shard_size is None:
            shard_size = _started_shard_size(work_dir) or DEFAULT_SHARD_SIZE
        _check_positive("shard_size", shard_size)
        state = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bundle_id": bundle_id,
            "embed_dim": dim,
            "items": len(items),
            "ids_sha256": fingerprint,
            "shard_size": shard_size,
        }
        for stale in work_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        _check_progress(work_dir, state)
        n = len(items)
        shards = [
            Shard(k, start, min(start + shard_size, n))
            for k, start in enumerate(range(0, n, shard_size))
        ]
        done = _resume(work_dir, shards, items, dim)
        with (work_dir / REJECTS).open("a", encoding="utf-8") as log:
            yield WorkDir(work_dir, items, shards, done, dim, shard_size, log)


def embed_catalog(
    bundle: ImageEncoder,
    items: Sequence[CatalogItem],
    work_dir: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str],
    batch_size: int = 32,
    workers: int | None = None,
    shard_size: int | None = None,
    progress: bool = True,
    fetch: FetchPolicy = CATALOG_FETCH,
) -> EmbeddedCatalog:
    """Embed the catalog's images into ``work_dir``, resuming what a previous run left there.

    Args:
        bundle: a loaded model bundle (:func:`runtime.bundle.load_bundle`).
        items: the catalog (:func:`read_catalog`), ids unique.
        work_dir: where the shards go (created if needed); see the module documentation.
        base_dir: the folder relative image paths are relative to (the catalog's folder).
        batch_size: images a call of the image encoder.
        workers: threads reading and preprocessing images (default: up to 8, one a CPU).
        shard_size: items a shard (default 8192, or the one a resumed directory was
            started with; another one is refused).
        progress: show a progress bar on standard error when it is a terminal.
        fetch: how http(s) images are fetched (:mod:`runtime.fetch`, the service's
            fetcher): by default with the SSRF guard on, 64 MiB, 30 s and 2 retries;
            ``dataclasses.replace(CATALOG_FETCH, allow_private=True)`` for an image host
            on a private network.

    Raises:
        DataError: duplicate or empty ids, or a work directory of another bundle or catalog
            (or in use by another run).
        ConfigError: a batch size, worker count or shard size below 1.
    """
    _check_positive("batch_size", batch_size)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    _check_positive("workers", workers)
    base_dir = Path(base_dir)
    with open_work_dir(
        work_dir, items, bundle_id=bundle.bundle_id, dim=bundle.embed_dim, shard_size=shard_size
    ) as work:
        todo = work.todo
        if todo:
            with (
                progress_bar(work, progress) as bar,
                httpx.Client(timeout=fetch.timeout_s, headers={"User-Agent": "cnclip"}) as http,
            ):
                embedder = _ShardEmbedder(bundle, work, batch_size, bar)
                embedder.run(todo, Images(base_dir, fetch, http), workers)
        return work.joined()


def progress_bar(work: WorkDir, progress: bool) -> tqdm[Any]:
    """The bar of an embedding run: all catalog items, the finished shards already counted."""
    bar: tqdm[Any] = tqdm(
        total=len(work.items),
        initial=work.finished,
        unit="img",
        desc="embedding images",
        dynamic_ncols=True,
        disable=progress_disabled(progress),
    )
    bar.set_postfix(rejects=work.rejected)
    return bar


def _started_shard_size(work_dir: Path) -> int | None:
    """The shard size recorded in an existing ``progress.json``; None if there is none."""
    try:
        value = json.loads((work_dir / PROGRESS).read_text(encoding="utf-8")).get("shard_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _catalog_fingerprint(items: Sequence[CatalogItem]) -> str:
    """The sha256 of the ids in order; refuses empty, multi-line or repeated ids."""
    digest = hashlib.sha256()
    seen: set[str] = set()
    for position, item in enumerate(items):
        item_id = check_item_id(item.id, f"catalog item {position}")
        if not isinstance(item.image, str) or not item.image.strip():
            raise DataError(f"catalog item {position}: image {item.image!r} is not a path")
        if item_id in seen:
            first = next(i for i, other in enumerate(items) if other.id == item_id)
            raise DataError(
                f"catalog items {first} and {position} have the same id {item_id!r}; "
                "ids must be unique"
            )
        seen.add(item_id)
        digest.update(item_id.encode("utf-8") + b"\n")
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(work_dir: Path) -> Iterator[None]:
    """Hold the work directory's lock: two runs must not write the same shards."""
    fd = os.open(work_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"{work_dir}: another embedding run is using this work directory; "
                "wait for it to finish or use another directory"
            ) from None
        yield
    finally:
        os.close(fd)


def _check_progress(work_dir: Path, state: dict[str, Any]) -> None:
    """Refuse a work directory of another bundle or catalog; start a new one."""
    path = work_dir / PROGRESS
    if not path.exists():
        if any(work_dir.glob("shard-*")):
            raise DataError(
                f"{work_dir}: holds shards but no {PROGRESS}; it is damaged or not a work "
                "directory of embed_catalog: delete it or use another"
            )
        _write_atomic(path, json.dumps(state, indent=2).encode())
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); delete {work_dir} to start over") from exc
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise DataError(f"{path}: not an embed_catalog progress file; use another work directory")
    if old.get("bundle_id") != state["bundle_id"]:
        raise DataError(
            f"{work_dir}: started with another model bundle ({str(old.get('bundle_id'))[:12]}"
            f"..., this one {state['bundle_id'][:12]}...); the shards of one run come from "
            "one bundle: use another work directory or delete it"
        )
    if old.get("items") != state["items"] or old.get("ids_sha256") != state["ids_sha256"]:
        raise DataError(
            f"{work_dir}: started with another catalog ({old.get('items')} items then, "
            f"{state['items']} now, or other ids); use another work directory or delete it"
        )
    if old.get("shard_size") != state["shard_size"]:
        raise DataError(
            f"{work_dir}: started with shard_size {old.get('shard_size')}, not "
            f"{state['shard_size']}; resume with the same shard size"
        )
    if old != state:
        raise DataError(f"{path}: written by another version of cnclip; use another work directory")


def _resume(
    work_dir: Path, shards: Sequence[Shard], items: Sequence[CatalogItem], dim: int
) -> dict[int, list[dict[str, str]]]:
    """The rejects of each complete shard; clears the others and rewrites ``rejects.jsonl``.

    ``rejects.jsonl`` keeps the rejects of the complete shards only: those of the others
    are appended again when they are retried, so no reject is listed twice.
    """
    done: dict[int, list[dict[str, str]]] = {}
    for shard in shards:
        rejects = _complete_rejects(work_dir, shard, items, dim)
        if rejects is not None:
            done[shard.index] = rejects
    todo = [shard for shard in shards if shard.index not in done]
    if todo:
        _forget(work_dir, todo)
    lines = (_json_line(r) for shard in shards for r in done.get(shard.index, []))
    _write_atomic(work_dir / REJECTS, "".join(lines).encode())
    return done


def _complete_rejects(
    work_dir: Path, shard: Shard, items: Sequence[CatalogItem], dim: int
) -> list[dict[str, str]] | None:
    """The rejects of a complete shard; None when it has to be embedded (again)."""
    try:
        marker = json.loads(shard.path(work_dir, ".done.json").read_text(encoding="utf-8"))
        rejects = marker["rejects"]
        if not isinstance(rejects, list) or not all(_is_reject(r) for r in rejects):
            return None
        ids = _read_ids(shard.path(work_dir, ".ids.txt"))
        vectors = np.load(shard.path(work_dir, ".npy"), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, KeyError, TypeError, DataError):
        return None
    rejected = {r["id"] for r in rejects}
    wanted = [item.id for item in items[shard.start : shard.stop] if item.id not in rejected]
    complete = (
        ids == wanted
        and len(wanted) + len(rejects) == shard.stop - shard.start
        and isinstance(vectors, np.ndarray)
        and vectors.dtype == np.float32
        and vectors.shape == (len(wanted), dim)
    )
    return rejects if complete else None


def _is_reject(entry: Any) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(key), str) for key in ("id", "image", "error")
    )


def _forget(work_dir: Path, todo: Sequence[Shard]) -> None:
    """Remove what incomplete shards and the joined files left: markers first."""
    (work_dir / EMBEDDINGS).unlink(missing_ok=True)
    (work_dir / IDS).unlink(missing_ok=True)
    for suffix in (".done.json", ".npy", ".ids.txt"):
        for shard in todo:
            shard.path(work_dir, suffix).unlink(missing_ok=True)


class _ShardEmbedder:
    """Encodes the images of shards as a thread pool delivers them, and writes the shards."""

    def __init__(
        self, bundle: ImageEncoder, work: WorkDir, batch_size: int, bar: tqdm[Any]
    ) -> None:
        self.bundle = bundle
        self.work = work
        self.batch_size = batch_size
        self.bar = bar
        self.rejected = work.rejected

    def run(self, todo: Sequence[Shard], images: Images, workers: int) -> None:
        load = functools.partial(load_item, images=images, config=self.bundle.preprocess_config)
        items = self.work.items
        pending = itertools.chain.from_iterable(items[s.start : s.stop] for s in todo)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnclip-embed")
        try:
            loaded = _prefetch(pool, pending, load, self.batch_size + 2 * workers)
            for shard in todo:
                self.shard(shard, loaded)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def shard(self, shard: Shard, loaded: Iterator[tuple[CatalogItem, Loaded]]) -> None:
        ids: list[str] = []
        blocks: list[npt.NDArray[np.float32]] = []
        rejects: list[dict[str, str]] = []
        batch: list[tuple[CatalogItem, npt.NDArray[np.float32]]] = []
        for item, result in itertools.islice(loaded, len(shard)):
            if isinstance(result, str):
                self.reject(item, result, rejects)
                continue
            batch.append((item, result))
            if len(batch) == self.batch_size:
                blocks.append(self.encode(batch, ids, rejects))
                batch = []
        if batch:
            blocks.append(self.encode(batch, ids, rejects))
        dim = self.bundle.embed_dim
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
        self.work.write_shard(shard, ids, vectors, rejects)

    def encode(
        self,
        batch: Sequence[tuple[CatalogItem, npt.NDArray[np.float32]]],
        ids: list[str],
        rejects: list[dict[str, str]],
    ) -> npt.NDArray[np.float32]:
        """The batch's unit vectors (rows that are not finite become rejects)."""
        pixels = np.stack([pixels for _, pixels in batch])
        vectors = checked_output(self.bundle.encode_pixels(pixels), len(batch), self.bundle)
        finite = finite_rows(vectors)
        for (item, _), ok in zip(batch, finite.tolist(), strict=True):
            if ok:
                ids.append(item.id)
            else:
                self.reject(item, NON_FINITE, rejects)
        self.bar.update(int(finite.sum()))
        return vectors[finite]

    def reject(self, item: CatalogItem, error: str, rejects: list[dict[str, str]]) -> None:
        entry = reject_entry(item, error)
        rejects.append(entry)
        self.work.log_reject(entry)
        self.rejected += 1
        self.bar.update(1)
        self.bar.set_postfix(rejects=self.rejected, refresh=False)


def reject_entry(item: CatalogItem, error: str) -> dict[str, str]:
    """What ``rejects.jsonl`` and a shard's marker record of an image that cannot be used."""
    return {"id": item.id, "image": item.image, "error": error}


def finite_rows(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Which rows an encoder gave are usable: the others become rejects (:data:`NON_FINITE`)."""
    return np.asarray(np.isfinite(vectors).all(axis=1), dtype=np.bool_)


def _prefetch(
    pool: ThreadPoolExecutor,
    items: Iterable[CatalogItem],
    load: Callable[[CatalogItem], Loaded],
    depth: int,
) -> Iterator[tuple[CatalogItem, Loaded]]:
    """``(item, load(item))`` in order, with at most ``depth`` items submitted ahead."""
    window: deque[tuple[CatalogItem, Future[Loaded]]] = deque()
    for item in items:
        window.append((item, pool.submit(load, item)))
        if len(window) >= depth:
            head, future = window.popleft()
            yield head, future.result()
    while window:
        head, future = window.popleft()
        yield head, future.result()


def checked_output(
    vectors: npt.NDArray[np.float32], rows: int, bundle: ImageEncoder | TextEncoder
) -> npt.NDArray[np.float32]:
    array = np.asarray(vectors, dtype=np.float32)
    if array.shape != (rows, bundle.embed_dim):
        raise BundleError(
            f"the encoder returned shape {list(array.shape)} for {rows} inputs, expected "
            f"[{rows}, {bundle.embed_dim}]; the bundle is inconsistent: export it again"
        )
    return array


@dataclass(frozen=True)
class Images:
    """Where a catalog's images come from: files under ``base_dir``, or URLs."""

    base_dir: Path
    fetch: FetchPolicy
    http: httpx.Client

    def source(self, image: str) -> str | bytes:
        """A local path (relative ones under ``base_dir``), or the bytes a URL serves."""
        match = _URL.match(image)
        if match is None:
            path = Path(image)
            return str(path if path.is_absolute() else self.base_dir / path)
        scheme = match.group(1).lower()
        if scheme == "file":
            parts = urllib.parse.urlsplit(image)
            if parts.netloc not in ("", "localhost"):
                raise InvalidImageError(f"cannot read image {image}: a file URL of another host")
            return urllib.request.url2pathname(parts.path)
        if scheme in ("http", "https"):
            try:
                return fetch_url(image, self.fetch, self.http)
            except FetchError as exc:
                raise InvalidImageError(f"cannot download image {image}: {exc}") from exc
            except ImageTooLargeError as exc:
                raise ImageTooLargeError(f"image {image}: {exc}; not downloaded") from exc
        raise InvalidImageError(
            f"cannot read image {image}: unsupported URL scheme {scheme!r} "
            "(use a path, file://, http:// or https://)"
        )


def load_item(item: CatalogItem, *, images: Images, config: PreprocessConfig) -> Loaded:
    """Runs in the pool: the preprocessed image, or the reason it cannot be used."""
    try:
        source = images.source(item.image)
        name = item.image if isinstance(source, bytes) else None
        return preprocess(load_image(source, max_pixels=config.max_pixels, name=name), config)
    except CnClipError as exc:
        return str(exc)


def _joined(
    work_dir: Path,
    items: Sequence[CatalogItem],
    shards: Sequence[Shard],
    done: dict[int, list[dict[str, str]]],
    dim: int,
) -> EmbeddedCatalog:
    """All shards as one result, through ``ids.txt`` and ``embeddings.npy`` (written once)."""
    rejects = [r for shard in shards for r in done[shard.index]]
    rejected = {r["id"] for r in rejects}
    ids = [item.id for item in items if item.id not in rejected]
    if not ids:
        return EmbeddedCatalog(ids, np.zeros((0, dim), dtype=np.float32), rejects, dim)
    npy, ids_txt = work_dir / EMBEDDINGS, work_dir / IDS
    try:
        current = _read_ids(ids_txt) == ids
        shape = np.load(npy, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError, EOFError, DataError):
        current, shape = False, None
    if not current or shape != (len(ids), dim):
        _write_atomic(ids_txt, "".join(f"{i}\n" for i in ids).encode())
        _join_shards(work_dir, shards, npy, (len(ids), dim))
    vectors: npt.NDArray[np.float32] = np.load(npy, mmap_mode="c", allow_pickle=False)
    return EmbeddedCatalog(ids, vectors, rejects, dim)


def _join_shards(
    work_dir: Path, shards: Sequence[Shard], npy: Path, shape: tuple[int, int]
) -> None:
    with atomic_path(npy) as temporary:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape)
        row = 0
        for shard in shards:
            block = np.load(shard.path(work_dir, ".npy"), mmap_mode="r", allow_pickle=False)
            out[row : row + len(block)] = block
            row += len(block)
        out.flush()
        del out


# --------------------------------------------------------------------------- files


def _npy_bytes(array: npt.NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _json_line(entry: dict[str, str]) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _read_ids(path: Path) -> list[str]:
    """One id a line (``\\n`` or ``\\r\\n``), UTF-8; a final line break is optional."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the ids ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8; save the ids as UTF-8") from exc
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


# --------------------------------------------------------------------------- inputs


def load_embeddings(
    npy: str | os.PathLike[str], ids_txt: str | os.PathLike[str]
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Precomputed embeddings: ``[n, d]`` float rows (made unit float32) and their ids.

    Raises:
        DataError: an unreadable file, an array that is not 2-D float with rows, an ids
            count that differs from the rows, an empty or repeated id, or a row that is
            all zeros or holds NaN or infinity (the message names its id).
    """
    npy, ids_txt = Path(npy), Path(ids_txt)
    try:
        raw = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"{npy}: not a readable .npy file ({exc}); write it with numpy.save"
        ) from exc
    if not isinstance(raw, np.ndarray):
        raise DataError(f"{npy}: an .npz archive; give one [n, d] array saved with numpy.save")
    if raw.ndim != 2 or 0 in raw.shape:
        raise DataError(f"{npy}: expected a [n, d] array with rows, got shape {list(raw.shape)}")
    if not np.issubdtype(raw.dtype, np.floating):
        raise DataError(f"{npy}: expected float vectors, got dtype {raw.dtype}")
    ids = _read_ids(ids_txt)
    if len(ids) != len(raw):
        raise DataError(
            f"{ids_txt} has {len(ids)} ids for the {len(raw)} rows of {npy}; "
            "give one id a line, in row order"
        )
    seen: set[str] = set()
    for line, item_id in enumerate(ids, start=1):
        if not item_id.strip():
            raise DataError(f"{ids_txt}:{line}: empty id; every row needs an id")
        if item_id in seen:
            first = ids.index(item_id) + 1
            raise DataError(
                f"{ids_txt}:{line}: duplicate id {item_id!r}, first at line {first}; "
                "ids must be unique"
            )
        seen.add(item_id)
    return _unit_rows(raw, ids, npy), ids


def _unit_rows(
    raw: npt.NDArray[np.floating[Any]], ids: Sequence[str], npy: Path
) -> npt.NDArray[np.float32]:
    out = np.empty(raw.shape, dtype=np.float32)
    for start in range(0, len(raw), _CHUNK_ROWS):
        block = np.asarray(raw[start : start + _CHUNK_ROWS], dtype=np.float64)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise DataError(
                f"{npy}: row {row} (id {ids[row]!r}) holds NaN or infinity; embed it again"
            )
        norms = np.linalg.norm(block, axis=1)
        if not norms.all():
            row = start + int(np.argmin(norms != 0))
            raise DataError(
                f"{npy}: row {row} (id {ids[row]!r}) is all zeros and has no direction; "
                "embed it again or leave it out"
            )
        out[start : start + len(block)] = block / norms[:, None]
    return out


def embed_texts(
    bundle: TextEncoder, texts: Sequence[str], batch_size: int = 256, progress: bool = True
) -> npt.NDArray[np.float32]:
    """Texts -> float32 ``[len(texts), d]`` unit rows, in input order.

    Texts are batched by length (a batch is padded to its longest text), so the order of
    the calls differs from the input's; the result does not.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    _check_positive("batch_size", batch_size)
    out = np.empty((len(texts), bundle.embed_dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with tqdm(
        total=len(texts),
        unit="text",
        desc="embedding texts",
        dynamic_ncols=True,
        disable=progress_disabled(progress),
    ) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            vectors = bundle.encode_texts([texts[i] for i in rows])
            out[rows] = checked_output(vectors, len(rows), bundle)
            bar.update(len(rows))
    return out
