"""LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
recognition", 1998): the classic 32x32 grey digit classifier.

C1 6@5x5 -> S2 pool 2/2 -> C3 16@5x5 -> S4 pool 2/2 -> C5 120@5x5 -> F6 84 -> output. At 32x32
the maps are 28, 14, 10, 5 and 1 pixels. On 28x28 MNIST the first convolution pads by 2, which
gives exactly the same sizes (``(28 - 5 + 2*2)/1 + 1 = 28``). The classic tanh activations and
average pooling are the defaults; both are configurable (``activation="relu", pool="max"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.models.generic import CNNSpec, PatternCNN
from training.models.registry import register_model
from training.models.shapes import to_size


def lenet5_spec(padding: int = 0, activation: str | Mapping[str, Any] = "tanh",
                pool: str = "avg", batchnorm: bool = False, dropout: float = 0.0) -> CNNSpec:
    """LeNet-5's layers; ``padding`` applies to C1."""
    return CNNSpec.from_dict({
        "stages": [
            {"convs": [{"out_channels": 6, "kernel": 5, "padding": padding}],
             "pool": {"kind": pool, "kernel": 2, "stride": 2}},
            {"convs": [{"out_channels": 16, "kernel": 5}],
             "pool": {"kind": pool, "kernel": 2, "stride": 2}},
            {"convs": [{"out_channels": 120, "kernel": 5}], "pool": None},
        ],
        "fc": [84],
        "activation": activation,
        "batchnorm": batchnorm,
        "dropout": dropout,
    })


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1,
           input_size: int | Sequence[int] = 32, padding: int | None = None,
           activation: str | Mapping[str, Any] = "tanh", pool: str = "avg",
           batchnorm: bool = False, dropout: float = 0.0) -> PatternCNN:
    """LeNet-5 at 32x32 (classic) or 28x28 (MNIST as is).

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        input_size: Input side or ``(height, width)``.
        padding: C1's padding; ``None`` pads 28x28 inputs by 2 (so C1 gives 28x28 maps, as at
            32x32) and other sizes by 0.
        activation: relu | leaky_relu | maxout | tanh | sigmoid (or a dict with options).
        pool: avg (classic subsampling) | max.
        batchnorm: BatchNorm after every conv (not in the original).
        dropout: Dropout before the output layer (not in the original).
    """
    if padding is None:
        padding = 2 if to_size(input_size) == (28, 28) else 0
    spec = lenet5_spec(padding, activation, pool, batchnorm, dropout)
    return PatternCNN(spec, num_classes, in_channels, input_size, arch="lenet5")
