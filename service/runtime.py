"""ONNX Runtime sessions: options from the settings, and the providers actually in use.

This module is the one place that works around ONNX Runtime; nothing else in ``service/``
imports ``onnxruntime`` (but ``settings.py``, for the list of provider names). Each workaround,
and the measurement it rests on in docs/service-architecture.md:

* **Provider fallback.** ONNX Runtime silently falls back from a GPU provider to the CPU when
  the GPU's libraries do not load. :func:`create_session` compares what was asked with what
  runs; :func:`warn_missing_providers` logs one warning naming the provider, and
  :func:`provider_load_error` finds the missing library by loading the provider's shared object
  with ``ctypes`` (ORT's own message does not name it). A provider that failed is not asked for
  again in this process (``_UNLOADABLE``).
* **The global logger switch.** ORT's process-wide default logger says errors only
  (:data:`ORT_LOG_SEVERITY`): its warnings at load are about the graph's authoring (tf2onnx's
  deprecated ``Resize`` attributes in the converted RetinaFace: eight lines per start and per
  worker), which a user of the service cannot act on. While a session may fail to load a
  provider it says fatal errors only (:func:`_quiet_provider_errors`): ORT would log two lines
  per session otherwise.
* **Solo sessions** (``Session.solo``, CPU only): a twin of each graph on every core for runs
  with the machine to themselves; whole-image classifiers' solo sessions spin within a run and
  stop when it returns (``session.force_spinning_stop``). Performance notes: "The solo session
  spins within a run".
* **Per-size GPU sessions** (``Session.with_batch_sessions``): off the CPU a session per padded
  batch size, because the CUDA provider re-plans every convolution whenever a session's input
  shape changes. Batching, "Off the CPU".
* **CUDA from wheels.** The ``serve`` install brings CUDA and cuDNN as nvidia-* wheels, not
  system libraries: :func:`prepare_cuda` loads them (ONNX Runtime's ``preload_dlls``) before the
  first session, or, on a host with no NVIDIA driver, says so once at INFO and leaves CUDA out.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.settings import Settings

logger = logging.getLogger("convserve.runtime")
ORT_VERSION: str = ort.__version__
ORT_LOG_SEVERITY = 3  # errors (ORT's default, 2, adds warnings)
ort.set_default_logger_severity(ORT_LOG_SEVERITY)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_DTYPES = {
    "tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(double)": np.float64,
}


class InFlight:
    """Counts the runs in flight; ``with in_flight as first:`` says whether this one is alone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __enter__(self) -> bool:
        with self._lock:
            self._count += 1
            return self._count == 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._count -= 1


@dataclass(frozen=True)
class Session:
    """An ONNX Runtime session and the execution providers it really uses.

    On a CPU with instances sharing the cores (``intra_threads`` < cores), a second session of
    the same graph, ``solo``, uses every core: for a run with the machine to itself (nothing
    else in flight or queued), so a lone request is as fast as with one instance.

    Off the CPU, ``by_batch`` may hold a session per batch size (see ``with_batch_sessions``).
    """

    path: Path
    inner: ort.InferenceSession
    providers: tuple[str, ...]  # in use, in order
    solo: ort.InferenceSession | None = None
    in_flight: InFlight = field(default_factory=lambda: InFlight())
    by_batch: dict[int, ort.InferenceSession] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        """The main provider in use (the first one)."""
        return self.providers[0]

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None, *,
            alone: bool | None = None) -> list[np.ndarray]:
        """Run the graph; ``outputs`` defaults to all of them. ``alone``: nothing else runs,
        so use every core (the ``solo`` session, where there is one); None: when no other run
        of this session is in flight (callers without a queue of their own, e.g. MTCNN)."""
        with self.in_flight as first:
            if self.by_batch:
                rows = len(next(iter(inputs.values())))
                return self.by_batch.get(rows, self.inner).run(outputs, inputs)
            solo = self.solo if (first if alone is None else alone) else None
            return (solo or self.inner).run(outputs, inputs)

    def with_batch_sessions(self, sizes: tuple[int, ...], settings: Settings) -> Session:
        """A copy whose runs at each of ``sizes`` go to a session of their own (the first size
        keeps this one), on the same providers.

        For GPUs: ONNX Runtime's CUDA provider re-plans every convolution whenever a session's
        input shape differs from its previous run's, which costs far more than the run itself
        (figures and the command: docs/service-architecture.md, Batching)."""
        options = provider_options(list(self.providers), settings)
        extra = {size: ort.InferenceSession(str(self.path), session_options(settings),
                                            providers=options) for size in sizes[1:]}
        return dataclasses.replace(self, by_batch={sizes[0]: self.inner, **extra})

    def with_solo_threads(self, threads: int, settings: Settings, *, spins: bool,
                          arena: bool = True) -> Session:
        """A copy whose lone runs use ``threads`` threads (a tuned figure: a small graph's lone
        run may be fastest on fewer threads than cores); none above the shared session's
        threads: lone runs then go to the shared session. CPU only; else ``self``."""
        if self.provider != "CPUExecutionProvider" or self.by_batch:
            return self
        if self.solo is not None and threads == self.solo.get_session_options(
                ).intra_op_num_threads:
            return self
        solo = None
        if threads > settings.intra_threads:
            solo = ort.InferenceSession(str(self.path), session_options(
                settings, threads, spin_within_runs=spins, arena=arena),
                providers=["CPUExecutionProvider"])
        return dataclasses.replace(self, solo=solo)

    def warm_up(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                ) -> list[np.ndarray]:
        """Run both sessions once (the first run of a session allocates its buffers); returns
        the outputs of the shared one."""
        if self.solo is not None:
            self.run(inputs, outputs, alone=True)
        return self.run(inputs, outputs, alone=False)

    def zeros_feed(self, batch: int = 1, free_dim: int = 64) -> dict[str, np.ndarray]:
        """Zero inputs for a warm-up run: dynamic batch axis -> ``batch``, other dynamic -> 64."""
        feed = {}
        for node in self.inner.get_inputs():
            dims = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else free_dim)
                    for i, d in enumerate(node.shape)]
            feed[node.name] = np.zeros(dims, dtype=_DTYPES.get(node.type, np.float32))
        return feed


def session_options(settings: Settings, intra_threads: int | None = None, *,
                    spin_within_runs: bool = False, arena: bool = True) -> ort.SessionOptions:
    """Session options from the settings (threads, graph optimisation). ``spin_within_runs``:
    ORT's threads busy-wait between the operators of a run and stop when it returns (for the
    ``solo`` session, whose runs have the cores to themselves). ``arena=False``: no CPU memory
    arena, for graphs whose input shape changes every run (MTCNN's P-Net), where the arena keeps
    the largest run's memory for good."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.intra_op_num_threads = intra_threads or settings.intra_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    options.log_severity_level = 3  # ORT warnings are noisy; ours say what matters
    spin = "1" if settings.allow_spinning or spin_within_runs else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if spin_within_runs:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def padded_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes a GPU session runs: powers of two below ``max_batch_size``, then it."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return (*sizes, max_batch_size)


def provider_options(providers: list[str], settings: Settings) -> list[str | tuple[str, dict]]:
    """Providers as ONNX Runtime takes them, with the options the settings give (CUDA's)."""
    cuda = {"cudnn_conv_algo_search": settings.cuda_conv_algo_search.upper()}
    return [(p, cuda) if p == "CUDAExecutionProvider" else p for p in providers]


# Providers whose library failed to load in this process: not asked for again (ONNX Runtime
# would retry for every session and log two lines each time; warn_missing_providers says it once).
_UNLOADABLE: set[str] = set()
# Providers left out on purpose (no NVIDIA driver, or an onnxruntime without CUDA, when the
# settings only defaulted to CUDA): prepare_cuda said why at INFO, so no warning follows.
_LEFT_OUT: set[str] = set()
_CUDA = "CUDAExecutionProvider"
_cuda_prepared = False
NVIDIA_PROC = Path("/proc/driver/nvidia")  # the kernel driver's entry, also seen in containers
CUDA_DRIVER_LIBRARY = "libcuda.so.1"  # the driver's user-space half, the one library not in wheels


def nvidia_driver_present(proc: Path = NVIDIA_PROC, library: str = CUDA_DRIVER_LIBRARY) -> bool:
    """Whether this host has an NVIDIA driver: its kernel module's /proc entry or its library.

    A container started without the NVIDIA Container Toolkit still sees the host's /proc entry:
    that counts as a GPU that should have loaded (so it warns), not as a CPU-only host.
    """
    if proc.exists():
        return True
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def preload_cuda_libraries() -> list[str]:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels, the way ONNX Runtime documents
    (``onnxruntime.preload_dlls()``): its CUDA provider links them by name and would otherwise
    only find a system-wide CUDA. Returns what ONNX Runtime printed (a library it could not load).
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # an onnxruntime older than 1.21, or a build without CUDA
        return []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        preload()
    return [line for line in printed.getvalue().splitlines() if line.strip()]


def prepare_cuda(settings: Settings) -> None:
    """Once per process, before the first session: when the settings ask for CUDA and a driver
    is present, load CUDA's libraries from the wheels; with no driver and only the default
    providers (``CONVSERVE_PROVIDERS`` unset), leave CUDA out with one INFO line. CUDA asked for
    by name is loaded and tried regardless: a failure is :func:`warn_missing_providers`'s."""
    global _cuda_prepared
    if _cuda_prepared or _CUDA not in settings.providers:
        return
    _cuda_prepared = True
    explicit = "providers" in settings.model_fields_set
    if _CUDA not in ort.get_available_providers():
        why = "this onnxruntime has no CUDA provider (the serve-cpu install)"
    elif explicit or nvidia_driver_present():
        for line in preload_cuda_libraries():
            logger.debug("onnxruntime.preload_dlls: %s", line)
        return
    else:
        why = f"no NVIDIA driver on this host (no {NVIDIA_PROC}, no {CUDA_DRIVER_LIBRARY})"
    if not explicit:
        _LEFT_OUT.add(_CUDA)
        _UNLOADABLE.add(_CUDA)
        logger.info("%s: running on the CPU", why)


_PROVIDER_LIBRARIES = {"CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
                       "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so"}


@contextlib.contextmanager
def _quiet_provider_errors(active: bool) -> Iterator[None]:
    """Silence ONNX Runtime's default logger while a session may fail to load a provider."""
    if not active:
        yield
        return
    ort.set_default_logger_severity(4)  # fatal only
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_LOG_SEVERITY)


def provider_load_error(provider: str) -> str | None:
    """Why ``provider``'s library does not load (the missing CUDA library, say), or None when
    it loads or is built in."""
    library = _PROVIDER_LIBRARIES.get(provider)
    if library is None:
        return None
    try:
        ctypes.CDLL(str(Path(ort.__file__).parent / "capi" / library))
    except OSError as exc:
        return str(exc)
    return None


def create_session(path: Path, settings: Settings, *, cpu_only: bool = False,
                   solo_spins: bool = False, arena: bool = True) -> Session:
    """Load one ONNX graph with the configured providers (those this build of ORT has, less
    those that already failed to load in this process), or on the CPU alone (``cpu_only``).
    ``solo_spins``: the solo session's threads spin within its runs (for graphs whose runs are
    called alone only when nothing else waits: whole-image classifiers behind the batcher).
    ``arena``: see :func:`session_options`.

    Raises:
        onnxruntime's exceptions when the file is not a valid graph.
    """
    prepare_cuda(settings)
    available = set(ort.get_available_providers()) - _UNLOADABLE
    usable = [p for p in settings.providers if p in available and not cpu_only] or [
        "CPUExecutionProvider"]
    configured = provider_options(usable, settings)
    with _quiet_provider_errors(usable != ["CPUExecutionProvider"]):
        inner = ort.InferenceSession(str(path), session_options(settings, arena=arena),
                                     providers=configured)
    providers = tuple(inner.get_providers())
    _UNLOADABLE.update(p for p in usable if p not in providers)
    cores, solo = settings.worker_cores, None
    if providers[0] == "CPUExecutionProvider" and cores > settings.intra_threads:
        solo = ort.InferenceSession(str(path), session_options(settings, cores,
                                                               spin_within_runs=solo_spins,
                                                               arena=arena),
                                    providers=["CPUExecutionProvider"])
    return Session(path=path, inner=inner, providers=providers, solo=solo)


def thread_session(path: Path, settings: Settings, threads: int, *, spins: bool) -> Session:
    """A CPU session of ``path`` with ``threads`` threads per run (for ``convserve tune``, which
    times thread layouts); ``spins``: as the solo session's (within runs only)."""
    inner = ort.InferenceSession(str(path), session_options(settings, threads,
                                                            spin_within_runs=spins),
                                 providers=["CPUExecutionProvider"])
    return Session(path=path, inner=inner, providers=("CPUExecutionProvider",))


def memory_session(graph: bytes, settings: Settings) -> Session:
    """A CPU session of a graph held in memory (a part cut from a model: the first layer's
    feature maps, ``service/layers.py``), with the settings' thread options."""
    inner = ort.InferenceSession(graph, session_options(settings),
                                 providers=["CPUExecutionProvider"])
    return Session(path=Path("<memory>"), inner=inner, providers=("CPUExecutionProvider",))


def warn_missing_providers(requested: list[str], in_use: set[str]) -> list[str]:
    """Log one warning per requested provider (other than CPU) that no session uses.

    Returns:
        The providers that did not load.
    """
    missing = [p for p in requested
               if p != "CPUExecutionProvider" and p not in in_use and p not in _LEFT_OUT]
    for provider in missing:
        reason = provider_load_error(provider) or (
            "its library loads: no usable device?" if provider in ort.get_available_providers()
            else "this onnxruntime has no such provider: for CUDA, install '.[serve]'")
        logger.warning(
            "execution provider %s was requested but did not load (%s); running on %s. Install "
            "its libraries (for CUDA: '.[serve]' on Linux x86-64 and an NVIDIA driver) or drop "
            "it from CONVSERVE_PROVIDERS to silence this warning",
            provider, reason, ", ".join(sorted(in_use)) or "CPUExecutionProvider")
    return missing
