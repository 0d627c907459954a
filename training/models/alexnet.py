"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012) and ZFNet (Zeiler, Fergus, 2013).

Both are the pattern ``[[CONV -> ReLU]*N -> POOL]*3 -> [FC -> ReLU]*2 -> FC`` with 96, 256,
384, 384 and 256 maps (the original two-GPU widths on one device) and two 4096-wide FC layers
with dropout 0.5. Local response normalisation is left out (``batchnorm=True`` adds BatchNorm
instead).

AlexNet's sizes work out at 227x227, not the 224 of the paper: ``(227 - 11)/4 + 1 = 55`` but
``(224 - 11)/4 + 1 = 54.25``. At 224 the first conv therefore pads by ``(1, 2)`` (top/left,
bottom/right): ``stem_padding=None`` picks the least padding that makes that layer's output an
integer. ZFNet's 7x7/2 first layer gives the paper's 224 -> 110 -> 55 -> 26 -> 13 -> 6 maps with
one extra pixel of padding after (bottom/right) the first conv and the first two pools, as
TensorFlow's ``"same"`` padding does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.models.generic import CNNSpec, PatternCNN
from training.models.registry import register_model
from training.models.shapes import Padding, to_size

WIDTHS = (96, 256, 384, 384, 256)


def _spec(conv1: dict[str, Any], conv2: dict[str, Any], pools: Sequence[Padding], *,
          pool: str, activation: str | Mapping[str, Any], batchnorm: bool, dropout: float,
          fc_width: int) -> CNNSpec:
    def pool_spec(padding: Padding) -> dict[str, Any]:
        return {"kind": pool, "kernel": 3, "stride": 2, "padding": padding}

    return CNNSpec.from_dict({
        "stages": [
            {"convs": [{"out_channels": WIDTHS[0], **conv1}], "pool": pool_spec(pools[0])},
            {"convs": [{"out_channels": WIDTHS[1], **conv2}], "pool": pool_spec(pools[1])},
            {"convs": [{"out_channels": width, "kernel": 3, "padding": 1}
                       for width in WIDTHS[2:]], "pool": pool_spec(pools[2])},
        ],
        "fc": [fc_width, fc_width],
        "activation": activation,
        "batchnorm": batchnorm,
        "dropout": dropout,
    })


def least_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """The smallest ``(before, after)`` padding making ``(size - kernel + P)/stride`` whole."""
    total = (-(size - kernel)) % stride
    return total // 2, total - total // 2


@register_model("alexnet")
def alexnet(num_classes: int = 1000, in_channels: int = 3,
            input_size: int | Sequence[int] = 227, stem_padding: Padding | None = None,
            activation: str | Mapping[str, Any] = "relu", pool: str = "max",
            batchnorm: bool = False, dropout: float = 0.5, fc_width: int = 4096) -> PatternCNN:
    """AlexNet: 11x11/4 conv 96 -> pool -> 5x5 conv 256 -> pool -> 3x3 convs 384, 384, 256 ->
    pool -> FC 4096 -> FC 4096 -> FC.

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        input_size: Input side or ``(height, width)``: 227 (classic) or 224.
        stem_padding: The first conv's padding; ``None`` picks the least that works for the
            input width (0 at 227, ``(1, 2)`` at 224).
        activation: relu | leaky_relu | maxout | tanh | sigmoid (or a dict with options).
        pool: max | avg.
        batchnorm: BatchNorm after every conv (in place of local response normalisation).
        dropout: Dropout before the second and third FC layers.
        fc_width: Width of the two hidden FC layers.
    """
    if stem_padding is None:
        stem_padding = least_padding(to_size(input_size)[1], 11, 4)
        stem_padding = stem_padding[0] if stem_padding[0] == stem_padding[1] else stem_padding
    spec = _spec({"kernel": 11, "stride": 4, "padding": stem_padding},
                 {"kernel": 5, "padding": 2}, (0, 0, 0), pool=pool, activation=activation,
                 batchnorm=batchnorm, dropout=dropout, fc_width=fc_width)
    return PatternCNN(spec, num_classes, in_channels, input_size, arch="alexnet")


@register_model("zfnet")
def zfnet(num_classes: int = 1000, in_channels: int = 3,
          input_size: int | Sequence[int] = 224,
          activation: str | Mapping[str, Any] = "relu", pool: str = "max",
          batchnorm: bool = False, dropout: float = 0.5, fc_width: int = 4096) -> PatternCNN:
    """ZFNet: AlexNet with a 7x7/2 first conv and a 5x5/2 second conv (224 -> 110 -> 55 ->
    26 -> 13 -> 13 -> 6).

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        input_size: Input side or ``(height, width)`` (224; sides 32k work).
        activation: relu | leaky_relu | maxout | tanh | sigmoid (or a dict with options).
        pool: max | avg.
        batchnorm: BatchNorm after every conv.
        dropout: Dropout before the second and third FC layers.
        fc_width: Width of the two hidden FC layers.
    """
    spec = _spec({"kernel": 7, "stride": 2, "padding": (0, 1)}, {"kernel": 5, "stride": 2},
                 ((0, 1), (0, 1), 0), pool=pool, activation=activation,
                 batchnorm=batchnorm, dropout=dropout, fc_width=fc_width)
    return PatternCNN(spec, num_classes, in_channels, input_size, arch="zfnet")
