"""The generic pattern ``INPUT -> [[CONV -> ACT]*N -> POOL?]*M -> [FC -> ACT]*K -> FC``.

A :class:`CNNSpec` describes the pattern as plain data (it also comes from YAML through
:meth:`CNNSpec.from_dict`); :class:`PatternCNN` builds it, checking every conv and pool output
size with :func:`~training.models.layers.trace_sizes` first, and derives the flattened feature
size of the first FC layer from the traced sizes. LeNet-5, AlexNet, ZFNet and VGG are specs of
this pattern; ``generic_cnn`` builds any spec and ``simple_cnn`` is the small from-scratch
baseline for 28x28 Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from training.models.shapes import (
    LayerConfigError,
    Padding,
    Window,
    padding_pair,
    to_size,
    trace_sizes,
)


def _from_mapping(cls: type, data: Mapping[str, Any] | Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys with the valid ones."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise LayerConfigError(f"{where}: expected a mapping, got {data!r}")
    fields = dataclasses.fields(cls)
    valid = [f.name for f in fields]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise LayerConfigError(f"{where}: unknown keys {unknown}; valid: {valid}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise LayerConfigError(f"{where}: missing {missing}; required: {required}")
    return cls(**data)


@dataclass(frozen=True)
class ConvSpec:
    out_channels: int  # output channels (maxout: the conv makes pieces x as many)
    kernel: int = 3  # square kernel side K
    stride: int = 1  # stride S
    padding: Padding = 0  # P on both sides, or [before, after]


@dataclass(frozen=True)
class PoolSpec:
    kind: str = "max"  # max | avg
    kernel: int = 2  # square window side K
    stride: int | None = None  # stride S (None: the kernel)
    padding: Padding = 0  # P on both sides, or [before, after]


@dataclass(frozen=True)
class StageSpec:
    convs: tuple[ConvSpec, ...]  # [CONV -> ACT]*N
    pool: PoolSpec | None = None  # POOL? (None: no pool)


@dataclass(frozen=True)
class CNNSpec:
    stages: tuple[StageSpec, ...]  # [[CONV -> ACT]*N -> POOL?]*M
    fc: tuple[int, ...] = ()  # hidden FC widths: [FC -> ACT]*K (the last FC is the classifier)
    activation: str | Activation = "relu"  # relu | leaky_relu | maxout | tanh | sigmoid
    batchnorm: bool = False  # BatchNorm after every conv
    dropout: float = 0.0  # dropout before every FC after the first (before the only one if K=0)
    global_pool: str | None = None  # avg | max: pool the last maps to 1x1 before the FCs

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CNNSpec:
        """A spec from plain data (YAML): stages of ``{convs: [...], pool: {...} | null}``.

        Raises:
            LayerConfigError: for an unknown key (listing the valid ones) or a missing field.
        """
        if not isinstance(data, Mapping):
            raise LayerConfigError(f"spec: expected a mapping, got {data!r}")
        data = dict(data)
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise LayerConfigError(f"spec: unknown keys {unknown}; valid: {valid}")
        if "stages" not in data:
            raise LayerConfigError("spec: 'stages' is required, e.g. stages: [{convs: "
                                   "[{out_channels: 32, kernel: 3, padding: 1}], pool: "
                                   "{kind: max, kernel: 2}}]")
        stages = []
        for i, stage in enumerate(data.pop("stages"), start=1):
            if isinstance(stage, StageSpec):
                stages.append(stage)
                continue
            if not isinstance(stage, Mapping):
                raise LayerConfigError(f"stage {i}: expected a mapping, got {stage!r}")
            stage = dict(stage)
            convs = tuple(_from_mapping(ConvSpec, conv, f"stage {i} conv {j}")
                          for j, conv in enumerate(stage.pop("convs", ()), start=1))
            pool = stage.pop("pool", None)
            if pool is not None:
                pool = _from_mapping(PoolSpec, pool, f"stage {i} pool")
            if stage:
                raise LayerConfigError(f"stage {i}: unknown keys {sorted(stage)}; "
                                       "valid: ['convs', 'pool']")
            stages.append(StageSpec(convs, pool))
        fc = tuple(int(width) for width in data.pop("fc", ()))
        act = data.pop("activation", "relu")
        act = act if isinstance(act, str | Activation) else parse_activation(act)
        return cls(stages=tuple(stages), fc=fc, activation=act, **data)

    def windows(self) -> list[Window]:
        """The conv and pool windows in order, named ``stage i conv j`` / ``stage i pool``."""
        windows = []
        for i, stage in enumerate(self.stages, start=1):
            for j, conv in enumerate(stage.convs, start=1):
                windows.append(Window(f"stage {i} conv {j}", conv.kernel, conv.stride,
                                      _padding(conv.padding)))
            if stage.pool is not None:
                pool = stage.pool
                stride = pool.kernel if pool.stride is None else pool.stride
                windows.append(Window(f"stage {i} pool", pool.kernel, stride,
                                      _padding(pool.padding)))
        return windows


def _padding(padding: Padding | Sequence[int]) -> Padding:
    before, after = padding_pair(padding)
    return before if before == after else (before, after)


class PatternCNN(ConvNet):
    """``INPUT -> [[CONV -> ACT]*N -> POOL?]*M -> [FC -> ACT]*K -> FC`` from a :class:`CNNSpec`.

    Args:
        spec: The layers.
        num_classes: Outputs of the last FC layer.
        in_channels: Input channels (1 grey, 3 RGB).
        input_size: Input side or ``(height, width)``; every layer's output size is checked
            for it.
        arch: Model name for error messages.

    Raises:
        LayerConfigError: if a layer's output size does not work out for ``input_size``.
    """

    def __init__(self, spec: CNNSpec, num_classes: int = 10, in_channels: int = 1,
                 input_size: int | Sequence[int] = 28, arch: str = "generic_cnn") -> None:
        super().__init__()
        if not spec.stages:
            raise LayerConfigError(f"{arch}: the spec needs at least one stage")
        self.arch = arch
        self.spec = spec
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = to_size(input_size)
        self.default_input_size = self.input_size
        sizes = trace_sizes(input_size, spec.windows(), model=arch)
        if spec.global_pool not in (None, "avg", "max"):
            raise LayerConfigError(f"{arch}: unknown global_pool {spec.global_pool!r}; "
                                   "valid: avg, max, null")
        if not 0.0 <= spec.dropout < 1.0:
            raise LayerConfigError(f"{arch}: dropout must be in [0, 1), got {spec.dropout}")
        act = parse_activation(spec.activation)
        self.features, maps = self._make_features(spec, act)
        last = sizes[-1] if sizes else self.input_size
        self.feature_shape = (maps, *last)
        self.global_pool = spec.global_pool
        height, width = (1, 1) if spec.global_pool else last
        self.num_features = maps * height * width  # derived from the traced sizes
        self.pre_logits = self._make_fc(spec, act)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 and not spec.fc \
            else nn.Identity()
        self.classifier = nn.Linear(self._fc_width, num_classes)
        init_weights(self, act)

    def _make_features(self, spec: CNNSpec, act: Activation) -> tuple[nn.Sequential, int]:
        stages = []
        channels = self.in_channels
        for i, stage in enumerate(spec.stages, start=1):
            layers: list[nn.Module] = []
            for j, conv in enumerate(stage.convs, start=1):
                if conv.out_channels < 1:
                    raise LayerConfigError(f"{self.arch}: stage {i} conv {j}: out_channels "
                                           f"must be >= 1, got {conv.out_channels}")
                layers.append(conv_block(channels, conv.out_channels, conv.kernel, conv.stride,
                                         conv.padding, act, spec.batchnorm))
                channels = conv.out_channels
            if stage.pool is not None:
                pool = stage.pool
                layers.append(make_pool(pool.kind, pool.kernel, pool.stride, pool.padding,
                                        layer=f"{self.arch}: stage {i} pool"))
            stages.append(nn.Sequential(*layers))
        return nn.Sequential(*stages), channels

    def _make_fc(self, spec: CNNSpec, act: Activation) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Flatten()]
        width = self.num_features
        for i, hidden in enumerate(spec.fc, start=1):
            if hidden < 1:
                raise LayerConfigError(f"{self.arch}: fc {i}: width must be >= 1, got {hidden}")
            layers.append(fc_block(width, hidden, act, spec.dropout))
            width = hidden
        self._fc_width = width
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps after the last stage, ``[N, *feature_shape]``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (global pool ->) flatten -> [FC -> ACT]*K -> FC."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3), keepdim=True)
        elif self.global_pool == "max":
            x = x.amax(dim=(2, 3), keepdim=True)
        return self.classifier(self.dropout(self.pre_logits(x)))

    def reset_classifier(self, num_classes: int) -> None:
        """A new, randomly initialised last FC layer for ``num_classes``."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self._fc_width, num_classes)

    def head_parameters(self) -> list[nn.Parameter]:
        """The last FC layer's weight and bias."""
        return list(self.classifier.parameters())


# The seed's pattern at 28x28: [[CONV -> BN -> ReLU]*2 -> POOL]*2 -> FC -> ReLU -> FC.
SIMPLE_CNN = CNNSpec.from_dict({
    "stages": [
        {"convs": [{"out_channels": 32, "kernel": 3, "padding": 1}] * 2,
         "pool": {"kind": "max", "kernel": 2}},
        {"convs": [{"out_channels": 64, "kernel": 3, "padding": 1}] * 2,
         "pool": {"kind": "max", "kernel": 2}},
    ],
    "fc": [256],
    "activation": "relu",
    "batchnorm": True,
    "dropout": 0.3,
})


def build_generic_from_config(config: Mapping[str, Any] | CNNSpec, num_classes: int,
                              in_channels: int,
                              input_size: int | Sequence[int]) -> PatternCNN:
    """A :class:`PatternCNN` from a spec dict (e.g. a YAML file's ``model.kwargs``)."""
    spec = config if isinstance(config, CNNSpec) else CNNSpec.from_dict(config)
    return PatternCNN(spec, num_classes, in_channels, input_size)


@register_model("generic_cnn")
def generic_cnn(num_classes: int = 10, in_channels: int = 1,
                input_size: int | Sequence[int] = 28,
                stages: Sequence[Mapping[str, Any]] | None = None,
                fc: Sequence[int] | None = None, activation: str | Mapping[str, Any] = "relu",
                batchnorm: bool = False, dropout: float = 0.0,
                global_pool: str | None = None) -> PatternCNN:
    """Any ``[[CONV -> ACT]*N -> POOL?]*M -> [FC -> ACT]*K -> FC`` net from plain data.

    Without ``stages`` it builds :data:`SIMPLE_CNN`'s layers (with the other arguments given).
    """
    spec = CNNSpec.from_dict({
        "stages": stages if stages is not None else SIMPLE_CNN.stages,
        "fc": fc if fc is not None else (SIMPLE_CNN.fc if stages is None else ()),
        "activation": activation, "batchnorm": batchnorm, "dropout": dropout,
        "global_pool": global_pool,
    })
    return PatternCNN(spec, num_classes, in_channels, input_size, arch="generic_cnn")


@register_model("simple_cnn")
def simple_cnn(num_classes: int = 10, in_channels: int = 1,
               input_size: int | Sequence[int] = 28,
               activation: str | Mapping[str, Any] = "relu",
               dropout: float = 0.3) -> PatternCNN:
    """The from-scratch baseline for 28x28 Fashion-MNIST (:data:`SIMPLE_CNN`, ~0.9M params)."""
    act = activation if isinstance(activation, str) else parse_activation(dict(activation))
    spec = dataclasses.replace(SIMPLE_CNN, activation=act, dropout=dropout)
    return PatternCNN(spec, num_classes, in_channels, input_size, arch="simple_cnn")
