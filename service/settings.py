"""Service settings: one pydantic-settings class, read from ``CONVSERVE_*`` environment variables.

:func:`load_settings` validates everything at start-up and turns pydantic's errors into one
:class:`~service.errors.SettingsError` whose message names each environment variable and says what
to fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import SettingsError

ENV_PREFIX = "CONVSERVE_"

# Short names accepted for execution providers, mapped to ONNX Runtime's names.
PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def _known_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_all_providers())


class Settings(BaseSettings):
    """Everything an operator can set. Each field is ``CONVSERVE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Server
    host: str = "127.0.0.1"  # interface uvicorn binds to; 0.0.0.0 in a container
    port: int = Field(8000, ge=1, le=65535)  # TCP port
    grpc_port: int = Field(8001, ge=0, le=65535)  # the Open Inference Protocol over gRPC on
    # the same host (service/grpc/); 0 = no gRPC
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: every line one JSON object, uvicorn's
    # too (for log collectors); text: time, level, logger, message, for a terminal
    graceful_shutdown_s: float = Field(30.0, gt=0)  # how long SIGTERM waits for requests
    workers: int = Field(1, ge=1, le=64)  # processes serving the port, each with its own event
    # loop, decode pool, batcher and sessions (service/workers.py); 1 suits a small CPU host
    # (docs/performance.md: figures by worker count)

    # Model repository
    models_dir: Path = Path("models")  # the models/<name>/<version>/ tree
    models: Annotated[list[str], NoDecode] = []  # which models to load: names or patterns,
    # '-' leaves out ("*,-*-int8": all but int8); empty = every one (service/model_selection.py)
    reload_interval_s: float = Field(0.0, ge=0)  # poll models_dir every N s; 0 = only on POST
    reload_wait_s: float = Field(120.0, gt=0)  # with workers > 1, how long POST reload waits
    # for every other worker to load what it loaded before answering 503
    warmup: bool = True  # run each model once on zeros before declaring it ready
    allow_empty: bool = False  # start with no models (they come later, by reload); otherwise
    # `convserve serve` refuses an empty models_dir (most likely the wrong path)

    # ONNX Runtime
    providers: Annotated[list[str], NoDecode] = [
        "CUDAExecutionProvider", "CPUExecutionProvider"]  # in order of preference
    instances: int = Field(2, ge=1)  # ORT runs in flight per model version (Triton's count)
    intra_op_threads: int = Field(0, ge=0)  # threads inside one run; 0 = cores / instances
    inter_op_threads: int = Field(0, ge=0)  # threads across operators; 0 = ORT's default
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    allow_spinning: bool = False  # ORT threads busy-wait between runs: faster alone, but they
    # steal the cores decoding and HTTP need in a server; leave off unless cores are to spare
    # (a classifier's lone runs spin within the run regardless: runtime.create_session)
    tuning_dir: Path = Path("~/.cache/convserve/tuning")  # figures `convserve tune` measured
    # on this host, read at load (service/tuning.py); must be writable by `convserve tune` only
    cuda_conv_algo_search: Literal["heuristic", "exhaustive", "default"] = "heuristic"  # how
    # cuDNN picks conv kernels for each new input shape; "exhaustive" (ORT's default) times them
    # all, which makes each session's first run at a size slower (docs/service-architecture.md)

    # Batching
    max_batch_size: int = Field(4, ge=1)  # images per ORT run at most: 1-4 on a CPU (a
    # classifier's serving.json may cap it lower: service/batch_sizes.py), 32+ on a GPU
    max_queue_delay_ms: float = Field(0.0, ge=0)  # wait at most this long for a fuller batch
    max_queue_size: int = Field(256, gt=0)  # queued images per model version before 503
    retry_after_s: int = Field(1, gt=0)  # Retry-After sent with 503 overloaded
    decode_workers: int = Field(0, ge=0)  # image decoding threads; 0 = one per CPU core
    cpus: int = Field(0, ge=0)  # cores this process may use; 0 = os.cpu_count(), which in a
    # container counts the node's cores, not the pod's: Kubernetes sets it to the CPU request

    # Limits
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)  # request body; larger -> 413
    max_image_pixels: int = Field(50_000_000, gt=0)  # width*height; larger -> 413, not decoded
    max_request_pixels: int = Field(200_000_000, gt=0)  # all images of one request together,
    # read from their headers before any is decoded; more -> 413
    max_images_per_request: int = Field(64, gt=0)  # multipart `file` fields per request
    header_read_timeout_s: float = Field(10.0, gt=0)  # a connection's request line and headers
    # must arrive within this (from connect, or from its first byte after a keep-alive idle);
    # else 408 and close (slowloris)
    body_read_timeout_s: float = Field(30.0, gt=0)  # longest silence while a body is unfinished
    # -> 408 and close
    body_min_rate: float = Field(1024.0, ge=0)  # bytes/s a body must average once it has had
    # body_read_timeout_s: a body dripped a byte at a time -> 408 and close; 0 = no minimum
    max_connections: int = Field(0, ge=0)  # open connections per process at most; one more is
    # answered 503 + Retry-After and closed (not reset by a full file table); 0 = from the open
    # files limit (ulimit -n), less 10% and 64 for models, logs and threads
    send_timeout_s: float = Field(60.0, gt=0)  # a client that reads nothing of its answer for
    # this long (the server's send buffer full) is disconnected, and the answer freed
    max_pending_upload_bytes: int = Field(256 * 1024 * 1024, gt=0)  # bytes all unfinished
    # request bodies may hold together; an upload past it -> 503 + Retry-After

    # Face detection (POST /v1/expressions)
    detection_max_side: int = Field(1600, ge=100)  # detect on a copy whose longest side is at
    # most this; boxes are mapped back to the photo (faces under 12 px in the copy are missed)
    detect_workers: int = Field(0, ge=0)  # detection threads (apart from the decode pool);
    # 0 = half the CPU cores, at least 1
    max_pending_detections: int = Field(32, ge=1)  # detections running or waiting for a thread
    # (waiting ones hold only their upload's bytes); more -> 503 + Retry-After

    # Expression streams (WebSocket /v1/expressions/stream; service/streams.py)
    max_streams: int = Field(4, ge=0)  # open streams at most; one more is closed with 1013
    stream_max_frame_bytes: int = Field(2_000_000, gt=0)  # a bigger frame closes with 1009
    stream_max_frame_pixels: int = Field(4_000_000, gt=0)  # a frame decoding to more -> 1009
    stream_max_fps: float = Field(30.0, gt=0)  # frames processed per second per stream at most
    stream_idle_timeout_s: float = Field(30.0, gt=0)  # no frame this long -> close 1001
    stream_send_timeout_s: float = Field(10.0, gt=0)  # an answer not taken this long -> 1008
    stream_detect_side: int = Field(320, ge=64)  # detect on a copy no longer than this (a
    # webcam face is large: at 320 px a 640x480 frame's faces down to ~24 px are found)

    # Security
    api_key: SecretStr | None = None  # when set, Bearer auth on all but health and metrics

    @field_validator("models", mode="before")
    @classmethod
    def _model_patterns(cls, value: Any) -> Any:
        from service.model_selection import parse

        return parse(value) if isinstance(value, str | list) else value

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("providers")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one execution provider, e.g. 'CUDA,CPU'")
        known = _known_providers()
        resolved = []
        for name in value:
            full = PROVIDER_ALIASES.get(name.lower(), name)
            if full not in known:
                raise ValueError(
                    f"unknown execution provider {name!r}; use one of "
                    f"{', '.join(sorted(PROVIDER_ALIASES))} or ONNX Runtime's full names")
            if full not in resolved:
                resolved.append(full)
        return resolved

    @field_validator("api_key")
    @classmethod
    def _non_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None  # CONVSERVE_API_KEY= (empty) means no key
        return value

    @field_validator("models_dir")
    @classmethod
    def _models_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a directory: set {ENV_PREFIX}MODELS_DIR "
                             "(or --models) to the models/<name>/<version>/ tree")
        return value

    @property
    def cores(self) -> int:
        """CPU cores to size thread pools by: ``cpus``, or every core the machine has."""
        return self.cpus or os.cpu_count() or 1

    @property
    def worker_cores(self) -> int:
        """This worker's share of the CPU cores (all of them with one worker)."""
        return max(1, self.cores // self.workers)

    @property
    def intra_threads(self) -> int:
        """Threads inside one ORT run: ``intra_op_threads``, or the worker's cores over the
        instances."""
        return self.intra_op_threads or max(1, self.worker_cores // self.instances)

    @property
    def detect_threads(self) -> int:
        """Threads for face detection: ``detect_workers`` or half the worker's cores (at least
        1)."""
        return self.detect_workers or max(1, self.worker_cores // 2)

    @model_validator(mode="after")
    def _limits_fit_together(self) -> Settings:
        if self.grpc_port == self.port:
            raise ValueError(f"grpc_port and port are both {self.port}: set {ENV_PREFIX}"
                             f"GRPC_PORT to another port (or 0 for no gRPC)")
        if self.max_request_pixels < self.max_image_pixels:
            raise ValueError(
                f"max_request_pixels ({self.max_request_pixels}) must be at least "
                f"max_image_pixels ({self.max_image_pixels}): raise {ENV_PREFIX}"
                f"MAX_REQUEST_PIXELS or lower {ENV_PREFIX}MAX_IMAGE_PIXELS")
        if self.max_pending_upload_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_pending_upload_bytes ({self.max_pending_upload_bytes}) must be at least "
                f"max_body_bytes ({self.max_body_bytes}): raise {ENV_PREFIX}"
                f"MAX_PENDING_UPLOAD_BYTES or lower {ENV_PREFIX}MAX_BODY_BYTES")
        return self

    @property
    def decode_threads(self) -> int:
        """Threads for decoding: ``decode_workers`` or one per core of the worker's share."""
        return self.decode_workers or self.worker_cores


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not field:
        return message
    got = error.get("input")
    shown = ("" if isinstance(got, dict | list) or field in ("api_key", "models_dir")
             else f" (got {got!r})")
    return f"{ENV_PREFIX}{field.upper()}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; ``overrides`` win over the environment.

    Raises:
        SettingsError: listing every invalid setting and how to fix it.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(dict(error)) for error in exc.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
