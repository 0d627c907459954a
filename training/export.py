"""Export a CNN to the model repository: ONNX with the preprocessing inside, checked, + model.json.

Every convserve model leaves training through :func:`export_model` (and
:func:`training.export_run.export_checkpoint`, its front end for training runs). The exported
graph takes ``image``, uint8 ``[N, H, W, C]`` (RGB or grey), scales it to [0, 1], applies the
model's :class:`~training.data.preprocessing.Preprocessing` (mean/std, whitening, grey -> RGB),
runs the network and returns ``probabilities``, float32 ``[N, K]`` after softmax
(docs/model-format.md).

Each export is checked before anything is written to the repository: ``onnx.checker``, the
graph's input/output signature, the file size against the weights' (no duplicated weights),
and ONNX Runtime (CPU) against PyTorch on real images, one at a time and as one batch (the
batch axis is dynamic), within ``tolerance`` (max absolute difference of probabilities).
A network ending in global average pooling + a linear classifier also gets class activation
maps (:func:`training.cam.add_explain`: a ``features`` output and ``explain.onnx``), checked.
A model that fails raises :class:`ExportError` and leaves nothing in ``models/``. ``model.onnx`` is
written first, ``model.json`` (a :class:`model_format.ClassifierCard`, validated before
the export starts) last and atomically.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from pydantic import ValidationError

from model_format import ClassifierCard, Explain, describe
from training.assets import sha256_of
from training.cam import add_explain, prefer
from training.errors import ExportError
from training.publish import check_target, provenance, publish

logger = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4
EXPORTER = "convserve.training.export"
# model.onnx may exceed the weights' bytes by this fraction plus this many bytes (graph, shapes).
SIZE_SLACK = (0.05, 256 * 1024)


class ExportWrapper(nn.Module):
    """uint8 NHWC ``image`` -> [0, 1] NCHW -> preprocessing -> model -> softmax."""

    def __init__(self, model: nn.Module, preprocess: nn.Module | None = None) -> None:
        super().__init__()
        self.preprocess = preprocess if preprocess is not None else nn.Identity()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        return torch.softmax(self.model(self.preprocess(x)), dim=1)


@dataclass
class ExportSpec:
    """What goes into ``model.json`` besides the graph.

    Attributes:
        name: Repository name (lower-case letters, digits, ``-``).
        version: Positive integer.
        labels: Class names in output order.
        height: Graph input height.
        width: Graph input width.
        channels: Graph input channels (1 grey, 3 RGB).
        resize: ``input.resize`` block (e.g. ``EvalPreset.to_json()``).
        preprocessing: ``preprocessing`` block (e.g. ``Preprocessing.to_json()``).
        task: ``classification`` or ``expression``.
        metrics: ``{"measured": {...}}`` and/or ``{"reported": {...}}``.
        source_weights: Provenance of reused weights (package, file, sha256).
        config: The resolved training config, or None.
        extra: More top-level keys (e.g. photo sanity results).
        prefer_occlusion: Keep the class activation maps but make occlusion the default
            explanation, for this (measured) reason.
    """

    name: str
    version: int
    labels: list[str]
    height: int
    width: int
    channels: int
    resize: dict[str, Any]
    preprocessing: dict[str, Any]
    task: str = "classification"
    metrics: dict[str, Any] = field(default_factory=dict)
    source_weights: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    prefer_occlusion: str | None = None

    def validate(self) -> None:
        """Raise :class:`ExportError` if a field breaks the model format
        (:mod:`model_format`, docs/model-format.md)."""
        card(self, onnx_sha256="0" * 64, export_check=None)


def _trace(wrapper: ExportWrapper, sample: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(wrapper, (sample,), str(path), input_names=["image"],
                          output_names=["probabilities"], opset_version=opset,
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                          do_constant_folding=True, dynamo=False)


def check_signature(path: Path, input_name: str, size: tuple[int, int, int],
                    outputs: list[str]) -> None:
    """The graph's contract with the service: one input ``input_name``, uint8
    ``[batch, H, W, C]`` with a dynamic batch, and float32 ``outputs`` (others may follow).

    Raises:
        ExportError: naming what the graph has instead.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if len(graph.input) != 1:
        raise ExportError(f"graph inputs are {[i.name for i in graph.input]}, expected one")
    (image,) = graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    expected = list(size)
    if (image.name != input_name or image.type.tensor_type.elem_type != onnx.TensorProto.UINT8
            or dims[1:] != expected or not isinstance(dims[0], str)):
        raise ExportError(f"graph input is {image.name} {dims}, expected {input_name} uint8 "
                          f"[batch, {', '.join(map(str, expected))}] with a dynamic batch")
    found = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    for name in outputs:
        if found.get(name) != onnx.TensorProto.FLOAT:
            raise ExportError(f"graph outputs are {sorted(found)}, expected float32 {name}")


def _check_graph(path: Path, spec: ExportSpec, weight_bytes: int) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # noqa: BLE001 - checker raises several types
        raise ExportError(f"onnx.checker rejected the graph: {error}") from None
    check_signature(path, "image", (spec.height, spec.width, spec.channels),
                    ["probabilities"])
    size, limit = path.stat().st_size, weight_bytes * (1 + SIZE_SLACK[0]) + SIZE_SLACK[1]
    if size > limit:
        raise ExportError(f"model.onnx is {size} bytes but the weights are {weight_bytes}: "
                          "weights are duplicated in the graph (check shared modules/buffers)")


def check_parity(path: Path, wrapper: ExportWrapper, images: np.ndarray,
                 tolerance: float = TOLERANCE) -> float:
    """Max abs difference of ONNX Runtime (CPU) vs PyTorch, per image and as one batch.

    Raises:
        ExportError: the difference exceeds ``tolerance``, or rows do not sum to 1.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [images[i:i + 1] for i in range(len(images))] + [images]
    worst = 0.0
    with torch.inference_mode():
        for batch in batches:
            expected = wrapper(torch.from_numpy(batch)).numpy()
            (got,) = session.run(["probabilities"], {"image": batch})
            if got.shape != expected.shape:
                raise ExportError(f"ONNX Runtime gave shape {got.shape}, PyTorch {expected.shape}")
            worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= tolerance:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {worst:.3g} (max abs, on "
                          f"{len(images)} real images) > {tolerance:g}: the graph does not "
                          "compute what the model does (data-dependent Python control flow? "
                          "an op the tracer does not capture?); not writing it")
    sums = session.run(["probabilities"], {"image": images})[0].sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-4):
        raise ExportError(f"probabilities do not sum to 1: {sums}")
    return worst


def _weight_bytes(wrapper: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in wrapper.state_dict().values()
               if t.is_floating_point())


def export_model(model: nn.Module, spec: ExportSpec, images: np.ndarray, *,
                 preprocess: nn.Module | None = None, models_dir: str | Path = "models",
                 tolerance: float = TOLERANCE, opset: int = OPSET,
                 overwrite: bool = False) -> Path:
    """Export, check and write ``models_dir/<name>/<version>/{model.onnx, model.json}``.

    Args:
        model: The network (NCHW float in, logits out); exported in eval mode on the CPU.
        spec: Metadata; ``spec.height/width/channels`` is the graph's input size.
        images: Real images, uint8 ``[N, H, W, C]`` already resized to the input size (photos,
            test samples): the parity check runs on them.
        preprocess: Module mapping [0, 1] NCHW to the model's input (``Preprocessing.module()``).
        models_dir: The model repository.
        tolerance: Largest allowed |ORT - PyTorch| over the probabilities.
        opset: ONNX opset (>= 17).
        overwrite: Replace an existing version (otherwise refuse).

    Returns:
        The version directory.

    Raises:
        ExportError: a check failed; nothing is written.
    """
    spec.validate()
    if opset < OPSET:
        raise ExportError(f"opset must be >= {OPSET}, got {opset}")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (spec.height, spec.width, spec.channels):
        raise ExportError(f"parity images must be uint8 [N, {spec.height}, {spec.width}, "
                          f"{spec.channels}], got {images.shape}")
    if len(images) < 2:
        raise ExportError("give at least two real images for the parity check")
    target = check_target(models_dir, spec.name, spec.version, overwrite)
    wrapper = ExportWrapper(model, preprocess).cpu().eval()
    with torch.inference_mode():
        classes = wrapper(torch.from_numpy(images[:1])).shape[1]
    if classes != len(spec.labels):
        raise ExportError(f"the model has {classes} outputs but {len(spec.labels)} labels")
    with tempfile.TemporaryDirectory(prefix="convserve-export-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        _trace(wrapper, torch.from_numpy(images[:1]), onnx_path, opset)
        _check_graph(onnx_path, spec, _weight_bytes(wrapper))
        worst = check_parity(onnx_path, wrapper, images, tolerance)
        logger.info("%s v%d: ORT vs PyTorch max abs diff %.3g on %d images", spec.name,
                    spec.version, worst, len(images))
        explain = prefer(add_explain(Path(scratch), images),  # class activation maps
                         spec.prefer_occlusion)  # (training/cam.py)
        meta = card(spec, sha256_of(onnx_path), {
            "opset": opset, "onnxruntime_vs_pytorch_max_abs_diff": worst,
            "images": len(images), "tolerance": tolerance}, explain)
        files = ["model.onnx"] + ([explain.file] if explain is not None and explain.file
                                  else [])
        publish(Path(scratch), files, meta, target)
    return target


def card(spec: ExportSpec, onnx_sha256: str, export_check: dict[str, Any] | None,
         explain: Explain | None = None) -> ClassifierCard:
    """The validated ``model.json`` of an export (:class:`model_format.ClassifierCard`).

    Raises:
        ExportError: a field breaks the format; the message names it.
    """
    document = {
        "name": spec.name, "version": spec.version, "task": spec.task,
        "labels": list(spec.labels),
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "height": spec.height,
                  "width": spec.width, "channels": spec.channels, "resize": spec.resize},
        "output": {"name": "probabilities", "dtype": "float32"},
        "preprocessing": spec.preprocessing,
        "metrics": spec.metrics,
        "provenance": provenance(
            EXPORTER, source_weights=spec.source_weights, config=spec.config,
            **({"export_check": export_check} if export_check else {})),
        **spec.extra,
        "onnx_sha256": onnx_sha256,
        **({"explain": explain.model_dump(exclude_none=True)} if explain else {}),
    }
    try:
        return ClassifierCard.model_validate(document)
    except ValidationError as error:
        raise ExportError(f"model.json of {spec.name!r}: {describe(error)}") from None


def photo_batch(names: Sequence[str], preset: Any) -> np.ndarray:
    """Real photos from :mod:`training.assets` through an eval preset, as uint8 NHWC."""
    from PIL import Image

    from training.assets import fetch

    batch = []
    for name in names:
        with Image.open(fetch(name)) as image:
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        batch.append(to_uint8_hwc(preset(pixels)))
    return np.stack(batch)


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """A [0, 1] CHW image as the graph takes it: uint8 HWC."""
    return (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


PARITY_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
