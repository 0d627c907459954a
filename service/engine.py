"""The serving engine: models, versions, queues, readiness and reload, with no web framework.

One :class:`Engine` per process owns every runtime resource the service has (the repository of
loaded versions, the batcher and its lanes, the decode pool, the detection slots, the metrics,
the reload lock, worker sync) and is the one place that creates and ends each of them. Protocol
adapters (HTTP in :mod:`service.http`, gRPC in :mod:`service.grpc`, streams) parse a request,
call the engine and format its answer in domain types; they never reach past it.

The rules every protocol shares live here, once:

* **which version answers** (:meth:`Engine.get`): the version named, else the one
  ``models/<name>/default_version`` pins, else the newest;
* **readiness** (:meth:`Engine.readiness`): started, first load finished and warm, nothing failed;
  :meth:`Engine.check_serving` refuses inference only while starting or stopping;
* **a version's lifecycle** (:meth:`Engine.reload`): a new version's lane is opened (its
  inference threads warm) before any request can see it; a removed version is unpublished and its
  lane closed in one step on the event loop, so nothing revives it: a request that took it before
  the reload and submits afterwards gets a retryable 503, and its threads, sessions and metric
  series end with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from model_format import Capability
from service.batching import Batcher
from service.detection import DetectionSlots, StreamSlots
from service.errors import NotReady, ReloadIncomplete
from service.metrics import Metrics, ModelMetrics
from service.model_version import ModelVersion
from service.pipeline import Upload, classify, prepare_uploads
from service.repository import ModelRepository, ScanResult
from service.schemas import ImageResult
from service.settings import Settings
from service.worker_sync import WorkerSync

logger = logging.getLogger("convserve.engine")
T = TypeVar("T")
LOADING = "the models are still loading; retry when GET /readyz answers 200"
STOPPING = "the service is stopping; retry on another replica"


@dataclass(frozen=True)
class Readiness:
    """The one readiness answer: ``ready``, and why not (``reason`` is safe to show anyone;
    ``detail`` names files and paths, for logs and authenticated callers)."""

    ready: bool
    reason: str = ""
    detail: str = ""


class Engine:
    """Everything a protocol needs to serve the models in ``settings.models_dir``.

    Create it anywhere; :meth:`start` and :meth:`close` run inside the event loop that serves.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 sync: WorkerSync | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.repository = ModelRepository(settings)
        self.sync = sync  # --workers N: reloads reach every worker (service.workers)
        self.batcher: Batcher | None = None
        self.pool: ThreadPoolExecutor | None = None  # decoding
        self.detection: DetectionSlots | None = None
        self.streams = StreamSlots(settings.max_streams)  # open expression streams
        self.starting = True  # until the first load has finished and its lanes are warm
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closed = False  # close() has begun: nothing new is accepted

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the pools and the batcher, then load the models in the background (the
        process answers liveness at once; readiness waits for the load)."""
        settings = self.settings
        self.pool = ThreadPoolExecutor(settings.decode_threads, "decode")
        self.detection = DetectionSlots(settings.detect_threads, settings.max_pending_detections,
                                        settings.retry_after_s)
        self.batcher = Batcher(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size, retry_after_s=settings.retry_after_s,
            metrics=self.metrics, instances=settings.instances)
        self._tasks = [asyncio.create_task(self._initial_load(), name="load-models")]
        if settings.reload_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._poll(settings.reload_interval_s),
                                                   name="poll"))
        if self.sync is not None:
            self._tasks.append(asyncio.create_task(self.sync.follow(self._reload_here),
                                                   name="follow-reloads"))

    async def close(self) -> None:
        """Stop loading, finish every accepted detection and queued input, end the threads."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        batcher, pool, detection = self.batcher, self.pool, self.detection
        self.batcher = self.pool = self.detection = None  # new requests: 503 from here on
        if detection is not None:
            await asyncio.to_thread(detection.shutdown)  # running detections queue their faces
        if batcher is not None:
            await batcher.close()  # finishes every queued input
        if pool is not None:
            pool.shutdown(wait=True)
        logger.info("stopped: queues drained")

    # -- readiness --------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Ready: started, every version loaded and warm, none failed. ``/readyz``,
        ``/v2/health/ready`` and gRPC's ServerReady all answer this."""
        if self._closed:
            return Readiness(False, STOPPING)
        if self.batcher is None or self.starting or not self.repository.loaded:
            return Readiness(False, LOADING)
        failures = self.repository.failures
        if failures:
            detail = "; ".join(f"{key}: {why}" for key, why in sorted(failures.items()))
            return Readiness(False, f"failed to load: {', '.join(sorted(failures))} (the server "
                             "log and POST /v1/repository/reload say why; fix or remove them, "
                             "then reload)", detail)
        return Readiness(True)

    def check_serving(self) -> None:
        """Raises NotReady (503, Retry-After) while starting or stopping. A version that failed
        to load does not stop the others from answering (readiness says it, for balancers)."""
        if self._closed:
            raise NotReady(STOPPING)
        if self.batcher is None or self.pool is None or self.starting:
            raise NotReady(LOADING)

    # -- versions ---------------------------------------------------------------------------

    def get(self, name: str, version: str | int | None = None,
            need: Capability | None = None) -> ModelVersion:
        """The version of ``name`` that answers: ``version``, else the pinned default, else the
        newest (the one rule for every protocol). ``need``: refuse a model that cannot do it.

        Raises:
            ModelNotFound, VersionNotFound, NotReady, UnsupportedTask.
        """
        chosen = self.repository.get(name, version)
        if need is not None:
            chosen.require(need)
        return chosen

    def versions(self, name: str) -> list[ModelVersion]:
        """Every loaded version of ``name``, newest first. Raises like :meth:`get`."""
        return self.repository.versions(name)

    def default_version(self, name: str) -> tuple[int, bool]:
        """The version answering when none is named, and whether a pin chose it."""
        return self.repository.default_version(name)

    # -- inference --------------------------------------------------------------------------

    def _serving(self) -> tuple[Batcher, ThreadPoolExecutor]:
        self.check_serving()
        assert self.batcher is not None and self.pool is not None
        return self.batcher, self.pool

    async def decode(self, version: ModelVersion, uploads: list[Upload]) -> list[np.ndarray]:
        """Decode and resize ``uploads`` to ``version``'s input, in the decode pool, with every
        pixel limit; timings go to the version's metrics while it is served."""
        _, pool = self._serving()
        version.require(Capability.CLASSIFY)
        assert version.input is not None
        settings = self.settings
        return await prepare_uploads(uploads, version.input, pool, settings.max_image_pixels,
                                     self.metrics_of(version), settings.max_request_pixels)

    async def infer(self, version: ModelVersion, arrays: list[np.ndarray],
                    finish: Callable[[np.ndarray], T] | None = None) -> list[Any]:
        """One output row per input (or ``finish(row)``, run in the inference thread), through
        the dynamic batcher. Raises Overloaded (503) when the queue is full and NotReady (503)
        for a version a reload has removed since the caller took it."""
        batcher, _ = self._serving()
        return await batcher.submit_many(version, arrays, finish)

    async def classify(self, version: ModelVersion, uploads: list[Upload],
                       top_k: int) -> list[ImageResult]:
        """Decode, batch and rank: the top ``top_k`` classes of each upload, in order."""
        arrays = await self.decode(version, uploads)
        batcher, _ = self._serving()
        return await classify(version, arrays, uploads, batcher, top_k)

    async def in_pool(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the decode pool (work whose cost follows an image)."""
        _, pool = self._serving()
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    def metrics_of(self, version: ModelVersion) -> ModelMetrics | None:
        """``version``'s metric series while it is served; None once a reload retired it (a
        late request observes nothing rather than bringing its series back)."""
        if not self.repository.serves(version):
            return None
        return self.metrics.model(version.name, version.version)

    def detection_slots(self) -> DetectionSlots:
        """The detection pool and its admission count."""
        self.check_serving()
        assert self.detection is not None
        return self.detection

    # -- reload -----------------------------------------------------------------------------

    async def reload(self) -> ScanResult:
        """Rescan here and, with ``--workers N``, in every worker; return once all serve the
        result.

        Raises:
            ReloadIncomplete: a worker had not reloaded after ``reload_wait_s`` (503).
        """
        if self.sync is None:
            return await self._reload_here()
        generation = self.sync.bump()
        result = await self._reload_here()
        self.sync.applied(generation)
        behind = await self.sync.wait_for(generation, self.settings.reload_wait_s)
        if behind:
            raise ReloadIncomplete(
                f"this worker reloaded but worker(s) {', '.join(map(str, behind))} had not after "
                f"{self.settings.reload_wait_s:g} s (CONVSERVE_RELOAD_WAIT_S); they go on "
                "loading: check the logs, then POST /v1/repository/reload again")
        return result

    async def _reload_here(self) -> ScanResult:
        """Load what changed (in a thread), open the new versions' lanes, then publish the new
        set and retire the removed versions in one step on the event loop."""
        async with self._reload_lock:
            plan = await asyncio.to_thread(self.repository.plan)
            batcher = self.batcher
            for version in plan.result.added:
                if batcher is not None and version.can(Capability.CLASSIFY):
                    await batcher.open(version)  # warm before any request can take it
            self.repository.publish(plan)
            drained = []
            for version in plan.result.removed:  # no await from publish to here
                self.metrics.model_unloaded(version.name, version.version, version.task,
                                            version.providers[0])
                if batcher is not None:
                    drained.append(batcher.retire(version))
            for version in plan.result.added:
                self.metrics.model_loaded(version.name, version.version, version.task,
                                          version.providers[0], version.load_seconds)
            await asyncio.gather(*drained)  # what was queued still finishes
            for version in plan.result.removed:
                if not any(v.key == version.key for v in plan.result.added):  # not a twin's
                    self.metrics.forget(version.name, version.version)
            return plan.result

    async def _initial_load(self) -> None:
        sync, generation = self.sync, 0
        result = ScanResult()
        try:
            while True:  # a worker: again if another worker asked for a reload during the scan
                generation = sync.generation() if sync else 0
                result = await self._reload_here()
                if sync is None or sync.generation() == generation:
                    break
        except Exception:
            logger.exception("loading the models failed; /readyz stays 503")
            return
        finally:
            self.starting = False  # loaded, and inference threads warm
            if sync is not None:
                sync.applied(generation)  # from now on it follows the other workers' reloads
        self._log_loaded(result)

    def _log_loaded(self, result: ScanResult) -> None:
        if result.failed:
            logger.error("not ready: %d model version(s) failed to load: %s", len(result.failed),
                         "; ".join(f"{k}: {v}" for k, v in result.failed.items()))
            return
        loaded = len(self.repository.all_versions())
        if not loaded and not self.settings.allow_empty:
            logger.warning("ready with NO models: %s holds no <name>/<version>/model.json; set "
                           "CONVSERVE_MODELS_DIR to the right directory, or "
                           "CONVSERVE_ALLOW_EMPTY=true if none is intended",
                           self.settings.models_dir.resolve())
        else:
            logger.info("ready: %d model version(s) loaded", loaded)

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._reload_here()
            except Exception:
                logger.exception("polling %s for new models failed", self.settings.models_dir)
