"""Dynamic batching: concurrent requests for one model version share one ONNX Runtime run.

``await batcher.submit(version, array)`` queues one input (e.g. a ``[H, W, C]`` image) and returns
its output row. Each model version gets a lane: a bounded queue and a worker task that takes the
first waiting input, gathers more for at most ``max_queue_delay_ms`` (or until
``max_batch_size``), stacks them, runs ``version.infer(batch)`` in a thread (ONNX Runtime releases
the GIL, so decoding and the event loop go on meanwhile) and hands each caller its own row.
While one batch runs, the next one fills up, so under load batches grow without any delay.

When a lane's queue holds ``max_queue_size`` inputs, ``submit`` raises
:class:`~service.errors.Overloaded` (HTTP 503 with ``Retry-After``) instead of queueing more.
:meth:`Batcher.close` stops new work and drains every queue: requests already accepted finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import NotReady, Overloaded
from service.metrics import Metrics

logger = logging.getLogger("convserve.batching")


class Batchable(Protocol):
    """What the batcher needs of a model version."""

    name: str
    version: int

    @property
    def key(self) -> str: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass
class _Item:
    array: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued_at: float


_STOP = object()


class _Lane:
    """The queue and worker of one model version."""

    def __init__(self, batcher: Batcher, version: Batchable) -> None:
        self.batcher = batcher
        self.version = version
        self.labels = (version.name, str(version.version))
        self.metrics = batcher.metrics.model(*self.labels) if batcher.metrics else None
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.pending = 0  # items queued, not yet taken into a batch
        self.task = asyncio.get_running_loop().create_task(self._work(), name=version.key)

    async def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """Collect a batch starting with ``first``; True means stop after it."""
        items, loop = [first], asyncio.get_running_loop()
        deadline = loop.time() + self.batcher.max_queue_delay_ms / 1000.0
        while len(items) < self.batcher.max_batch_size:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if nxt is _STOP:
                return items, True
            assert isinstance(nxt, _Item)
            items.append(nxt)
        return items, False

    async def _work(self) -> None:
        while True:
            first = await self.queue.get()
            if first is _STOP:
                return
            assert isinstance(first, _Item)
            items, stop = await self._gather(first)
            self.pending -= len(items)
            try:
                await self._run(items)
            except Exception as exc:  # never let the lane die with callers waiting
                logger.exception("batch for %s failed", self.version.key)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
            if stop:
                return

    async def _run(self, items: list[_Item]) -> None:
        metrics, start = self.metrics, time.perf_counter()
        live = [item for item in items if not item.future.done()]  # skip cancelled callers
        if metrics is not None:
            metrics.queue_depth.set(self.pending)
            for item in items:
                metrics.queue.observe(start - item.queued_at)
        if not live:
            return
        try:
            batch = np.stack([item.array for item in live])
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.batcher.executor, self.version.infer, batch)
            if len(outputs) != len(live):
                raise RuntimeError(f"{self.version.key} returned {len(outputs)} rows for a batch "
                                   f"of {len(live)}")
        except Exception as exc:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if metrics is not None:
            metrics.inference.observe(time.perf_counter() - start)
            metrics.batch_size.observe(len(live))
            metrics.inference_count.inc(len(live))
            metrics.exec_count.inc()
        for item, row in zip(live, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(row)


class Batcher:
    """Gathers inputs per model version into batches. Create and use inside one event loop."""

    def __init__(self, *, max_batch_size: int, max_queue_delay_ms: float, max_queue_size: int,
                 retry_after_s: int = 1, metrics: Metrics | None = None,
                 infer_threads: int = 4) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, not {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, not {max_queue_delay_ms}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, not {max_queue_size}")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ms = max_queue_delay_ms
        self.max_queue_size = max_queue_size
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(infer_threads, thread_name_prefix="infer")
        self._lanes: dict[int, _Lane] = {}
        self._closing = False

    def _lane(self, version: Batchable) -> _Lane:
        lane = self._lanes.get(id(version))
        if lane is None or lane.version is not version or lane.task.done():
            lane = self._lanes[id(version)] = _Lane(self, version)
        return lane

    async def submit(self, version: Batchable, array: np.ndarray) -> np.ndarray:
        """Queue one input for ``version`` and wait for its output row.

        Raises:
            Overloaded: the version's queue is full (HTTP 503, Retry-After).
            NotReady: the batcher is shutting down.
        """
        if self._closing:
            raise NotReady("the service is shutting down; retry on another replica")
        lane = self._lane(version)
        if lane.pending >= self.max_queue_size:
            if lane.metrics is not None:
                lane.metrics.rejected.inc()
            raise Overloaded(
                f"model {version.key} has {lane.pending} images queued (the limit is "
                f"{self.max_queue_size}); retry after {self.retry_after_s} s",
                headers={"Retry-After": str(self.retry_after_s)})
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        lane.pending += 1
        lane.queue.put_nowait(_Item(array, future, time.perf_counter()))
        if lane.metrics is not None:
            lane.metrics.queue_depth.set(lane.pending)
        return await future

    def queue_depth(self, version: Batchable) -> int:
        """Inputs waiting for ``version``."""
        lane = self._lanes.get(id(version))
        return lane.pending if lane is not None and lane.version is version else 0

    async def retire(self, version: Batchable) -> None:
        """Finish what is queued for ``version`` (removed by a reload), then drop its lane."""
        lane = self._lanes.pop(id(version), None)
        if lane is not None and lane.version is version:
            lane.queue.put_nowait(_STOP)
            await lane.task

    async def close(self) -> None:
        """Refuse new inputs, finish every queued one, stop the workers."""
        self._closing = True
        lanes = list(self._lanes.values())
        self._lanes.clear()
        for lane in lanes:
            lane.queue.put_nowait(_STOP)
        await asyncio.gather(*(lane.task for lane in lanes), return_exceptions=True)
        self.executor.shutdown(wait=True)
