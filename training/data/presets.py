"""Train and eval transform presets (after torchvision's references/classification/presets.py).

Presets take one image as a uint8 tensor ``(C, H, W)`` (or a PIL image) and return a float32
tensor ``(channels, height, width)`` in [0, 1]. Normalisation is not their job: the
:class:`~training.data.preprocessing.Preprocessing` module does it, in training and inside the
exported ONNX graph. :meth:`EvalPreset.to_json` gives ``model.json``'s ``input.resize`` block,
so the service resizes exactly as evaluation did.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from model_format import RESIZE_METHODS
from training.errors import ConfigError

INTERPOLATIONS = {  # model_format.INTERPOLATIONS, each mapped (a test checks)
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
    "area": None,  # torch.nn.functional.interpolate(mode="area")
}
CROPS = ("none", "random", "resized")


def _check(name: str, value: Any, valid: tuple[Any, ...] | dict[str, Any]) -> None:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, valid))}; got {value!r}")


class ToChannels(torch.nn.Module):
    """Convert a ``(C, H, W)`` image to ``channels`` channels (grey <-> RGB; RGBA dropped)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        _check("channels", channels, (1, 3))
        self.channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            image = TF.pil_to_tensor(image)
        if image.ndim == 2:
            image = image.unsqueeze(0)
        if image.shape[0] == 4:
            image = image[:3]
        have = image.shape[0]
        if have == self.channels:
            return image
        if self.channels == 3:
            return image.expand(3, -1, -1).clone()
        return TF.rgb_to_grayscale(image, num_output_channels=1)


class Resize(torch.nn.Module):
    """Resize ``(C, H, W)`` to ``size`` (int: shorter side; pair: exact) with a named filter."""

    def __init__(self, size: int | tuple[int, int], interpolation: str) -> None:
        super().__init__()
        _check("interpolation", interpolation, INTERPOLATIONS)
        self.size = size
        self.interpolation = interpolation

    def _target(self, height: int, width: int) -> tuple[int, int]:
        if isinstance(self.size, int):
            short = min(height, width)
            return (round(height * self.size / short), round(width * self.size / short))
        return self.size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        target = self._target(image.shape[-2], image.shape[-1])
        if tuple(image.shape[-2:]) == target:
            return image
        if self.interpolation != "area":
            mode = INTERPOLATIONS[self.interpolation]
            return TF.resize(image, list(target), mode, antialias=True)
        out = F.interpolate(image.unsqueeze(0).float(), size=target, mode="area")[0]
        return out.round().clamp(0, 255).to(image.dtype) if image.dtype == torch.uint8 else out


class EvalPreset:
    """Deterministic evaluation transform; its resize is what the service reproduces.

    Args:
        height: Model input height.
        width: Model input width.
        channels: 1 (grey) or 3 (RGB): what the exported graph takes.
        resize_method: ``"stretch"`` (to ``height x width``) or ``"shorter-side-center-crop"``
            (shorter side to ``shorter_side``, then centre crop).
        shorter_side: For ``shorter-side-center-crop``; defaults to ``max(height, width)``.
        interpolation: ``bilinear``, ``bicubic``, ``nearest`` or ``area``.
    """

    def __init__(self, *, height: int, width: int, channels: int,
                 resize_method: str = "stretch", shorter_side: int | None = None,
                 interpolation: str = "bilinear") -> None:
        _check("resize_method", resize_method, RESIZE_METHODS)
        _check("interpolation", interpolation, INTERPOLATIONS)
        self.height, self.width, self.channels = height, width, channels
        self.resize_method = resize_method
        self.shorter_side = shorter_side or max(height, width)
        if self.shorter_side < max(height, width):
            raise ConfigError(f"shorter_side {self.shorter_side} is smaller than the crop "
                             f"{height}x{width}; use at least {max(height, width)}")
        self.interpolation = interpolation
        steps: list[torch.nn.Module] = [ToChannels(channels)]
        if resize_method == "stretch":
            steps.append(Resize((height, width), interpolation))
        else:
            steps += [Resize(self.shorter_side, interpolation), v2.CenterCrop((height, width))]
        steps.append(v2.ToDtype(torch.float32, scale=True))
        self.transforms = v2.Compose(steps)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)

    def to_json(self) -> dict[str, Any]:
        """``model.json``'s ``input.resize`` block (docs/model-format.md)."""
        block: dict[str, Any] = {"method": self.resize_method}
        if self.resize_method == "shorter-side-center-crop":
            block["shorter_side"] = self.shorter_side
        block["interpolation"] = self.interpolation
        return block


class TrainPreset:
    """Random augmentation for training, ending at the eval preset's size and channels.

    Args:
        height: Model input height.
        width: Model input width.
        channels: 1 or 3.
        crop: ``"random"`` (resize to the input size, then a random crop after zero
            ``padding``), ``"resized"`` (RandomResizedCrop with ``scale``) or ``"none"``.
        padding: Padding of the random crop, in pixels.
        scale: Area range of the random resized crop.
        hflip_prob: Probability of a horizontal flip (0 for digits and text).
        rotation: Maximum random rotation in degrees (0: none).
        interpolation: As for :class:`EvalPreset`.
    """

    def __init__(self, *, height: int, width: int, channels: int, crop: str = "random",
                 padding: int = 2, scale: tuple[float, float] = (0.5, 1.0),
                 hflip_prob: float = 0.0, rotation: float = 0.0,
                 interpolation: str = "bilinear") -> None:
        _check("crop", crop, CROPS)
        _check("interpolation", interpolation, INTERPOLATIONS)
        steps: list[torch.nn.Module] = [ToChannels(channels)]
        if crop == "resized":
            mode = INTERPOLATIONS[interpolation] or v2.InterpolationMode.BILINEAR
            steps.append(v2.RandomResizedCrop((height, width), scale=tuple(scale),
                                              interpolation=mode, antialias=True))
        else:
            steps.append(Resize((height, width), interpolation))
            if crop == "random" and padding > 0:
                steps.append(v2.RandomCrop((height, width), padding=padding))
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if rotation > 0:
            steps.append(v2.RandomRotation(rotation))
        steps.append(v2.ToDtype(torch.float32, scale=True))
        self.transforms = v2.Compose(steps)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)
