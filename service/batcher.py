"""Dynamic batching across requests, one batcher per tower.

Requests wait in a bounded queue; a worker task takes the oldest, gathers more until
``max_batch_size`` or until the oldest has waited ``max_wait_ms`` (Triton's
``max_queue_delay_microseconds``), and runs the batch on its own inference thread,
off the event loop. While one batch runs the next gathers, so under load batches
fill without any wait. A full queue answers :class:`OverloadedError` (503 + Retry-After);
a request whose deadline passes while it waits is answered :class:`DeadlineError`
(504) and never computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from service.errors import DeadlineError, OverloadedError
from service.metrics import Metrics

Item = TypeVar("Item")
Rows = npt.NDArray[np.float32]
log = logging.getLogger(__name__)


@dataclass
class _Pending(Generic[Item]):
    item: Item
    deadline: float
    future: asyncio.Future[Rows]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[Item]):
    """``await batcher.submit(item, deadline)`` -> the item's row of ``run(items)``.

    ``run`` takes a list of items and returns ``[len(items), d]``; it runs on one
    dedicated thread, so it never runs twice at once. A ``run`` that raises, or returns
    another number of rows, fails that batch's requests and no others; a worker task
    that dies for any other reason is logged and started again.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[Sequence[Item]], Rows],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Pending[Item]] = asyncio.Queue(maxsize=max_queue)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encode-{name}")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work(), name=self.name)
            self._task.add_done_callback(self._restart)

    def _restart(self, task: asyncio.Task[None]) -> None:
        """A worker that ended on its own (not by :meth:`stop`) is logged and restarted."""
        if task is not self._task or task.cancelled():
            return
        log.error(
            "the %s batcher's worker died; restarting it", self.name, exc_info=task.exception()
        )
        self._metrics.worker_restarts.labels(tower=self.name).inc()
        self._task = None
        self.start()

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(OverloadedError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, item: Item, deadline: float) -> Rows:
        """The item's row; raises OverloadedError when the queue is full and DeadlineError
        when ``deadline`` (``time.perf_counter()`` seconds) passes first."""
        if self._task is None:
            raise OverloadedError(f"the {self.name} encoder is not running")
        future: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, deadline, future))
        except asyncio.QueueFull:
            self._metrics.rejected.labels(reason="queue_full").inc()
            raise OverloadedError(
                f"the {self.name} encoder queue is full ({self._queue.maxsize} waiting); "
                "retry shortly"
            ) from None
        self._metrics.queue_depth.labels(tower=self.name).set(self._queue.qsize())
        remaining = deadline - time.perf_counter()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(remaining, 0.0))
        except TimeoutError:
            future.cancel()  # the worker skips it if it has not started
            self._metrics.rejected.labels(reason="deadline").inc()
            raise DeadlineError(
                f"the request did not finish within its deadline ({self.name} encoder busy)"
            ) from None

    async def _gather(self) -> list[_Pending[Item]]:
        first = await self._queue.get()
        batch = [first]
        # The wait counts from the oldest request's arrival, as Triton's queue delay does.
        until = first.enqueued + self.max_wait
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = until - time.perf_counter()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=left))
            except TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self._metrics.queue_depth.labels(tower=self.name).set(self._queue.qsize())
            now = time.perf_counter()
            live = []
            for pending in batch:
                if pending.future.done():  # cancelled: its caller gave up
                    continue
                if pending.deadline <= now:
                    self._metrics.rejected.labels(reason="deadline").inc()
                    pending.future.set_exception(
                        DeadlineError("the request's deadline passed while it was queued")
                    )
                    continue
                self._metrics.queue_wait.labels(tower=self.name).observe(now - pending.enqueued)
                live.append(pending)
            if not live:
                continue
            self._metrics.batch_size.labels(tower=self.name).observe(len(live))
            start = time.perf_counter()
            try:
                rows = await loop.run_in_executor(self._executor, self._run, [p.item for p in live])
                if len(rows) != len(live):
                    raise RuntimeError(
                        f"the {self.name} encoder returned {len(rows)} rows for {len(live)} inputs"
                    )
            except Exception as exc:  # handed to each caller, the worker goes on
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            self._metrics.encode_time.labels(tower=self.name).observe(time.perf_counter() - start)
            for pending, row in zip(live, rows, strict=True):
                if not pending.future.done():
                    pending.future.set_result(row)


def pad_token_rows(rows: Sequence[Any], pad_id: int) -> npt.NDArray[np.int64]:
    """1-D token id arrays -> ``[n, longest]`` padded with ``pad_id``."""
    longest = max(len(r) for r in rows)
    out = np.full((len(rows), longest), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
