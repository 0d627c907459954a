"""MTCNN's three networks (Zhang et al. 2016) with facenet-pytorch's weights, exported to ONNX.

The modules match ``facenet_pytorch.models.mtcnn`` parameter for parameter, so the state dicts
shipped in ``facenet-pytorch==2.6.0`` (``pnet.pt``, ``rnet.pt``, ``onet.pt``) load strictly; they
are fetched and sha256-verified by :func:`training.assets.fetch`, without installing the package
(its metadata pins torch<2.3).

For ONNX each network is wrapped by :class:`DetectorGraph`: input ``image`` is float32 NHWC RGB
pixels in [0, 255] (already area-resampled by ``service/faces.py``), and the graph does MTCNN's
normalisation ``(x - 127.5) / 128`` itself. Outputs are ``scores`` (the face probability) and
``regression`` (box offsets); O-Net adds ``landmarks``. P-Net is fully convolutional, so its
height and width are dynamic: one graph serves every level of the image pyramid.

``python -m training ship --only face-mtcnn`` ships them with their ``model.json`` as
``models/face-mtcnn/<version>/`` (:mod:`training.ship_faces`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from training.assets import ASSETS, fetch
from training.errors import ExportError

logger = logging.getLogger(__name__)

THRESHOLDS = (0.6, 0.7, 0.7)
MIN_FACE_SIZE = 20
FACTOR = 0.709


class PNet(nn.Module):
    """Proposal network: 12x12 windows, stride 2. Outputs ``(regression, probabilities)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops. Outputs ``(regression, probabilities)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).flatten(1)  # the original (Caffe) weights' W, H, C order
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48x48 crops. Outputs ``(regression, landmarks, probabilities)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


NETWORKS: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}
CROP_SIZES = {"pnet": None, "rnet": 24, "onet": 48}  # None: any size >= 12 (dynamic H, W)


def load_network(name: str) -> nn.Module:
    """``"pnet"``, ``"rnet"`` or ``"onet"`` with facenet-pytorch's weights, in eval mode."""
    if name not in NETWORKS:
        raise KeyError(f"unknown MTCNN network {name!r}; valid: {', '.join(NETWORKS)}")
    model = NETWORKS[name]()
    state = torch.load(fetch(f"mtcnn-{name}"), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class DetectorGraph(nn.Module):
    """What goes into ONNX: NHWC float pixels in [0, 255] -> MTCNN normalisation -> network.

    Outputs ``scores`` (face probability; ``[N, H', W']`` for P-Net, ``[N]`` otherwise), then
    ``regression`` (``[N, 4, H', W']`` or ``[N, 4]``) and, for O-Net, ``landmarks`` ``[N, 10]``
    (five x offsets, then five y offsets, relative to the box).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (image.permute(0, 3, 1, 2) - 127.5) * 0.0078125
        outputs = self.network(x)
        probabilities = outputs[-1]
        return (probabilities[:, 1], *outputs[:-1])


def output_names(name: str) -> list[str]:
    """ONNX output names of one network."""
    return ["scores", "regression"] + (["landmarks"] if name == "onet" else [])


def export_network(name: str, path: Path, opset: int = 17) -> None:
    """Export one network to ``path``, check it, and compare ONNX Runtime with PyTorch.

    Raises:
        ExportError: ``onnx.checker`` rejects the graph, or ONNX Runtime differs from PyTorch by
            more than 1e-4.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    graph = DetectorGraph(load_network(name)).eval()
    size = CROP_SIZES[name]
    sample = torch.rand(2, size or 37, size or 53, 3) * 255
    axes = {0: "batch"} if size else {0: "batch", 1: "height", 2: "width"}
    outputs = output_names(name)
    dynamic = {"image": axes} | {o: {0: "batch"} for o in outputs}
    if not size:
        dynamic = {"image": axes, "scores": {0: "batch", 1: "out_height", 2: "out_width"},
                   "regression": {0: "batch", 2: "out_height", 3: "out_width"}}
    torch.onnx.export(graph, (sample,), str(path), input_names=["image"], output_names=outputs,
                      dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as error:  # noqa: BLE001 - checker raises several types
        raise ExportError(f"onnx.checker rejected {name}: {error}") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = torch.rand(3, size or 61, size or 45, 3) * 255  # other sizes than the traced ones
    with torch.inference_mode():
        expected = [t.numpy() for t in graph(check)]
    actual = session.run(outputs, {"image": check.numpy()})
    for out, want, got in zip(outputs, expected, actual, strict=True):
        if want.shape != got.shape or not np.allclose(want, got, atol=1e-4):
            raise ExportError(f"{name} output {out}: ONNX Runtime differs from PyTorch by "
                                 f"{np.abs(want - got).max()} (shapes {want.shape}, {got.shape})")
    logger.info("exported %s to %s", name, path)


def provenance() -> list[dict[str, str]]:
    """``source_weights`` entries of the three weight files."""
    return [{"package": ASSETS[f"mtcnn-{n}"].package, "file": ASSETS[f"mtcnn-{n}"].member,
             "sha256": ASSETS[f"mtcnn-{n}"].sha256, "licence": ASSETS[f"mtcnn-{n}"].licence}
            for n in NETWORKS]
