"""VGG (Simonyan, Zisserman, "Very Deep Convolutional Networks", 2014) and a small VGG for
48x48 grey faces.

VGG is the pattern ``[[CONV 3x3 -> ReLU]*N -> POOL 2x2/2]*5 -> [FC -> ReLU]*2 -> FC``: 3x3 convs
padded by 1 keep the size, each 2x2/2 pool halves it (224 -> 112 -> 56 -> 28 -> 14 -> 7), so the
input side must be a multiple of 2 to the number of stages. ``vgg11/13/16/19`` are the paper's
configurations A, B, D and E; ``vgg`` takes any depth and width, and ``vgg_small`` is four stages
of two BatchNorm convs (32, 64, 128, 256 maps) for FER2013's 48x48 faces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.models.generic import CNNSpec, PatternCNN
from training.models.registry import register_model
from training.models.shapes import LayerConfigError

# Convs per stage of the paper's configurations, by total weight layers (convs + 3 FC).
DEPTHS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


def vgg_spec(convs_per_stage: Sequence[int], widths: Sequence[int], fc: Sequence[int], *,
             activation: str | Mapping[str, Any] = "relu", pool: str = "max",
             batchnorm: bool = False, dropout: float = 0.5) -> CNNSpec:
    """Stages of 3x3/1 convs padded by 1, each followed by a 2x2/2 pool."""
    if len(convs_per_stage) != len(widths):
        raise LayerConfigError(f"vgg: {len(convs_per_stage)} stages in convs_per_stage but "
                               f"{len(widths)} widths; give one width per stage")
    return CNNSpec.from_dict({
        "stages": [{"convs": [{"out_channels": width, "kernel": 3, "padding": 1}] * count,
                    "pool": {"kind": pool, "kernel": 2, "stride": 2}}
                   for count, width in zip(convs_per_stage, widths, strict=True)],
        "fc": list(fc),
        "activation": activation,
        "batchnorm": batchnorm,
        "dropout": dropout,
    })


@register_model("vgg")
def vgg(num_classes: int = 1000, in_channels: int = 3, input_size: int | Sequence[int] = 224,
        depth: int = 16, convs_per_stage: Sequence[int] | None = None, width: int = 64,
        widths: Sequence[int] | None = None, fc: Sequence[int] = (4096, 4096),
        activation: str | Mapping[str, Any] = "relu", pool: str = "max",
        batchnorm: bool = False, dropout: float = 0.5, arch: str = "vgg") -> PatternCNN:
    """VGG of any depth and width.

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        input_size: Input side or ``(height, width)``; a multiple of ``2**stages``.
        depth: 11, 13, 16 or 19 (the paper's A, B, D, E); ignored with ``convs_per_stage``.
        convs_per_stage: Convs in each stage, e.g. ``[2, 2, 3]`` (a 3-stage VGG).
        width: Maps of the first stage, doubled each stage up to ``8 * width``.
        widths: Maps of each stage (overrides ``width``).
        fc: Widths of the hidden FC layers.
        activation: relu | leaky_relu | maxout | tanh | sigmoid (or a dict with options).
        pool: max | avg.
        batchnorm: BatchNorm after every conv.
        dropout: Dropout before every FC layer after the first.
        arch: Model name for error messages.
    """
    if convs_per_stage is None:
        if depth not in DEPTHS:
            raise LayerConfigError(f"{arch}: unknown depth {depth}; valid: "
                                   f"{', '.join(map(str, DEPTHS))}, or give convs_per_stage")
        convs_per_stage = DEPTHS[depth]
    if widths is None:
        widths = [min(width * 2**i, width * 8) for i in range(len(convs_per_stage))]
    spec = vgg_spec(convs_per_stage, widths, fc, activation=activation, pool=pool,
                    batchnorm=batchnorm, dropout=dropout)
    return PatternCNN(spec, num_classes, in_channels, input_size, arch=arch)


def _register_depth(depth: int) -> None:
    name = f"vgg{depth}"

    def builder(num_classes: int = 1000, in_channels: int = 3,
                input_size: int | Sequence[int] = 224, **options: Any) -> PatternCNN:
        return vgg(num_classes, in_channels, input_size, depth=depth, arch=name, **options)

    builder.__name__ = name
    builder.__doc__ = (f"VGG-{depth} at 224x224 (configuration {'ABDE'[list(DEPTHS).index(depth)]}"
                       f" of the paper); options as :func:`vgg`.")
    register_model(name)(builder)


for _depth in DEPTHS:
    _register_depth(_depth)


@register_model("vgg_small")
def vgg_small(num_classes: int = 7, in_channels: int = 1, input_size: int | Sequence[int] = 48,
              widths: Sequence[int] = (32, 64, 128, 256), fc: Sequence[int] = (256,),
              activation: str | Mapping[str, Any] = "relu", batchnorm: bool = True,
              dropout: float = 0.5) -> PatternCNN:
    """A small VGG for 48x48 grey faces: 4 stages of two 3x3 BatchNorm convs (48 -> 24 -> 12 ->
    6 -> 3), FC 256 with dropout, FC (1.76M parameters at 7 classes)."""
    return vgg(num_classes, in_channels, input_size, convs_per_stage=[2] * len(widths),
               widths=widths, fc=fc, activation=activation, batchnorm=batchnorm,
               dropout=dropout, arch="vgg_small")
