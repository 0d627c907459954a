"""What ``explain`` costs against ``classify``, and what the maps cost ``classify``, in one run.

Two measurements, each interleaved round by round in rotated order (this machine drifts; the
median of the round-by-round ratios is what to read):

1. **ONNX Runtime, classify's graph** (one image, the service's session options with one thread):
   the shipped ``model.onnx`` (with its feature-map output, never asked for by classify) against
   the same graph without it (the graph before the upgrade, rebuilt by removing that output), and
   against the rejected design, a ``cam`` output of all classes' maps in the same graph (ONNX
   Runtime computes every node, whatever outputs a run asks for).
2. **HTTP, in process** (Starlette's TestClient, the service's full path minus the socket):
   ``POST .../classify`` against ``POST .../explain`` (json and png) on the same photo, for each
   model given (default: MobileNetV2, CAM; LeNet-5, occlusion).

Usage::

    python scripts/bench_explain.py [--rounds 200] [--models imagenet-mobilenetv2,mnist-lenet5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from training import cam
from training.assets import fetch

REPO = Path(__file__).resolve().parents[1]


def _interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for number in range(rounds):
        # Rotated, so that no call always follows another (or itself: warm caches).
        for name in names[number % len(names):] + names[:number % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _report(times: dict[str, list[float]], base: str) -> None:
    """Median and p10 of each, and the median of its ratio to ``base`` round by round."""
    reference = np.array(times[base])
    for name, values in times.items():
        ratio = float(np.median(np.array(values) / reference))
        print(f"  {name:<44} median {1000 * statistics.median(values):8.2f} ms   "  # noqa: T201
              f"p10 {1000 * float(np.percentile(values, 10)):8.2f} ms   x{ratio:.3f} (paired)")


def _without_features(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph before the upgrade: only its ``probabilities`` output."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.output[1:]
    return result


def _with_all_maps(model: onnx.ModelProto) -> onnx.ModelProto:
    """The rejected design: every class's map as a second output of the same graph."""
    result = _without_features(model)
    head = cam.find_head(result)
    weight = next(i for i in result.graph.initializer if i.name == head.weight)
    matrix = onnx.numpy_helper.to_array(weight)
    matrix = matrix if head.trans_b else matrix.T
    result.graph.initializer.append(onnx.numpy_helper.from_array(
        np.ascontiguousarray(matrix[:, :, None, None]), "all_maps_weight"))
    result.graph.node.append(helper.make_node("Conv", [head.features, "all_maps_weight"],
                                              ["cam"], kernel_shape=[1, 1]))
    result.graph.output.append(helper.make_tensor_value_info("cam", onnx.TensorProto.FLOAT, None))
    return result


def bench_graphs(rounds: int) -> None:
    path = REPO / "models" / "imagenet-mobilenetv2" / "1" / "model.onnx"
    model = onnx.load(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1

    def session(proto: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(proto.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])

    before, shipped, rejected = (session(_without_features(model)), session(model),
                                 session(_with_all_maps(model)))
    image = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    feed = {"image": image}
    same = np.array_equal(before.run(["probabilities"], feed)[0],
                          shipped.run(["probabilities"], feed)[0])
    print(f"ONNX Runtime, imagenet-mobilenetv2, batch 1, 1 thread, {rounds} rounds "  # noqa: T201
          f"(probabilities identical: {same})")
    _report(_interleaved({
        "classify graph before the upgrade": lambda: before.run(["probabilities"], feed),
        "shipped graph (features output not asked)": lambda: shipped.run(["probabilities"], feed),
        "rejected: all maps in the graph, not asked": lambda: rejected.run(["probabilities"],
                                                                           feed),
    }, rounds), "classify graph before the upgrade")


def bench_http(models: list[str], rounds: int) -> None:
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.settings import load_settings

    photo = fetch("chelsea").read_bytes()
    files = {"file": ("chelsea.png", photo)}
    settings = load_settings(models_dir=REPO / "models", providers="CPU")
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.1)
        for name in models:
            url = f"/v1/models/{name}"
            calls: dict[str, Callable[[], object]] = {
                "classify": lambda url=url: client.post(f"{url}/classify", files=files),
                "explain (json)": lambda url=url: client.post(f"{url}/explain", files=files),
                "explain (png)": lambda url=url: client.post(f"{url}/explain?format=png",
                                                             files=files)}
            for call in calls.values():
                response = call()
                assert response.status_code == 200, response.text  # type: ignore[attr-defined]
            method = client.post(f"{url}/explain", files=files).json()["method"]
            print(f"HTTP in process, {name} ({method}), skimage chelsea 451x300 PNG, "  # noqa: T201
                  f"{rounds} rounds")
            _report(_interleaved(calls, rounds), "classify")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--models", default="imagenet-mobilenetv2,mnist-lenet5")
    args = parser.parse_args()
    bench_graphs(args.rounds)
    bench_http(args.models.split(","), max(20, args.rounds // 4))


if __name__ == "__main__":
    main()
