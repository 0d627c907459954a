"""Dynamic batching: concurrent requests for one model version share one ONNX Runtime run.

``await batcher.submit(version, array)`` queues one input (e.g. a ``[H, W, C]`` image) and returns
its output row. Each model version gets a lane: a bounded queue and ``instances`` inference
threads (Triton's instance count). A free thread takes the first waiting input, gathers more for
at most ``max_queue_delay_ms`` (or until ``max_batch_size``, or the version's own ``max_batch``
when smaller), stacks them, runs
``version.infer(batch)`` (ONNX Runtime releases the GIL) and hands each caller its own row on the
event loop. While runs are busy the queue fills, so under load batches grow without any delay.

The threads take their next batch themselves, without waiting for the event loop (which may be
busy decoding or parsing a request). On a CPU, two single-threaded runs keep two cores busy with
no synchronisation between them, where one two-threaded run stalls whenever decoding takes one of
its cores (ONNX Runtime's threads wait for each other at the end of every parallel step).

When a lane's queue holds ``max_queue_size`` inputs, ``submit`` raises
:class:`~service.errors.Overloaded` (HTTP 503 with ``Retry-After``) instead of queueing more.
:meth:`Batcher.close` stops new work and drains every queue: requests already accepted finish.

A lane lives exactly as long as its version is served: :meth:`Batcher.open` creates it (the
engine, before publishing the version), :meth:`Batcher.retire` ends it (the engine, in the step
that unpublishes the version), and nothing else does. A submit for a version without a lane (a
request that took the version before a reload removed it) is refused with a retryable 503; it
never brings the lane or its threads back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, overload

import numpy as np

from service import tracing
from service.errors import NotReady, Overloaded
from service.metrics import Metrics

logger = logging.getLogger("convserve.batching")
T = TypeVar("T")


class Batchable(Protocol):
    """What the batcher needs of a model version."""

    name: str
    version: int
    max_batch: int | None  # the version's own cap on the batch size, if any

    @property
    def key(self) -> str: ...

    def infer(self, batch: np.ndarray, alone: bool = False) -> np.ndarray:
        """One output row per input; ``alone``: nothing else runs or waits (use every core)."""

    def warm_up_thread(self) -> None:
        """Called once on each inference thread before its first batch."""


@dataclass
class _Item:
    array: np.ndarray
    future: asyncio.Future[Any]
    queued_at: float
    finish: Callable[[np.ndarray], Any] | None  # applied to the row in the inference thread
    started: float = 0.0  # its run's start and end (perf_counter), and the run's batch size:
    ended: float = 0.0  # the queue and inference spans of a traced request
    batch: int = 0


class _Lane:
    """The queue and inference threads of one model version."""

    def __init__(self, batcher: Batcher, version: Batchable) -> None:
        self.batcher = batcher
        self.version = version
        self.loop = asyncio.get_running_loop()
        self.metrics = batcher.metrics.model(version.name, str(version.version)) \
            if batcher.metrics else None  # ended by the engine once the version is retired
        self.max_batch = min(batcher.max_batch_size, version.max_batch or batcher.max_batch_size)
        self.items: collections.deque[_Item] = collections.deque()
        self.changed = threading.Condition()  # guards the five below
        self.pending = 0  # items queued, not yet taken into a batch
        self.running = 0  # batches in flight
        self.gathering = False  # a thread is collecting a batch
        self.stopping = False
        self.warmed = [threading.Event() for _ in range(batcher.instances)]
        self.threads = [threading.Thread(target=self._work, args=(warmed,), daemon=True,
                                         name=f"infer-{version.key}-{i}")
                        for i, warmed in enumerate(self.warmed)]
        for thread in self.threads:
            thread.start()

    def put(self, items: list[_Item]) -> None:
        """Queue inputs, all at once (event loop side)."""
        with self.changed:
            self.items.extend(items)
            self.pending += len(items)
            if self.gathering:  # the gathering thread waits for more: it must hear of them
                self.changed.notify_all()
            else:  # one idle thread; it wakes the next if it leaves inputs behind
                self.changed.notify()
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.pending)

    async def stop(self) -> None:
        """Let the threads finish what is queued, then end them."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        for thread in self.threads:
            await asyncio.to_thread(thread.join)

    def _take(self) -> tuple[list[_Item], bool] | None:
        """The next batch and whether it runs alone (inference thread side); None once stopping
        with nothing queued.

        One thread gathers at a time, so a batch waiting for ``max_queue_delay_ms`` is not
        split with an idle instance.
        """
        delay = self.batcher.max_queue_delay_ms / 1000.0
        with self.changed:
            while self.gathering or not self.items:
                if self.stopping and not self.items:
                    return None
                self.changed.wait()
            self.gathering = True
            items = [self.items.popleft()]
            deadline = time.monotonic() + delay
            while len(items) < self.max_batch:
                if self.items:
                    items.append(self.items.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stopping:
                    break
                self.changed.wait(remaining)
            self.gathering = False
            self.pending -= len(items)
            alone = not self.items and self.running == 0
            self.running += 1
            if self.stopping:  # every thread must see it, those waiting behind `gathering` too
                self.changed.notify_all()
            elif self.items:  # the next thread may gather
                self.changed.notify()
            return items, alone

    def wait_warm(self) -> None:
        """Block until every thread has warmed up (inference thread side of ``Batcher.open``)."""
        for warmed in self.warmed:
            warmed.wait()

    def _work(self, warmed: threading.Event) -> None:
        try:
            self.version.warm_up_thread()
        except Exception:  # the first batch will fail with the same error, to its callers
            logger.exception("warming up an inference thread of %s failed", self.version.key)
        finally:
            warmed.set()
        while (taken := self._take()) is not None:
            items, alone = taken
            try:
                self._run(items, alone)
            except Exception as exc:  # never leave callers waiting
                logger.exception("batch for %s failed", self.version.key)
                self._post(_fail, items, exc)
            finally:
                with self.changed:
                    self.running -= 1

    def _run(self, items: list[_Item], alone: bool) -> None:
        metrics, start = self.metrics, time.perf_counter()
        live = [item for item in items if not item.future.done()]  # skip cancelled callers
        if metrics is not None:
            metrics.queue_depth.set(self.pending)
            for item in items:
                metrics.queue.observe(start - item.queued_at)
        if not live:
            return
        try:
            outputs = self.version.infer(np.stack([item.array for item in live]), alone)
            if len(outputs) != len(live):
                raise RuntimeError(f"{self.version.key} returned {len(outputs)} rows for a batch "
                                   f"of {len(live)}")
        except Exception as exc:
            self._post(_fail, live, exc)
            return
        ended = time.perf_counter()
        if metrics is not None:
            metrics.ran(len(live), ended - start)
        for item in live:
            item.started, item.ended, item.batch = start, ended, len(live)
        results = [_finish(item, row) for item, row in zip(live, outputs, strict=True)]
        self._post(_deliver, live, results)

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback(*args)`` on the event loop (callers' futures live there)."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _finish(item: _Item, row: np.ndarray) -> Any:
    if item.finish is None:
        return row
    try:
        return item.finish(row)
    except Exception as exc:  # this caller's own failure
        return _Failed(exc)


@dataclass
class _Failed:
    error: Exception


def _deliver(items: list[_Item], results: list[Any]) -> None:
    for item, result in zip(items, results, strict=True):
        if item.future.done():
            continue
        if isinstance(result, _Failed):
            item.future.set_exception(result.error)
        else:
            item.future.set_result(result)


def _fail(items: list[_Item], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)


class Batcher:
    """Gathers inputs per model version into batches. Create and use inside one event loop."""

    def __init__(self, *, max_batch_size: int, max_queue_delay_ms: float, max_queue_size: int,
                 retry_after_s: int = 1, metrics: Metrics | None = None,
                 instances: int = 1) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, not {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, not {max_queue_delay_ms}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, not {max_queue_size}")
        if instances < 1:
            raise ValueError(f"instances must be >= 1, not {instances}")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ms = max_queue_delay_ms
        self.max_queue_size = max_queue_size
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.instances = instances
        self._lanes: dict[int, _Lane] = {}
        self._closing = False

    def _lane(self, version: Batchable) -> _Lane:
        """``version``'s open lane.

        Raises:
            NotReady: it has none: not opened, or retired by a reload (retryable 503).
        """
        lane = self._lanes.get(id(version))
        if lane is None or lane.version is not version or lane.stopping:
            raise NotReady(f"model {version.key} is no longer served (a reload removed or "
                           "replaced it while this request waited); retry")
        return lane

    async def open(self, version: Batchable) -> None:
        """Create ``version``'s lane and start its inference threads, then wait until each has
        run ``version.warm_up_thread()``. Opening an open version does nothing."""
        if self._closing:
            raise NotReady("the service is shutting down; retry on another replica")
        lane = self._lanes.get(id(version))
        if lane is None or lane.version is not version or lane.stopping:
            lane = self._lanes[id(version)] = _Lane(self, version)
        await asyncio.to_thread(lane.wait_warm)

    @overload
    async def submit(self, version: Batchable, array: np.ndarray) -> np.ndarray: ...

    @overload
    async def submit(self, version: Batchable, array: np.ndarray,
                     finish: Callable[[np.ndarray], T]) -> T: ...

    async def submit(self, version: Batchable, array: np.ndarray,
                     finish: Callable[[np.ndarray], Any] | None = None) -> Any:
        """Queue one input for ``version`` and wait for its output row, or ``finish(row)``.

        ``finish`` runs in the inference thread, off the event loop: put per-row work there
        (e.g. ranking classes with NumPy).

        Raises:
            Overloaded: the version's queue is full (HTTP 503, Retry-After).
            NotReady: the batcher is shutting down.
        """
        return (await self.submit_many(version, [array], finish))[0]

    async def submit_many(self, version: Batchable, arrays: list[np.ndarray],
                          finish: Callable[[np.ndarray], Any] | None = None) -> list[Any]:
        """:meth:`submit` for several inputs, queued together (one request's images stay in
        one batch where they fit) or not at all; results in order.

        More inputs than ``max_queue_size`` could never be queued together: they go in several
        runs of at most ``max_queue_size`` each, one after the other, so a request that an idle
        server can answer never gets a 503 that no retry could cure.

        Raises:
            Overloaded: they do not all fit in the version's queue (HTTP 503, Retry-After).
            NotReady: the batcher is shutting down.
        """
        if len(arrays) > self.max_queue_size:
            results: list[Any] = []
            for start in range(0, len(arrays), self.max_queue_size):
                part = arrays[start:start + self.max_queue_size]
                results += await self.submit_many(version, part, finish)
            return results
        if self._closing:
            raise NotReady("the service is shutting down; retry on another replica")
        lane = self._lane(version)
        if lane.pending + len(arrays) > self.max_queue_size:
            if lane.metrics is not None:
                lane.metrics.rejected.inc()
            raise Overloaded(
                f"model {version.key} has {lane.pending} images queued and the limit is "
                f"{self.max_queue_size}; retry after {self.retry_after_s} s",
                headers={"Retry-After": str(self.retry_after_s)})
        now = time.perf_counter()
        items = [_Item(array, lane.loop.create_future(), now, finish) for array in arrays]
        lane.put(items)
        if len(items) == 1:
            results = [await items[0].future]
        else:
            results = list(await asyncio.gather(*(item.future for item in items)))
        if tracing.TRACER is not None:  # one queue and one inference span per run
            for run in sorted({(i.queued_at, i.started, i.ended, i.batch) for i in items}):
                tracing.batch_steps(*run)
        return results

    def queue_depth(self, version: Batchable) -> int:
        """Inputs waiting for ``version``."""
        lane = self._lanes.get(id(version))
        return lane.pending if lane is not None and lane.version is version else 0

    def retire(self, version: Batchable) -> asyncio.Future[None]:
        """Close ``version``'s lane now (a new submit is refused from this call on) and return
        what to await for its queue to drain and its threads and metric series to end."""
        lane = self._lanes.get(id(version))
        if lane is None or lane.version is not version:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        del self._lanes[id(version)]
        with lane.changed:
            lane.stopping = True
            lane.changed.notify_all()
        return asyncio.ensure_future(lane.stop())

    async def close(self) -> None:
        """Refuse new inputs, finish every queued one, stop the threads."""
        self._closing = True
        lanes = list(self._lanes.values())
        self._lanes.clear()
        await asyncio.gather(*(lane.stop() for lane in lanes))

