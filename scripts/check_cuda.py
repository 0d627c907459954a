"""Check the CUDA path on a GPU host: does it load, does it answer like the CPU, how fast.

For every model under ``--models`` it loads each graph twice through ``service.runtime``, once
with the CUDA provider first and once on the CPU alone, and prints:

* the providers the CUDA-first session really uses (ONNX Runtime falls back silently);
* for classifiers, on real photos prepared as the service does: the largest difference between
  the CUDA and CPU probabilities and whether the top-1 class agrees;
* ORT latency of a batch of 1 and throughput of a batch of ``--batch`` on each provider.

For each ImageNet classifier it times runs whose batch size changes from run to run (as dynamic
batching makes them) on one session against a session per size (``Session.with_batch_sessions``,
what the service does off the CPU), and, for each ``cuda_conv_algo_search`` setting, the first
run at each new batch size (cuDNN picks its kernels then) against the steady runs after it.

Then it starts the app in-process with CUDA first, and reports ``GET /v1/models``' providers,
one ``classify`` and one ``expressions`` request, and the first and second ``expressions``
request at three new photo sizes (MTCNN's shapes follow the photo). Exits 1 when CUDA did not
load.

Usage::

    python scripts/check_cuda.py [--models models] [--batch 32] [--runs 30] [--no-algo-search]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CUDA = "CUDAExecutionProvider"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "flower", "squirrel")


def per_run_ms(run, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median milliseconds of ``run()`` after two unmeasured runs."""
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def check_model(path: Path, batch_size: int, repeats: int) -> bool:
    """Print one model's CUDA-vs-CPU figures; returns whether its sessions run on CUDA."""
    from service.imaging import prepare
    from service.model_version import load_version
    from service.settings import load_settings
    from training.assets import fetch

    name, version = path.parent.name, int(path.name)
    loaded = {p: load_version(name, version, path, load_settings(providers=[p, "CPU"] if p ==
                                                                   "CUDA" else ["CPU"]))
              for p in ("CUDA", "CPU")}
    detector = loaded["CUDA"].task == "face-detection"  # on the CPU by design (see repository)
    on_cuda = loaded["CUDA"].providers[0] == CUDA or detector
    print(f"{name}/{version}: {loaded['CUDA'].task}, CUDA-first session uses "
          f"{', '.join(loaded['CUDA'].providers)}{' (detectors run on the CPU)' * detector}")
    model = loaded["CUDA"]
    if model.input is None or model.task not in {"classification", "expression"}:
        return on_cuda
    photos = np.stack([prepare(fetch(p).read_bytes(), model.input, 10**9).array for p in PHOTOS])
    probs = {p: v.infer(photos) for p, v in loaded.items()}
    diff = float(np.abs(probs["CUDA"] - probs["CPU"]).max())
    agree = int((probs["CUDA"].argmax(1) == probs["CPU"].argmax(1)).sum())
    print(f"  {len(PHOTOS)} photos: max |p_cuda - p_cpu| = {diff:.2e}, "
          f"top-1 agrees on {agree}/{len(PHOTOS)}")
    big = np.resize(photos, (batch_size, *photos.shape[1:]))
    for provider, version_ in loaded.items():
        one = per_run_ms(lambda v=version_: v.infer(photos[:1]), repeats)
        many = per_run_ms(lambda v=version_: v.infer(big), repeats)
        print(f"  {provider:4s}: batch 1 {one:7.2f} ms   batch {batch_size} {many:7.2f} ms "
              f"= {batch_size / many * 1000:8.0f} img/s")
    return on_cuda


def check_shape_changes(path: Path, rounds: int = 8) -> None:
    """Milliseconds (wall and CPU) per run when the batch size changes every run: one session
    against a session per size. On an H200 the CUDA provider re-planned its convolutions at
    every change (MobileNetV2: 711 ms per run against 1.9 ms)."""
    from service.imaging import InputSpec
    from service.runtime import create_session, padded_batch_sizes
    from service.settings import load_settings

    settings = load_settings(models_dir=path.parents[1], providers=["CUDA", "CPU"])
    spec = InputSpec.from_json(json.loads((path / "model.json").read_text())["input"])
    sizes = padded_batch_sizes(32)
    feeds = {n: {"image": np.zeros((n, spec.height, spec.width, spec.channels), np.uint8)}
             for n in sizes}
    one = create_session(path / "model.onnx", settings)
    for name, session in (("one session", one),
                          ("a session per size", one.with_batch_sessions(sizes, settings))):
        for n in sizes:  # every size's first run (kernel choice) is not timed
            session.run(feeds[n], alone=False)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            for n in sizes:
                session.run(feeds[n], alone=False)
        runs = rounds * len(sizes)
        print(f"  batch sizes {sizes[0]}..{sizes[-1]} in turn, {name}: "
              f"{(time.perf_counter() - wall) * 1000 / runs:.2f} ms per run, "
              f"CPU {(time.process_time() - cpu) * 1000 / runs:.2f} ms")


def check_algo_search(path: Path, repeats: int) -> None:
    """First run at each new batch size, then steady runs, for each conv algorithm search."""
    from service.imaging import InputSpec
    from service.runtime import create_session
    from service.settings import load_settings

    spec = InputSpec.from_json(json.loads((path / "model.json").read_text())["input"])
    shape = (spec.height, spec.width, spec.channels)
    for mode in ("exhaustive", "heuristic", "default"):
        settings = load_settings(models_dir=path.parents[1], providers=["CUDA", "CPU"],
                                 cuda_conv_algo_search=mode)
        session = create_session(path / "model.onnx", settings)
        first = []
        for size in (1, 2, 3, 4, 8, 16, 31, 32):
            batch = np.zeros((size, *shape), np.uint8)
            start = time.perf_counter()
            session.run({"image": batch})
            first.append(f"{size}:{(time.perf_counter() - start) * 1000:.0f}")
        steady = {}
        for size in (1, 32):
            feed = {"image": np.zeros((size, *shape), np.uint8)}
            steady[size] = per_run_ms(lambda s=session, f=feed: s.run(f), repeats)
        print(f"  conv search {mode:10s}: first run ms by batch size {' '.join(first)}; "
              f"steady batch 1 {steady[1]:.2f} ms, batch 32 {steady[32]:.2f} ms")


def check_app(models: Path) -> None:
    """One request per endpoint through the app, CUDA first."""
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.settings import load_settings
    from training.assets import fetch

    app = create_app(load_settings(models_dir=models, providers=["CUDA", "CPU"]))
    with TestClient(app) as client:
        deadline = time.monotonic() + 300
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        for model in client.get("/v1/models").json()["models"]:
            print(f"GET /v1/models: {model['name']}: {model['versions'][0].get('providers')}")
        photo = fetch("chelsea").read_bytes()
        answer = client.post("/v1/models/imagenet-mobilenetv2/classify",
                             files={"file": ("chelsea.png", photo)}, params={"top_k": 3})
        print("classify chelsea:", answer.status_code, answer.text[:300])
        faces = client.post("/v1/expressions",
                            files={"file": ("photo", fetch("multi-face").read_bytes())})
        print("expressions multi-face:", faces.status_code, faces.text[:400])
        check_new_photo_sizes(client, fetch("multi-face").read_bytes())


def check_new_photo_sizes(client: Any, photo: bytes) -> None:
    """MTCNN's pyramid changes shape with the photo's size: time the first and the second
    expressions request at a few sizes (a new shape may cost a GPU provider its first run)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(photo)).convert("RGB")
    for scale in (0.9, 0.75, 0.6):
        resized = image.resize((int(image.width * scale), int(image.height * scale)))
        data = io.BytesIO()
        resized.save(data, "JPEG", quality=90)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            answer = client.post("/v1/expressions", files={"file": ("photo", data.getvalue())})
            times.append((time.perf_counter() - start) * 1000)
        print(f"expressions {resized.width}x{resized.height}: {answer.status_code}, first "
              f"{times[0]:.0f} ms, again {times[1]:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--batch", type=int, default=32, help="batch size for throughput")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per figure")
    parser.add_argument("--no-algo-search", action="store_true",
                        help="skip the cuDNN algorithm search timings (the slowest part)")
    args = parser.parse_args()

    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, available: {', '.join(ort.get_available_providers())}")
    paths = [p for p in sorted(args.models.glob("*/[0-9]*")) if (p / "model.json").exists()]
    on_cuda = [check_model(path, args.batch, args.runs) for path in paths]
    for path in paths:
        if path.parent.name.startswith("imagenet-"):
            print(f"{path.parent.name}: batch size changing from run to run")
            check_shape_changes(path)
    for path in paths if not args.no_algo_search else []:
        if path.parent.name.startswith("imagenet-"):
            print(f"{path.parent.name}: cuDNN algorithm search")
            check_algo_search(path, args.runs)
    check_app(args.models)
    return 0 if on_cuda and all(on_cuda) else 1


if __name__ == "__main__":
    raise SystemExit(main())
