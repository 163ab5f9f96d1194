"""The dynamic batcher on its own: grouping, per-caller results, errors, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from service.batcher import DynamicBatcher, pad_token_rows
from service.errors import DeadlineError, OverloadedError
from service.metrics import Metrics


def doubling(calls: list[int], gate: threading.Event | None = None):  # type: ignore[no-untyped-def]
    def run(items: Sequence[float]) -> np.ndarray:
        if gate is not None:
            gate.wait(5)
        calls.append(len(items))
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return np.array([[2.0 * x] for x in items], dtype=np.float32)

    return run


def test_concurrent_submits_are_batched_and_answered_in_order() -> None:
    calls: list[int] = []

    async def main() -> list[float]:
        batcher = DynamicBatcher(
            "t", doubling(calls), max_batch_size=4, max_wait_ms=50, max_queue=100, metrics=Metrics()
        )
        batcher.start()
        deadline = time.perf_counter() + 10
        rows = await asyncio.gather(*(batcher.submit(float(i), deadline) for i in range(10)))
        await batcher.stop()
        return [float(r[0]) for r in rows]

    assert asyncio.run(main()) == [2.0 * i for i in range(10)]
    assert calls == [4, 4, 2]


def test_a_lone_request_waits_at_most_max_wait() -> None:
    calls: list[int] = []

    async def main() -> float:
        batcher = DynamicBatcher(
            "t", doubling(calls), max_batch_size=64, max_wait_ms=30, max_queue=10, metrics=Metrics()
        )
        batcher.start()
        start = time.perf_counter()
        await batcher.submit(1.0, start + 10)
        took = time.perf_counter() - start
        await batcher.stop()
        return took

    took = asyncio.run(main())
    assert 0.025 <= took < 1.0 and calls == [1]


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on() -> None:
    calls: list[int] = []

    async def main() -> None:
        batcher = DynamicBatcher(
            "t", doubling(calls), max_batch_size=8, max_wait_ms=20, max_queue=10, metrics=Metrics()
        )
        batcher.start()
        deadline = time.perf_counter() + 10
        results = await asyncio.gather(
            batcher.submit(1.0, deadline), batcher.submit(-1.0, deadline), return_exceptions=True
        )
        assert all(isinstance(r, ValueError) for r in results)
        assert float((await batcher.submit(3.0, deadline))[0]) == 6.0
        await batcher.stop()

    asyncio.run(main())


def test_a_backend_returning_too_few_rows_fails_that_batch_only() -> None:
    answers = {"short": True}

    def run(items: Sequence[float]) -> np.ndarray:
        rows = np.array([[2.0 * x] for x in items], dtype=np.float32)
        return rows[:-1] if answers.pop("short", False) else rows

    async def main() -> None:
        batcher = DynamicBatcher(
            "t", run, max_batch_size=8, max_wait_ms=20, max_queue=10, metrics=Metrics()
        )
        batcher.start()
        deadline = time.perf_counter() + 10
        results = await asyncio.gather(
            batcher.submit(1.0, deadline), batcher.submit(2.0, deadline), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) and "1 rows for 2" in str(r) for r in results)
        # The worker is alive: the next request is answered, not timed out.
        assert float((await batcher.submit(3.0, time.perf_counter() + 2))[0]) == 6.0
        await batcher.stop()

    asyncio.run(main())


def test_a_worker_that_dies_is_restarted_and_counted() -> None:
    calls: list[int] = []
    metrics = Metrics()

    async def main() -> None:
        batcher = DynamicBatcher(
            "t", doubling(calls), max_batch_size=8, max_wait_ms=5, max_queue=10, metrics=metrics
        )
        gather = batcher._gather
        failures = [RuntimeError("the worker's own bug")]

        async def flaky() -> list:  # type: ignore[type-arg]
            if failures:
                raise failures.pop()
            return await gather()

        batcher._gather = flaky  # type: ignore[method-assign]
        batcher.start()
        assert float((await batcher.submit(4.0, time.perf_counter() + 2))[0]) == 8.0
        await batcher.stop()

    asyncio.run(main())
    assert metrics.worker_restarts.labels(tower="t")._value.get() == 1


def test_full_queue_and_expired_deadlines() -> None:
    calls: list[int] = []
    gate = threading.Event()

    async def main() -> None:
        batcher = DynamicBatcher(
            "t",
            doubling(calls, gate),
            max_batch_size=1,
            max_wait_ms=0,
            max_queue=2,
            metrics=Metrics(),
        )
        batcher.start()
        far = time.perf_counter() + 10
        busy = asyncio.ensure_future(batcher.submit(1.0, far))  # held in run() by the gate
        await asyncio.sleep(0.05)
        short = asyncio.ensure_future(batcher.submit(2.0, time.perf_counter() + 0.05))
        queued = asyncio.ensure_future(batcher.submit(3.0, far))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await batcher.submit(4.0, far)
        with pytest.raises(DeadlineError):
            await short
        gate.set()
        assert float((await busy)[0]) == 2.0 and float((await queued)[0]) == 6.0
        await batcher.stop()

    asyncio.run(main())
    assert calls == [1, 1]  # the expired request was never computed


def test_pad_token_rows() -> None:
    out = pad_token_rows([np.array([1, 2, 3]), np.array([4])], pad_id=0)
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]] and out.dtype == np.int64
