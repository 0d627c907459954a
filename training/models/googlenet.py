"""GoogLeNet, Inception v1 (Szegedy et al., "Going Deeper with Convolutions", 2014).

Stem (7x7/2 conv, pool, 1x1 and 3x3 convs, pool), nine Inception modules (3a-3b, pool, 4a-4e,
pool, 5a-5b), global average pooling, dropout 0.4 and one FC layer: 224 -> 112 -> 56 -> 28 ->
14 -> 7 -> 1. The stride-2 layers pad one pixel more after (bottom/right) than before, as
TensorFlow's ``"same"`` padding does: ``(224 - 7 + 2 + 3)/2 + 1 = 112`` and
``(112 - 3 + 0 + 1)/2 + 1 = 56``. Each Inception module concatenates a 1x1 conv, a 1x1 -> 3x3
conv, a 1x1 -> 5x5 conv and a 3x3/1 max-pool -> 1x1 conv, all of which keep the size.

BatchNorm after every conv is on by default (``batchnorm=False``: the paper's layout, without
local response normalisation). The two auxiliary classifiers (after 4a and 4d) are off by
default; with ``aux_logits=True`` a model in training mode returns ``(logits, aux1, aux2)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from training.models.base import ConvNet
from training.models.layers import (
    Activation,
    conv_block,
    fc_block,
    init_weights,
    make_pool,
    parse_activation,
)
from training.models.registry import register_model
from training.models.shapes import Window, to_size, trace_sizes

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection), Table 1 of the paper.
INCEPTION: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
SAME2 = (0, 1)  # "same" padding of a 3x3/2 pool on an even input
STEM = [Window("stem conv 1", 7, 2, (2, 3)), Window("stem pool 1", 3, 2, SAME2),
        Window("stem conv 2", 1), Window("stem conv 3", 3, 1, 1),
        Window("stem pool 2", 3, 2, SAME2)]
WINDOWS = [*STEM, Window("pool 3", 3, 2, SAME2), Window("pool 4", 3, 2, SAME2)]
AUX_WINDOWS = [*WINDOWS[:6], Window("aux pool", 5, 3)]  # input -> 4a/4d -> auxiliary heads


class Inception(nn.Module):
    """Four parallel branches concatenated along the channels; the size is kept."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int],
                 act: Activation, batchnorm: bool) -> None:
        super().__init__()
        c1, c3r, c3, c5r, c5, proj = widths

        def conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
            return conv_block(cin, cout, kernel, padding=kernel // 2, act=act,
                              batchnorm=batchnorm)

        self.branch1 = conv(in_channels, c1, 1)
        self.branch2 = nn.Sequential(conv(in_channels, c3r, 1), conv(c3r, c3, 3))
        self.branch3 = nn.Sequential(conv(in_channels, c5r, 1), conv(c5r, c5, 5))
        self.branch4 = nn.Sequential(make_pool("max", 3, 1, 1), conv(in_channels, proj, 1))
        self.out_channels = c1 + c3 + c5 + proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class AuxHead(nn.Module):
    """Auxiliary classifier: 5x5/3 average pool, 1x1 conv 128, FC 1024, dropout 0.7, FC.

    ``size`` is the pooled map's ``(height, width)``, traced by the caller.
    """

    def __init__(self, in_channels: int, size: tuple[int, int], num_classes: int,
                 act: Activation, batchnorm: bool) -> None:
        super().__init__()
        height, width = size
        self.features = nn.Sequential(make_pool("avg", 5, 3),
                                      conv_block(in_channels, 128, 1, act=act,
                                                 batchnorm=batchnorm), nn.Flatten())
        self.fc = fc_block(128 * height * width, 1024, act, dropout=0.7)
        self.classifier = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))


class GoogLeNet(ConvNet):
    """GoogLeNet (Inception v1); see the module docstring.

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        input_size: Input side or ``(height, width)``: 224, or any multiple of 32.
        act: The activation of every conv.
        batchnorm: BatchNorm after every conv.
        dropout: Dropout before the classifier.
        aux_logits: Build the two auxiliary classifiers (used only in training mode).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3,
                 input_size: int | Sequence[int] = 224, act: Activation | None = None,
                 batchnorm: bool = True, dropout: float = 0.4,
                 aux_logits: bool = False) -> None:
        super().__init__()
        act = act or Activation()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = self.default_input_size = to_size(input_size)
        aux_paths = [AUX_WINDOWS] if aux_logits else []
        sizes = trace_sizes(input_size, WINDOWS, model="googlenet", also=aux_paths)
        block = functools.partial(conv_block, act=act, batchnorm=batchnorm)
        self.stem = nn.Sequential(
            block(in_channels, 64, 7, 2, (2, 3)), make_pool("max", 3, 2, SAME2),
            block(64, 64, 1), block(64, 192, 3, 1, 1),
            make_pool("max", 3, 2, SAME2))
        self.inception3 = self._stage(192, ["3a", "3b"], act, batchnorm)
        self.pool3 = make_pool("max", 3, 2, SAME2)
        self.inception4 = self._stage(480, ["4a", "4b", "4c", "4d", "4e"], act, batchnorm)
        self.pool4 = make_pool("max", 3, 2, SAME2)
        self.inception5 = self._stage(832, ["5a", "5b"], act, batchnorm)
        self.num_features = 1024
        self.feature_shape = (1024, *sizes[-1])
        self.aux_logits = aux_logits
        if aux_logits:
            aux_size = trace_sizes(input_size, AUX_WINDOWS, model="googlenet",
                                   also=[WINDOWS])[-1]
            self.aux1 = AuxHead(512, aux_size, num_classes, act, batchnorm)
            self.aux2 = AuxHead(528, aux_size, num_classes, act, batchnorm)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1024, num_classes)
        init_weights(self, act)

    @staticmethod
    def _stage(in_channels: int, names: list[str], act: Activation,
               batchnorm: bool) -> nn.Sequential:
        modules = []
        for name in names:
            modules.append(Inception(in_channels, INCEPTION[name], act, batchnorm))
            in_channels = modules[-1].out_channels
        return nn.Sequential(*modules)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps after Inception 5b, ``[N, 1024, H/32, W/32]``."""
        x = self.pool3(self.inception3(self.stem(x)))
        return self.inception5(self.pool4(self.inception4(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: global average pool -> dropout -> FC."""
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> Any:
        """Logits; ``(logits, aux1, aux2)`` in training mode with ``aux_logits``."""
        if not (self.aux_logits and self.training):
            return super().forward(x)
        x = self.pool3(self.inception3(self.stem(x)))
        x = self.inception4[0](x)  # 4a
        aux1 = self.aux1(x)
        x = self.inception4[1:4](x)  # 4b-4d
        aux2 = self.aux2(x)
        x = self.inception5(self.pool4(self.inception4[4](x)))
        return self.forward_head(x), aux1, aux2

    def reset_classifier(self, num_classes: int) -> None:
        """A new FC classifier (and new auxiliary classifiers) for ``num_classes``."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(1024, num_classes)
        if self.aux_logits:
            self.aux1.classifier = nn.Linear(1024, num_classes)
            self.aux2.classifier = nn.Linear(1024, num_classes)

    def head_parameters(self) -> list[nn.Parameter]:
        """The classifier's (and auxiliary classifiers') last FC weights and biases."""
        heads = [self.classifier]
        if self.aux_logits:
            heads += [self.aux1.classifier, self.aux2.classifier]
        return [p for head in heads for p in head.parameters()]


@register_model("googlenet")
def googlenet(num_classes: int = 1000, in_channels: int = 3,
              input_size: int | Sequence[int] = 224,
              activation: str | Mapping[str, Any] = "relu", batchnorm: bool = True,
              dropout: float = 0.4, aux_logits: bool = False) -> GoogLeNet:
    """GoogLeNet (Inception v1) at 224x224, BatchNorm on, auxiliary classifiers off."""
    return GoogLeNet(num_classes, in_channels, input_size, parse_activation(activation), batchnorm,
                     dropout, aux_logits)
