"""service.batching.Batcher: gathering, per-caller rows, limits, errors, draining."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from service.batching import Batcher
from service.errors import NotReady, Overloaded
from service.metrics import Metrics


@dataclass(eq=False)
class RowSums:
    """A model version whose output row is the sum of its input; it records each batch."""

    name: str = "sums"
    version: int = 1
    seconds: float = 0.0  # how long one run takes
    fail: bool = False
    batches: list[int] = field(default_factory=list)
    alone: list[bool] = field(default_factory=list)  # each run's flag
    max_batch: int | None = None
    warm_up_seconds: float = 0.0
    events: list[tuple[str, str]] = field(default_factory=list)  # ("warm" | "infer", thread)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    def warm_up_thread(self) -> None:
        self.events.append(("warm", threading.current_thread().name))
        time.sleep(self.warm_up_seconds)

    def infer(self, batch: np.ndarray, alone: bool = False) -> np.ndarray:
        self.events.append(("infer", threading.current_thread().name))
        self.batches.append(len(batch))
        self.alone.append(alone)
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("the graph failed")
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)


def _batcher(**options: float) -> Batcher:
    settings = {"max_batch_size": 8, "max_queue_delay_ms": 20.0, "max_queue_size": 64,
                "metrics": Metrics()} | options
    return Batcher(**settings)  # type: ignore[arg-type]


def test_concurrent_inputs_share_a_run_and_get_their_own_rows() -> None:
    async def scenario() -> tuple[list[np.ndarray], list[int]]:
        batcher, model = _batcher(), RowSums()
        await batcher.open(model)
        rows = await asyncio.gather(*(batcher.submit(model, np.full((2, 2), i)) for i in range(5)))
        await batcher.close()
        return rows, model.batches

    rows, batches = asyncio.run(scenario())
    assert [int(row[0]) for row in rows] == [0, 4, 8, 12, 16]
    assert batches == [5]


def test_max_batch_size_splits_runs() -> None:
    async def scenario() -> list[int]:
        batcher, model = _batcher(max_batch_size=4), RowSums()
        await batcher.open(model)
        await asyncio.gather(*(batcher.submit(model, np.ones(3)) for _ in range(10)))
        await batcher.close()
        return model.batches

    assert asyncio.run(scenario()) == [4, 4, 2]


def test_batches_grow_while_a_run_is_busy_even_without_delay() -> None:
    async def scenario() -> list[int]:
        batcher, model = _batcher(max_queue_delay_ms=0.0), RowSums(seconds=0.05)
        await batcher.open(model)
        first = asyncio.ensure_future(batcher.submit(model, np.ones(1)))
        await asyncio.sleep(0.01)  # the first run is busy now
        rest = [batcher.submit(model, np.ones(1)) for _ in range(6)]
        await asyncio.gather(first, *rest)
        await batcher.close()
        return model.batches

    assert asyncio.run(scenario()) == [1, 6]


def test_a_lone_input_waits_at_most_the_delay() -> None:
    async def scenario(delay_ms: float) -> float:
        batcher, model = _batcher(max_queue_delay_ms=delay_ms), RowSums()
        await batcher.open(model)
        start = time.perf_counter()
        await batcher.submit(model, np.ones(1))
        elapsed = time.perf_counter() - start
        await batcher.close()
        return elapsed

    assert asyncio.run(scenario(150.0)) >= 0.14
    assert asyncio.run(scenario(0.0)) < 0.14


def test_full_queue_raises_overloaded_with_retry_after() -> None:
    async def scenario() -> tuple[Overloaded, list[int], int]:
        metrics = Metrics()
        batcher = _batcher(max_queue_size=3, retry_after_s=4, metrics=metrics)
        model = RowSums()
        await batcher.open(model)
        outcomes = await asyncio.gather(*(batcher.submit(model, np.ones(1)) for _ in range(5)),
                                        return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, Overloaded)]
        again = await batcher.submit(model, np.ones(1))  # recovers once the queue drains
        await batcher.close()
        return errors[0], [len(errors)], int(again[0])

    error, count, again = asyncio.run(scenario())
    assert count == [2] and again == 1
    assert error.headers == {"Retry-After": "4"} and "limit is 3" in error.message


def test_a_failing_run_fails_its_callers_only() -> None:
    async def scenario() -> tuple[list[object], np.ndarray]:
        batcher, model = _batcher(), RowSums(fail=True)
        await batcher.open(model)
        failed = await asyncio.gather(*(batcher.submit(model, np.ones(1)) for _ in range(3)),
                                      return_exceptions=True)
        model.fail = False
        row = await batcher.submit(model, np.ones(2))
        await batcher.close()
        return failed, row

    failed, row = asyncio.run(scenario())
    assert all(isinstance(f, RuntimeError) for f in failed) and int(row[0]) == 2


def test_versions_have_separate_lanes() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        batcher, one, two = _batcher(), RowSums(version=1), RowSums(version=2)
        await batcher.open(one)
        await batcher.open(two)
        await asyncio.gather(*(batcher.submit(v, np.ones(1)) for v in (one, two, one, two, one)))
        await batcher.close()
        return one.batches, two.batches

    assert asyncio.run(scenario()) == ([3], [2])


def test_close_drains_the_queue_then_refuses() -> None:
    async def scenario() -> tuple[list[int], bool]:
        batcher, model = _batcher(max_queue_delay_ms=100.0, max_batch_size=2), RowSums()
        await batcher.open(model)
        waiting = [asyncio.ensure_future(batcher.submit(model, np.full(1, i))) for i in range(5)]
        await asyncio.sleep(0)  # all queued
        await batcher.close()
        rows = [int((await w)[0]) for w in waiting]
        try:
            await batcher.submit(model, np.ones(1))
        except NotReady:
            return rows, True
        return rows, False

    assert asyncio.run(scenario()) == ([0, 1, 2, 3, 4], True)


def test_retire_finishes_what_was_queued() -> None:
    async def scenario() -> list[int]:
        batcher, model = _batcher(max_queue_delay_ms=100.0), RowSums()
        await batcher.open(model)
        waiting = [asyncio.ensure_future(batcher.submit(model, np.full(1, i))) for i in range(3)]
        await asyncio.sleep(0)
        await batcher.retire(model)
        with pytest.raises(NotReady, match="sums/1 is no longer served"):
            await batcher.submit(model, np.ones(1))  # a late submit revives nothing
        rows = [int((await w)[0]) for w in waiting]
        await batcher.close()
        return rows

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_cancelled_callers_are_skipped() -> None:
    async def scenario() -> tuple[list[int], int]:
        batcher, model = _batcher(max_queue_delay_ms=50.0), RowSums()
        await batcher.open(model)
        gone = asyncio.ensure_future(batcher.submit(model, np.ones(1)))
        kept = asyncio.ensure_future(batcher.submit(model, np.full(1, 7)))
        await asyncio.sleep(0.01)
        gone.cancel()
        row = await kept
        await batcher.close()
        return model.batches, int(row[0])

    assert asyncio.run(scenario()) == ([1], 7)


@dataclass(eq=False)
class Meeting(RowSums):
    """Each run waits for ``parties`` runs to be in flight at once (BrokenBarrierError if not)."""

    parties: int = 2
    barrier: threading.Barrier = field(init=False)

    def __post_init__(self) -> None:
        self.barrier = threading.Barrier(self.parties, timeout=2.0)

    def infer(self, batch: np.ndarray, alone: bool = False) -> np.ndarray:
        self.barrier.wait()
        return super().infer(batch, alone)


def test_instances_run_batches_at_the_same_time() -> None:
    async def scenario(instances: int) -> list[object]:
        batcher, model = _batcher(max_batch_size=1, max_queue_delay_ms=0.0,
                                  instances=instances), Meeting()
        await batcher.open(model)
        outcomes = await asyncio.gather(*(batcher.submit(model, np.ones(1)) for _ in range(2)),
                                        return_exceptions=True)
        await batcher.close()
        return outcomes

    assert [int(row[0]) for row in asyncio.run(scenario(2))] == [1, 1]  # type: ignore[index]
    lone = asyncio.run(scenario(1))  # one instance: the first run waits alone, in vain
    assert all(isinstance(outcome, threading.BrokenBarrierError) for outcome in lone)


def test_a_run_is_alone_only_with_nothing_else_in_flight_or_queued() -> None:
    async def scenario() -> tuple[list[bool], list[bool]]:
        batcher = _batcher(max_batch_size=1, max_queue_delay_ms=0.0, instances=2)
        lone, crowd = RowSums(), Meeting(version=2)
        await batcher.open(lone)
        await batcher.open(crowd)
        await batcher.submit(lone, np.ones(1))
        await asyncio.gather(*(batcher.submit(crowd, np.ones(1)) for _ in range(2)))
        await batcher.close()
        return lone.alone, crowd.alone

    lone, crowd = asyncio.run(scenario())
    assert lone == [True]
    assert len(crowd) == 2 and False in crowd  # the second started while the first ran


def test_submit_many_queues_together_or_in_runs_of_the_queue_size() -> None:
    """Inputs that fit are queued together (one run); more than the queue could ever hold (a
    photo with 300 faces) go in runs of at most ``max_queue_size`` instead of an endless 503."""
    async def scenario() -> tuple[list[int], list[int], list[int]]:
        batcher, model = _batcher(max_queue_delay_ms=0.0, max_queue_size=4, instances=2), \
            RowSums()
        await batcher.open(model)
        rows = await batcher.submit_many(model, [np.full(1, i) for i in range(4)])
        more = await batcher.submit_many(model, [np.full(1, i) for i in range(10)])
        await batcher.close()
        return [int(row[0]) for row in rows], [int(row[0]) for row in more], model.batches

    rows, more, batches = asyncio.run(scenario())
    assert rows == [0, 1, 2, 3] and batches[0] == 4  # one run, though two instances were idle
    assert more == list(range(10))  # in order
    assert sum(batches[1:]) == 10 and max(batches[1:]) <= 4


def test_one_instance_gathers_at_a_time() -> None:
    async def scenario() -> list[int]:
        batcher, model = _batcher(max_queue_delay_ms=100.0, instances=2), RowSums()
        await batcher.open(model)
        await asyncio.gather(*(batcher.submit(model, np.ones(1)) for _ in range(6)))
        await batcher.close()
        return model.batches

    assert asyncio.run(scenario()) == [6]  # not split with the idle second instance


def test_finish_runs_on_each_row_and_fails_only_its_caller() -> None:
    def rank(row: np.ndarray) -> str:
        if row[0] < 0:
            raise ValueError("negative")
        return f"sum={int(row[0])} in {threading.current_thread().name}"

    async def scenario() -> list[object]:
        batcher, model = _batcher(), RowSums()
        await batcher.open(model)
        outcomes = await asyncio.gather(
            *(batcher.submit(model, np.full(1, value), rank) for value in (3, -1, 5)),
            return_exceptions=True)
        await batcher.close()
        return [*outcomes, model.batches]

    good, bad, other, batches = asyncio.run(scenario())
    assert good == "sum=3 in infer-sums/1-0" and other == "sum=5 in infer-sums/1-0"
    assert isinstance(bad, ValueError) and batches == [3]


def test_metrics_record_batches_and_queue(tmp_path: object) -> None:
    async def scenario() -> Metrics:
        metrics = Metrics()
        batcher, model = _batcher(metrics=metrics), RowSums()
        await batcher.open(model)
        await asyncio.gather(*(batcher.submit(model, np.ones(1)) for _ in range(1)))
        await batcher.close()
        return metrics

    text = asyncio.run(scenario()).render().decode()
    assert 'convserve_batch_size_count{model="sums",version="1"} 1.0' in text
    assert 'convserve_queue_depth{model="sums",version="1"} 0.0' in text
    assert 'convserve_inference_count_total{model="sums",version="1"} 1.0' in text


@pytest.mark.parametrize(("option", "value", "message"), [
    ("max_batch_size", 0, "max_batch_size must be >= 1"),
    ("max_queue_delay_ms", -1.0, "max_queue_delay_ms must be >= 0"),
    ("max_queue_size", 0, "max_queue_size must be >= 1"),
    ("instances", 0, "instances must be >= 1"),
])
def test_invalid_options(option: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _batcher(**{option: value})


def test_open_warms_each_inference_thread_before_it_returns() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        batcher, model = _batcher(instances=2), RowSums(warm_up_seconds=0.2)
        await batcher.open(model)
        opened = list(model.events)
        await batcher.submit(model, np.ones(1))
        await batcher.close()
        return opened, model.events

    opened, events = asyncio.run(scenario())
    assert sorted(opened) == [("warm", "infer-sums/1-0"), ("warm", "infer-sums/1-1")]
    assert events[2][0] == "infer" and len(events) == 3  # the lanes were reused, not re-warmed


def test_a_version_without_an_open_lane_is_refused_not_given_one() -> None:
    """Only ``open`` creates a lane (the engine, before publishing a version): a submit for any
    other version is a retryable 503 and starts no thread."""
    async def scenario() -> list[str]:
        batcher, model = _batcher(), RowSums()
        with pytest.raises(NotReady, match="sums/1 is no longer served") as refused:
            await batcher.submit(model, np.ones(1))
        assert refused.value.status_code == 503
        names = [t.name for t in threading.enumerate() if t.name.startswith("infer-sums/1")]
        await batcher.close()
        return names

    assert asyncio.run(scenario()) == []


def test_a_version_with_a_smaller_max_batch_gets_smaller_batches() -> None:
    async def scenario() -> list[int]:
        batcher, model = _batcher(max_batch_size=8, max_queue_delay_ms=50.0), RowSums(max_batch=2)
        await batcher.open(model)
        await asyncio.gather(*(batcher.submit(model, np.ones(1)) for _ in range(6)))
        await batcher.close()
        return model.batches

    assert asyncio.run(scenario()) == [2, 2, 2]


def test_an_input_wakes_one_idle_inference_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone input wakes the one thread that runs it: waking every idle instance put a thread
    on the cores beside the lone run's spinning threads, which doubled 2% of MobileNetV2's
    one-client latencies (docs/performance.md)."""
    wakeups: collections.Counter[str] = collections.Counter()

    class Counting(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            woke = super().wait(timeout)
            name = threading.current_thread().name
            if name.startswith("infer-"):
                wakeups[name] += 1
            return woke

    monkeypatch.setattr("service.batching.threading.Condition", Counting)

    async def scenario() -> tuple[int, list[bool]]:
        batcher, model = _batcher(max_queue_delay_ms=0.0, instances=3), RowSums()
        await batcher.open(model)
        await asyncio.sleep(0.05)  # every thread back in wait()
        wakeups.clear()
        for i in range(10):
            await batcher.submit(model, np.full((2, 2), i))
        await asyncio.sleep(0.05)
        woken = sum(wakeups.values())
        await batcher.close()
        return woken, model.alone

    woken, alone = asyncio.run(scenario())
    assert woken == 10
    assert alone == [True] * 10


def test_close_ends_threads_waiting_behind_a_gathering_one() -> None:
    async def scenario() -> np.ndarray:
        batcher, model = _batcher(max_queue_delay_ms=200.0, instances=3), RowSums()
        await batcher.open(model)
        answer = asyncio.ensure_future(batcher.submit(model, np.ones((2, 2))))
        await asyncio.sleep(0.02)  # one thread gathers for 200 ms, two wait behind it
        await asyncio.wait_for(batcher.close(), 10)
        return await answer

    assert float(asyncio.run(scenario())[0]) == 4.0
