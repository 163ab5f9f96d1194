"""Catalog embedding on a Ray cluster: the work directory of :mod:`index.embed`, filled by Ray Data.

:func:`embed_catalog_ray` is :func:`index.embed.embed_catalog` for catalogs that one host
embeds too slowly. The driver (this process) reads and checks the catalog with the same
reader, opens the same work directory (same lock, same ``progress.json``, same resume:
complete shards are skipped) and hands the items of the shards still to embed to Ray
Data as Arrow blocks. Ray *tasks* read, decode and preprocess the images; an *actor pool*
encodes them, one bundle session an actor (GPU actors where ``gpus_per_actor`` is set);
the vectors stream back to the driver, which writes every shard as soon as its last item
has arrived. Only the driver writes, so the work directory needs to be on the driver's
disk alone; the images (paths or URLs) and the bundle directory must be readable by every
node of the cluster (a shared file system, an object store behind http, or the same image
on every node), and every node needs cnclip installed (``pip install 'cnclip[distributed]'``).

The result is byte-for-byte the layout the one-machine path writes: ``cnclip index build
--catalog items.jsonl --work-dir DIR`` then builds from the shards without encoding again,
and either path can resume what the other started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt

from index.embed import (
    CATALOG_FETCH,
    NON_FINITE,
    EmbeddedCatalog,
    Images,
    Shard,
    WorkDir,
    checked_output,
    finite_rows,
    load_item,
    open_work_dir,
    progress_bar,
    reject_entry,
)
from runtime.bundle import load_bundle, preprocess_config
from runtime.bundle_manifest import BundleManifest
from runtime.errors import CnClipError, ConfigError, DataError
from runtime.fetch import FetchPolicy
from runtime.images import PreprocessConfig
from runtime.sessions import BackendOptions
from sources.catalog import CatalogItem

__all__ = ["LOCAL", "RayPlan", "embed_catalog_ray", "plan_actors", "start_local_ray"]

LOCAL: Final = "local"
"""The address that starts a Ray cluster on this machine for the run (``--ray`` alone)."""
# Rows a Ray block: several batches, never more than a shard (a block is in one shard).
_BLOCK_BATCHES: Final = 4
# Ray gives its raylet 30 s to register (not configurable) and its GCS server 30 s to write
# its port (RAY_gcs_server_port_wait_time_s); on a loaded machine either may be late.
_LOCAL_STARTS: Final = 3
_GCS_PORT_WAIT: Final = ("RAY_gcs_server_port_wait_time_s", "120")
_LATE_STARTS: Final = ("timed out during startup", "Timed out waiting for file")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayPlan:
    """How many encoder actors, and what each asks of the cluster."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    backend: str
    threads: int

    def describe(self) -> str:
        gpus = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return (
            f"{self.actors} encoder actor(s) on {self.backend}, each "
            f"{self.cpus_per_actor:g} CPU{gpus}"
        )


def plan_actors(
    resources: dict[str, float],
    *,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0.0,
    backend: str | None = None,
) -> RayPlan:
    """The actor pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    Defaults: one actor a GPU when ``gpus_per_actor`` is set, else one per two CPUs; an
    actor asks for at most one CPU and leaves one CPU of the cluster to the tasks that
    read and preprocess images (two actors of one CPU each on two cores wait for ever
    for a third CPU). A pool the cluster cannot hold is refused, never left waiting.

    Raises:
        ConfigError: a pool the cluster cannot hold, or a count below its minimum.
    """
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    if gpus_per_actor < 0:
        raise ConfigError(f"gpus_per_actor must be 0 or more, not {gpus_per_actor}")
    if actors is None:
        actors = int(gpus // gpus_per_actor) if gpus_per_actor else int(cpus // 2)
        actors = max(1, actors)
    if isinstance(actors, bool) or actors < 1:
        raise ConfigError(f"actors must be a positive integer, not {actors!r}")
    if gpus_per_actor and actors * gpus_per_actor > gpus:
        raise ConfigError(
            f"{actors} actors of {gpus_per_actor:g} GPU need {actors * gpus_per_actor:g} GPUs; "
            f"the Ray cluster has {gpus:g}: use fewer actors (--actors), a fraction of a GPU "
            "each (--gpus-per-actor 0.5), or a cluster with GPUs"
        )
    spare = cpus - 1.0  # one CPU for the tasks that read and preprocess
    if cpus_per_actor is None:
        cpus_per_actor = min(1.0, spare / actors) if spare > 0 else 0.0
        cpus_per_actor = float(f"{cpus_per_actor:.3g}")
    if cpus_per_actor <= 0 or actors * cpus_per_actor > spare + 1e-9:
        raise ConfigError(
            f"{actors} actors of {cpus_per_actor:g} CPU leave no CPU of the cluster's "
            f"{cpus:g} to read and preprocess images: use fewer actors (--actors) or a "
            "fraction of a CPU each (--cpus-per-actor 0.5)"
        )
    if backend is None:
        backend = "onnxruntime-cuda" if gpus_per_actor else "onnxruntime"
    BackendOptions(backend=backend)  # refuses an unknown backend here, not in an actor
    return RayPlan(actors, cpus_per_actor, gpus_per_actor, backend, max(1, round(cpus_per_actor)))


def embed_catalog_ray(
    bundle_dir: str | os.PathLike[str],
    items: Sequence[CatalogItem],
    work_dir: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str],
    address: str = LOCAL,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0.0,
    backend: str | None = None,
    batch_size: int = 32,
    shard_size: int | None = None,
    progress: bool = True,
    fetch: FetchPolicy = CATALOG_FETCH,
) -> EmbeddedCatalog:
    """Embed the catalog's images into ``work_dir`` on a Ray cluster, resuming what is there.

    Args:
        bundle_dir: the model bundle, at a path every node of the cluster can read.
        items, work_dir, base_dir, batch_size, shard_size, progress, fetch: as for
            :func:`index.embed.embed_catalog`.
        address: :data:`LOCAL` starts a Ray cluster on this machine for the run and stops it
            after; ``"auto"`` joins the cluster this machine belongs to; ``"ray://HOST:10001"``
            joins one through Ray Client. An already initialised Ray is used as it is.
        actors, cpus_per_actor, gpus_per_actor, backend: the encoder pool
            (:func:`plan_actors`); ``backend`` defaults to ``onnxruntime-cuda`` for GPU actors.

    Raises:
        ConfigError: Ray is not installed, the cluster cannot be reached, or it cannot
            hold the actor pool.
        DataError, BundleError: as for :func:`index.embed.embed_catalog`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    bundle_dir = Path(bundle_dir).resolve()
    manifest = BundleManifest.read(bundle_dir)
    config = preprocess_config(manifest, bundle_dir)
    with open_work_dir(
        work_dir, items, bundle_id=manifest.bundle_id, dim=manifest.embed_dim, shard_size=shard_size
    ) as work:
        todo = work.todo
        if todo:
            with _ray(address) as ray:
                plan = plan_actors(
                    ray.cluster_resources(),
                    actors=actors,
                    cpus_per_actor=cpus_per_actor,
                    gpus_per_actor=gpus_per_actor,
                    backend=backend,
                )
                if progress:
                    print(f"embedding on Ray: {plan.describe()}", file=sys.stderr)
                stream = _pipeline(
                    ray, work, todo, bundle_dir, config, plan, batch_size, Path(base_dir), fetch
                )
                _write_as_they_arrive(work, todo, stream, progress)
        return work.joined()


# --------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def _ray(address: str) -> Iterator[Any]:
    """The ``ray`` module, connected to ``address``; a cluster started here is stopped after."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "embedding on Ray needs Ray Data: pip install 'cnclip[distributed]'"
        ) from exc
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        try:
            if address == LOCAL:
                start_local_ray(**options)
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot reach the Ray cluster at {address!r} ({exc}); start one (ray start "
                "--head), give its address (auto, ray://HOST:10001), or use --ray alone to "
                "start one on this machine"
            ) from exc
        started = True
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    # In order, so the driver holds about one shard at a time; the driver's bar is ours.
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield ray
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        if started:
            ray.shutdown()


def start_local_ray(**options: Any) -> None:
    """``ray.init(**options)`` for a cluster on this machine. Its GCS server gets 120 s
    to start rather than Ray's 30 (unless ``RAY_gcs_server_port_wait_time_s`` is set), and
    the start is tried again (up to three times) when the GCS server or the raylet was
    late all the same, as on a loaded machine; other errors are raised at once."""
    import ray

    name, wait = _GCS_PORT_WAIT
    saved = os.environ.get(name)
    os.environ.setdefault(name, wait)
    try:
        for attempt in range(1, _LOCAL_STARTS + 1):
            try:
                ray.init(**options)
                return
            except Exception as exc:
                late = any(text in str(exc) for text in _LATE_STARTS)
                if not late or attempt == _LOCAL_STARTS:
                    raise
                log.warning("the local Ray cluster did not start (%s); starting it again", exc)
                ray.shutdown()
    finally:
        if saved is None:
            os.environ.pop(name, None)


def _pipeline(
    ray: Any,
    work: WorkDir,
    todo: Sequence[Shard],
    bundle_dir: Path,
    config: PreprocessConfig,
    plan: RayPlan,
    batch_size: int,
    base_dir: Path,
    fetch: FetchPolicy,
) -> Iterator[dict[str, Any]]:
    """Batches of ``{"pos", "vector", "error"}`` for the items of ``todo``, in catalog order."""
    import pyarrow as pa

    block_rows = batch_size * _BLOCK_BATCHES
    blocks = []
    for shard in todo:
        for start in range(shard.start, shard.stop, block_rows):
            stop = min(start + block_rows, shard.stop)
            blocks.append(
                pa.table(
                    {
                        "pos": pa.array(range(start, stop), pa.int64()),
                        "image": [item.image for item in work.items[start:stop]],
                    }
                )
            )
    dataset = ray.data.from_arrow(blocks)
    dataset = dataset.map_batches(
        _preprocess,
        fn_kwargs={"config": config, "base_dir": str(base_dir), "fetch": fetch},
        batch_format="numpy",
        batch_size=batch_size,
    )
    dataset = dataset.map_batches(
        _Encoder,
        fn_constructor_kwargs={
            "bundle_dir": str(bundle_dir),
            "backend": plan.backend,
            "threads": plan.threads,
        },
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
        batch_format="numpy",
        batch_size=batch_size,
    )
    try:
        # No prefetch: Ray holds a fetched block back until the next ones are in, and a
        # shard whose rows sit on the driver behind a slow block would not be written.
        yield from dataset.iter_batches(batch_format="numpy", batch_size=None, prefetch_batches=0)
    except Exception as exc:
        cause = _our_error(exc)
        if cause is not None:
            raise cause from exc
        raise


def _our_error(exc: BaseException) -> CnClipError | None:
    """The cnclip error behind a Ray error (a bundle an actor could not open, ...)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, CnClipError):
            return current
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def _preprocess(
    batch: dict[str, npt.NDArray[Any]],
    *,
    config: PreprocessConfig,
    base_dir: str,
    fetch: FetchPolicy,
) -> dict[str, npt.NDArray[Any]]:
    """A Ray task: decode and preprocess a batch; a reject keeps zeros and says why."""
    size = config.image_size
    pixels = np.zeros((len(batch["pos"]), 3, size, size), dtype=np.float32)
    errors = np.full(len(batch["pos"]), "", dtype=object)
    with httpx.Client(timeout=fetch.timeout_s, headers={"User-Agent": "cnclip"}) as http:
        images = Images(Path(base_dir), fetch, http)
        for row, image in enumerate(batch["image"].tolist()):
            loaded = load_item(CatalogItem("", str(image), "", {}), images=images, config=config)
            if isinstance(loaded, str):
                errors[row] = loaded
            else:
                pixels[row] = loaded
    return {"pos": batch["pos"], "pixels": pixels, "error": errors}


class _Encoder:
    """A Ray actor: one bundle session, encoding the batches of the preprocessing tasks."""

    def __init__(self, bundle_dir: str, backend: str, threads: int) -> None:
        options = BackendOptions(
            backend=backend, threads=threads if backend == "onnxruntime" else None
        )
        self.bundle = load_bundle(bundle_dir, options=options)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        errors = batch["error"].copy()
        usable = errors == ""
        vectors = np.zeros((len(errors), self.bundle.embed_dim), dtype=np.float32)
        if usable.any():
            encoded = self.bundle.encode_pixels(np.ascontiguousarray(batch["pixels"][usable]))
            vectors[usable] = checked_output(encoded, int(usable.sum()), self.bundle)
        errors[usable & ~finite_rows(vectors)] = NON_FINITE
        return {"pos": batch["pos"], "vector": vectors, "error": errors}


# --------------------------------------------------------------------------- driver


def _write_as_they_arrive(
    work: WorkDir, todo: Sequence[Shard], stream: Iterator[dict[str, Any]], progress: bool
) -> None:
    """Collect the rows of each shard and write it as soon as its last row is in."""
    shard_of = {shard.index: shard for shard in todo}
    rows: dict[int, dict[int, tuple[npt.NDArray[np.float32], str]]] = {}
    with progress_bar(work, progress) as bar:
        rejected = work.rejected
        for batch in stream:
            vectors, errors = batch["vector"], batch["error"].tolist()
            for row, pos in enumerate(batch["pos"].tolist()):
                shard = shard_of[pos // work.shard_size]
                rows.setdefault(shard.index, {})[pos] = (vectors[row], str(errors[row]))
                if errors[row]:
                    rejected += 1
                bar.update(1)
                if len(rows[shard.index]) == len(shard):
                    _write(work, shard, rows.pop(shard.index))
            bar.set_postfix(rejects=rejected, refresh=False)
    if rows or any(shard.index not in work.done for shard in todo):
        raise DataError(
            f"{work.path}: the Ray job ended before every shard was complete; run again to resume"
        )


def _write(
    work: WorkDir, shard: Shard, rows: dict[int, tuple[npt.NDArray[np.float32], str]]
) -> None:
    ids: list[str] = []
    vectors: list[npt.NDArray[np.float32]] = []
    rejects: list[dict[str, str]] = []
    for pos in range(shard.start, shard.stop):
        vector, error = rows[pos]
        item = work.items[pos]
        if error:
            entry = reject_entry(item, error)
            rejects.append(entry)
            work.log_reject(entry)
        else:
            ids.append(item.id)
            vectors.append(vector)
    block = np.stack(vectors) if vectors else np.zeros((0, work.dim), dtype=np.float32)
    work.write_shard(shard, ids, np.ascontiguousarray(block, dtype=np.float32), rejects)
