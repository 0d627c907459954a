"""Building blocks shared by every family: activations, pools, conv and fully connected blocks,
weight initialisation. Their sizes are checked by :mod:`training.models.shapes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from training.errors import ConfigError
from training.models.shapes import LayerConfigError, Padding, padding_pair

ACTIVATIONS = ("relu", "leaky_relu", "maxout", "tanh", "sigmoid")
POOLS = ("max", "avg")


@dataclass(frozen=True)
class Activation:
    """An activation by name: relu, leaky_relu (``negative_slope``), maxout (``pieces``), tanh,
    sigmoid. Maxout needs ``pieces`` times the channels in the layer before it
    (:attr:`width_factor`)."""

    name: str = "relu"
    negative_slope: float = 0.01  # leaky_relu only
    pieces: int = 2  # maxout only

    def __post_init__(self) -> None:
        if self.name not in ACTIVATIONS:
            raise LayerConfigError(f"unknown activation {self.name!r}; valid: "
                                   f"{', '.join(ACTIVATIONS)}")
        if self.name == "maxout" and self.pieces < 2:
            raise LayerConfigError(f"maxout needs pieces >= 2, got {self.pieces}")

    @property
    def width_factor(self) -> int:
        """How many outputs the preceding layer makes per output channel/unit."""
        return self.pieces if self.name == "maxout" else 1

    def make(self) -> nn.Module:
        """A new activation module."""
        if self.name == "relu":
            return nn.ReLU(inplace=True)
        if self.name == "leaky_relu":
            return nn.LeakyReLU(self.negative_slope, inplace=True)
        if self.name == "maxout":
            return Maxout(self.pieces)
        return nn.Tanh() if self.name == "tanh" else nn.Sigmoid()


def parse_activation(spec: str | Mapping[str, Any] | Activation = "relu") -> Activation:
    """An :class:`Activation` from a name, a dict (``{"name": "maxout", "pieces": 3}``) or itself.

    Raises:
        LayerConfigError: for an unknown name or key; the message lists the valid ones.
    """
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        return Activation(spec)
    valid = {"name", "negative_slope", "pieces"}
    unknown = set(spec) - valid
    if unknown:
        raise LayerConfigError(f"unknown activation keys {sorted(unknown)}; valid: "
                               f"{sorted(valid)}")
    return Activation(**spec)


class Maxout(nn.Module):
    """Maxout (Goodfellow et al., 2013): the max over groups of ``pieces`` consecutive channels.

    Input ``[N, pieces*C, ...]`` (conv maps or FC units), output ``[N, C, ...]``.
    """

    def __init__(self, pieces: int) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.pieces:
            raise ConfigError(f"Maxout({self.pieces}) needs a multiple of {self.pieces} "
                             f"channels, got {x.shape[1]}")
        return x.unflatten(1, (-1, self.pieces)).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


def make_pool(kind: str, kernel: int, stride: int | None = None, padding: Padding = 0, *,
              layer: str = "pool") -> nn.Module:
    """A max or average pool; a ``(before, after)`` padding becomes an explicit pad layer.

    Raises:
        LayerConfigError: for an unknown kind (the message lists the valid ones) or padding
            above half the kernel (a window could then lie wholly in the padding).
    """
    if kind not in POOLS:
        raise LayerConfigError(f"{layer}: unknown pool kind {kind!r}; valid: "
                               f"{', '.join(POOLS)}", layer=layer)
    stride = kernel if stride is None else stride
    before, after = padding_pair(padding)
    if max(before, after) > kernel // 2:
        raise LayerConfigError(f"{layer}: {kind} pool padding {padding} exceeds half the "
                               f"kernel ({kernel} // 2 = {kernel // 2}); use less padding",
                               layer=layer, kernel=kernel, padding=padding)
    pool_cls = nn.MaxPool2d if kind == "max" else nn.AvgPool2d
    if before == after:
        return pool_cls(kernel, stride, before)
    fill = float("-inf") if kind == "max" else 0.0
    return nn.Sequential(nn.ConstantPad2d((before, after, before, after), fill),
                         pool_cls(kernel, stride))


def conv_block(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
               padding: Padding = 0, act: Activation | None = None,
               batchnorm: bool = False) -> nn.Sequential:
    """CONV (-> BN) -> ACT with ``out_channels`` outputs (Maxout: the conv makes ``pieces``
    times as many and the activation takes their max)."""
    act = act or Activation()
    width = out_channels * act.width_factor
    before, after = padding_pair(padding)
    layers: list[nn.Module] = []
    if before != after:
        layers.append(nn.ZeroPad2d((before, after, before, after)))
        before = 0
    layers.append(nn.Conv2d(in_channels, width, kernel, stride, before, bias=not batchnorm))
    if batchnorm:
        layers.append(nn.BatchNorm2d(width))
    layers.append(act.make())
    return nn.Sequential(*layers)


def fc_block(in_features: int, out_features: int, act: Activation | None = None,
             dropout: float = 0.0) -> nn.Sequential:
    """FC -> ACT (-> dropout); Maxout makes the FC ``pieces`` times wider."""
    act = act or Activation()
    layers = [nn.Linear(in_features, out_features * act.width_factor), act.make()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module, act: Activation | None = None) -> None:
    """He initialisation for ReLU-like activations, Glorot for tanh/sigmoid; zero biases."""
    act = act or Activation()
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            if act.name in ("tanh", "sigmoid"):
                nn.init.xavier_uniform_(layer.weight, gain=nn.init.calculate_gain(
                    "tanh" if act.name == "tanh" else "sigmoid"))
            elif act.name == "leaky_relu":
                nn.init.kaiming_normal_(layer.weight, a=act.negative_slope,
                                        nonlinearity="leaky_relu")
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
