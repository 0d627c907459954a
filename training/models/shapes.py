"""Layer-size arithmetic shared by every family (the building blocks are in ``layers.py``).

The size of a convolution's or pool's output follows ``O = (W - K + 2P)/S + 1`` (CS231n). This
module is the one place that computes it: :func:`output_size` refuses a layer whose result is
not an integer or is below 1 with a :class:`LayerConfigError` that names the layer and the
numbers, and :func:`trace_sizes` walks a network's conv/pool windows at construction time, so a
wrong ``input_size`` is refused before training with a hint of input sizes that do work.

Padding is either an int ``P`` (both sides) or a pair ``(before, after)``, as TensorFlow's
``"same"`` padding needs for a 3x3/2 pool on an even input (GoogLeNet); the formula then reads
``O = (W - K + P_before + P_after)/S + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from training.errors import ConfigError

Padding = int | tuple[int, int]


class LayerConfigError(ConfigError):
    """A layer's output size does not work out; the message names the layer and the numbers."""

    def __init__(self, message: str, *, layer: str = "", size: int | None = None,
                 kernel: int | None = None, padding: Padding | None = None,
                 stride: int | None = None, result: float | None = None) -> None:
        super().__init__(message)
        self.layer = layer
        self.size = size
        self.kernel = kernel
        self.padding = padding
        self.stride = stride
        self.result = result


def to_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int side or a pair.

    Raises:
        LayerConfigError: if it is not one or two positive ints.
    """
    if isinstance(input_size, int):
        size: tuple[int, ...] = (input_size, input_size)
    else:
        size = tuple(int(s) for s in input_size)
    if len(size) != 2 or min(size) < 1:
        raise LayerConfigError(f"input_size must be a positive int or (height, width), "
                               f"got {input_size!r}")
    return size[0], size[1]


def padding_pair(padding: Padding | Sequence[int]) -> tuple[int, int]:
    """``(before, after)`` padding from an int or a pair."""
    if isinstance(padding, int):
        return padding, padding
    pair = tuple(int(p) for p in padding)
    if len(pair) != 2:
        raise LayerConfigError(f"padding must be an int or [before, after], got {padding!r}")
    return pair[0], pair[1]


def _formula(size: int, kernel: int, padding: Padding, stride: int) -> tuple[str, Fraction]:
    before, after = padding_pair(padding)
    value = Fraction(size - kernel + before + after, stride) + 1
    if before == after:
        text = f"(W - K + 2P)/S + 1 = ({size} - {kernel} + 2*{before})/{stride} + 1"
    else:
        text = (f"(W - K + P_before + P_after)/S + 1 = "
                f"({size} - {kernel} + {before} + {after})/{stride} + 1")
    return text, value


def output_size(size: int, kernel: int, stride: int = 1, padding: Padding = 0, *,
                layer: str = "layer", dim: str = "width") -> int:
    """Output side of a conv or pool layer, ``O = (W - K + 2P)/S + 1``.

    Args:
        size: Input side ``W`` (height or width).
        kernel: Kernel side ``K``.
        stride: Stride ``S``.
        padding: ``P`` on both sides, or ``(before, after)``.
        layer: Layer name for the error message, e.g. ``"stage 2 conv 1"``.
        dim: ``"height"`` or ``"width"``, for the error message.

    Raises:
        LayerConfigError: if the result is not an integer or is below 1.
    """
    if kernel < 1 or stride < 1 or min(padding_pair(padding)) < 0:
        raise LayerConfigError(f"{layer}: kernel and stride must be >= 1 and padding >= 0, "
                               f"got kernel {kernel}, stride {stride}, padding {padding}",
                               layer=layer, kernel=kernel, stride=stride, padding=padding)
    text, value = _formula(size, kernel, padding, stride)
    shown = f"{float(value):g}"
    numbers = (f"(input {dim} W={size}, kernel K={kernel}, padding P={padding}, "
               f"stride S={stride})")
    if value.denominator != 1:
        pads = "2P" if text.startswith("(W - K + 2P)") else "P_before + P_after"
        problem, fix = "is not an integer", (f"change the padding or stride so that W - K + "
                                             f"{pads} is a multiple of S")
    elif value < 1:
        problem, fix = "is below 1", "use a larger input, a smaller kernel/stride or more padding"
    else:
        return int(value)
    raise LayerConfigError(f"{layer}: O = {text} = {shown} {problem} {numbers}; fix: {fix}",
                           layer=layer, size=size, kernel=kernel, padding=padding,
                           stride=stride, result=float(value))


@dataclass(frozen=True)
class Window:
    """Geometry of one conv or pool layer on a network's main path (square kernels)."""

    name: str  # e.g. "stage 2 conv 1"
    kernel: int
    stride: int = 1
    padding: Padding = 0


def output_shape(size: tuple[int, int], window: Window) -> tuple[int, int]:
    """``(height, width)`` after ``window``; raises :class:`LayerConfigError`."""
    dims = ("height", "width") if size[0] != size[1] else ("width", "width")
    return (output_size(size[0], window.kernel, window.stride, window.padding,
                        layer=window.name, dim=dims[0]),
            output_size(size[1], window.kernel, window.stride, window.padding,
                        layer=window.name, dim=dims[1]))


def _fits(side: int, paths: Sequence[Sequence[Window]]) -> bool:
    try:
        for windows in paths:
            trace_sizes((side, side), windows)
    except LayerConfigError:
        return False
    return True


def suggest_sides(side: int, paths: Sequence[Sequence[Window]], span: int = 64) -> list[int]:
    """The nearest square input sides below and above ``side`` for which every window of every
    path fits."""
    below = next((s for s in range(side - 1, max(side - span, 0), -1) if _fits(s, paths)), None)
    above = next((s for s in range(side + 1, side + span) if _fits(s, paths)), None)
    return [s for s in (below, above) if s is not None]


def trace_sizes(input_size: int | Sequence[int], windows: Sequence[Window], *,
                model: str = "",
                also: Sequence[Sequence[Window]] = ()) -> list[tuple[int, int]]:
    """Output ``(height, width)`` of every window in order, checked layer by layer.

    Args:
        input_size: Network input side or ``(height, width)``.
        windows: The conv and pool layers of the main path, in order.
        model: Model name for the error message; when given, the message also suggests the
            nearest square input sizes that work for the whole network.
        also: Other paths from the input (e.g. to an auxiliary head) the suggested sizes must
            fit too.

    Raises:
        LayerConfigError: at the first layer whose size does not work out.
    """
    size = start = to_size(input_size)
    sizes = []
    for window in windows:
        try:
            size = output_shape(size, window)
        except LayerConfigError as error:
            if not model:
                raise
            sides = suggest_sides(start[0], [windows, *also]) if start[0] == start[1] else []
            hint = ("; or use an input_size that works for every layer: "
                    + " or ".join(str(s) for s in sides)) if sides else ""
            raise LayerConfigError(
                f"{model} with input_size {input_size}: {error}{hint}",
                layer=error.layer, size=error.size, kernel=error.kernel,
                padding=error.padding, stride=error.stride, result=error.result) from None
        sizes.append(size)
    return sizes
