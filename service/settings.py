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

from pydantic import Field, SecretStr, ValidationError, field_validator
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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    graceful_shutdown_s: float = Field(30.0, gt=0)  # how long SIGTERM waits for requests
    workers: int = Field(1, ge=1, le=64)  # processes serving the port, each with its own event
    # loop, decode pool, batcher and sessions (service/workers.py); 1 suits a small CPU host
    # (docs/workers: the README's figures by worker count)

    # Model repository
    models_dir: Path = Path("models")  # the models/<name>/<version>/ tree
    reload_interval_s: float = Field(0.0, ge=0)  # poll models_dir every N s; 0 = only on POST
    reload_wait_s: float = Field(120.0, gt=0)  # with workers > 1, how long POST reload waits
    # for every other worker to load what it loaded before answering 503
    warmup: bool = True  # run each model once on zeros before declaring it ready

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
    cuda_conv_algo_search: Literal["heuristic", "exhaustive", "default"] = "heuristic"  # how
    # cuDNN picks conv kernels for each new input shape; "exhaustive" (ORT's default) times them
    # all: 0.3-1.4 s per session and new batch size on an H200 (0.2-0.9 s heuristic)

    # Batching
    max_batch_size: int = Field(4, ge=1)  # images per ORT run at most: 1-4 on a CPU (each
    # classifier is capped lower if a smaller batch measures cheaper at load), 32+ on a GPU
    max_queue_delay_ms: float = Field(0.0, ge=0)  # wait at most this long for a fuller batch
    max_queue_size: int = Field(256, gt=0)  # queued images per model version before 503
    retry_after_s: int = Field(1, gt=0)  # Retry-After sent with 503 overloaded
    decode_workers: int = Field(0, ge=0)  # image decoding threads; 0 = one per CPU core

    # Limits
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)  # request body; larger -> 413
    max_image_pixels: int = Field(50_000_000, gt=0)  # width*height; larger -> 413, not decoded
    max_images_per_request: int = Field(64, gt=0)  # multipart `file` fields per request

    # Security
    api_key: SecretStr | None = None  # when set, Bearer auth on all but health and metrics

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
    def worker_cores(self) -> int:
        """This worker's share of the CPU cores (all of them with one worker)."""
        return max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def intra_threads(self) -> int:
        """Threads inside one ORT run: ``intra_op_threads``, or the worker's cores over the
        instances."""
        return self.intra_op_threads or max(1, self.worker_cores // self.instances)

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
