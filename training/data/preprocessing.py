"""Input statistics fitted on the training set: per-channel mean/std and PCA/ZCA whitening.

:func:`fit_preprocessing` computes the statistics from training images only;
:class:`Preprocessing` stores them, travels in checkpoints (:meth:`Preprocessing.state`) and
builds the :class:`torch.nn.Module` that applies them. The same module normalises batches during
training and sits inside the exported ONNX graph, so it uses plain tensor ops on registered
buffers (traceable by ``torch.onnx.export(..., dynamo=False)``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from training.errors import ConfigError

logger = logging.getLogger(__name__)

WHITENINGS = (None, "pca", "zca")
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # data.normalization=imagenet; torchvision's weights
IMAGENET_STD = [0.229, 0.224, 0.225]
# A (D, D) whitening matrix is stored in the ONNX file: refuse sizes that would bloat it.
MAX_WHITENING_DIM = 4096


class PreprocessModule(nn.Module):
    """Float NCHW in [0, 1] -> (grey repeated to RGB) -> (x - mean) / std -> whitened NCHW."""

    mean: torch.Tensor  # buffers, [1, C, 1, 1]
    std: torch.Tensor
    whitening_mean: torch.Tensor  # [1, C*H*W], when whitening
    whitening_matrix_t: torch.Tensor  # [C*H*W, C*H*W], transposed

    def __init__(self, prep: Preprocessing) -> None:
        super().__init__()
        channels = len(prep.mean)
        self.grey_to_rgb = prep.grey_to_rgb
        self.channels = channels
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.whiten = prep.whitening is not None
        if self.whiten:
            assert prep.whitening_mean is not None and prep.whitening_matrix is not None
            self.register_buffer("whitening_mean", prep.whitening_mean.float().view(1, -1))
            # Stored transposed so that forward is one matmul: rows @ W^T.
            matrix_t = prep.whitening_matrix.float().t().contiguous()
            self.register_buffer("whitening_matrix_t", matrix_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grey_to_rgb:
            x = x.expand(-1, self.channels, -1, -1)
        x = (x - self.mean) / self.std
        if self.whiten:
            flat = torch.flatten(x, 1) - self.whitening_mean
            x = torch.matmul(flat, self.whitening_matrix_t).reshape_as(x)
        return x


@dataclass
class Preprocessing:
    """Normalisation (and optional whitening) statistics of a model's input.

    Attributes:
        mean: Per-channel mean of [0, 1]-scaled pixels (one value per *model* channel).
        std: Per-channel standard deviation of [0, 1]-scaled pixels.
        whitening: ``None``, ``"pca"`` or ``"zca"``.
        whitening_mean: Flattened ``C*H*W`` mean of the normalised images (whitening only).
        whitening_matrix: ``(D, D)`` matrix applied to centred, flattened images: ZCA
            ``U diag(1/sqrt(l+eps)) U^T`` or PCA ``diag(1/sqrt(l+eps)) U^T``.
        grey_to_rgb: The input has one (grey) channel that is repeated to ``len(mean)``
            channels before normalising (grey data into an RGB backbone).
    """

    mean: list[float]
    std: list[float]
    whitening: str | None = None
    whitening_mean: torch.Tensor | None = None
    whitening_matrix: torch.Tensor | None = None
    grey_to_rgb: bool = False

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.whitening not in WHITENINGS:
            raise ValueError(f"whitening must be one of {WHITENINGS}, got {self.whitening!r}")
        if self.whitening is not None and (
            self.whitening_mean is None or self.whitening_matrix is None
        ):
            raise ValueError(
                f"{self.whitening} whitening needs whitening_mean and whitening_matrix")

    @property
    def input_channels(self) -> int:
        """Channels the module expects (1 when grey is repeated to RGB)."""
        return 1 if self.grey_to_rgb else len(self.mean)

    def module(self) -> nn.Module:
        """The module mapping float NCHW in [0, 1] to the model's normalised input."""
        return PreprocessModule(self)

    def to_json(self) -> dict[str, Any]:
        """The informative ``preprocessing`` block of ``model.json``."""
        return {"scale": 1 / 255, "mean": list(self.mean), "std": list(self.std),
                "whitening": self.whitening}

    def state(self) -> dict[str, Any]:
        """A plain dict to store in checkpoints."""
        return {"mean": list(self.mean), "std": list(self.std), "whitening": self.whitening,
                "whitening_mean": self.whitening_mean, "whitening_matrix": self.whitening_matrix,
                "grey_to_rgb": self.grey_to_rgb}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`state`."""
        return cls(mean=list(state["mean"]), std=list(state["std"]),
                   whitening=state.get("whitening"), whitening_mean=state.get("whitening_mean"),
                   whitening_matrix=state.get("whitening_matrix"),
                   grey_to_rgb=bool(state.get("grey_to_rgb", False)))


def _as_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) images, NCHW or NHW, as float64 NCHW in [0, 1]."""
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4:
        raise ValueError(
            f"expected images shaped (N, C, H, W) or (N, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.double() / 255.0
    return images.double()


def _chunks(images: torch.Tensor, size: int = 1024) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), size):
        yield _as_float_nchw(images[start:start + size])


def fit_preprocessing(
    images: torch.Tensor,
    *,
    whitening: str | None = None,
    epsilon: float = 0.1,
    max_images: int | None = 20000,
    seed: int = 0,
) -> Preprocessing:
    """Fit per-channel mean/std (and optionally PCA/ZCA whitening) on training images.

    Call it with the training split only. Whitening is fitted on the mean/std-normalised images.
    Statistics are accumulated in float64 over chunks, so large sets need little memory.

    Args:
        images: ``(N, C, H, W)`` or ``(N, H, W)``; uint8 in 0..255 or float in [0, 1].
        whitening: ``None``, ``"pca"`` or ``"zca"``.
        epsilon: Added to each eigenvalue before the inverse square root; it damps directions
            of (near-)zero variance such as always-black MNIST borders.
        max_images: Fit on a random subset of at most this many images (``None``: all).
        seed: Seed of that subset.

    Raises:
        ValueError: bad shapes, an unknown whitening, or an input too large to whiten.
    """
    if whitening not in WHITENINGS:
        raise ValueError(f"whitening must be one of {WHITENINGS}, got {whitening!r}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 images to fit statistics, got {len(images)}")
    if max_images is not None and len(images) > max_images:
        generator = torch.Generator().manual_seed(seed)
        images = images[torch.randperm(len(images), generator=generator)[:max_images]]
    sums, squares, count = torch.zeros(()), torch.zeros(()), 0
    for x in _chunks(images):
        sums = sums + x.sum(dim=(0, 2, 3))
        squares = squares + (x * x).sum(dim=(0, 2, 3))
        count += x.numel() // x.shape[1]
    mean = sums / count
    std = ((squares / count - mean * mean).clamp_min(0) * count / (count - 1)).sqrt()
    std = std.clamp_min(1e-6)
    prep = Preprocessing(mean=mean.tolist(), std=std.tolist())
    logger.info("fitted mean %s std %s on %d images", prep.mean, prep.std, len(images))
    if whitening is None:
        return prep
    dim = images[0].numel()
    if dim > MAX_WHITENING_DIM:
        raise ConfigError(
            f"{whitening} whitening of {dim} values per image (C*H*W) would store a {dim}x{dim} "
            f"matrix; whiten inputs of at most {MAX_WHITENING_DIM} values (e.g. 1x64x64) or set "
            "whitening to none")
    prep.whitening_mean, prep.whitening_matrix = _fit_whitening(
        images, mean, std, whitening, epsilon)
    prep.whitening = whitening
    logger.info("fitted %s whitening on %d dims (epsilon %g)", whitening, dim, epsilon)
    return prep


def _fit_whitening(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, kind: str,
                   epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and (D, D) matrix of PCA (diag(s) U^T) or ZCA (U diag(s) U^T) whitening."""
    dim = images[0].numel()
    first = torch.zeros(dim, dtype=torch.float64)
    second = torch.zeros(dim, dim, dtype=torch.float64)
    for x in _chunks(images):
        flat = ((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).flatten(1)
        first += flat.sum(dim=0)
        second += flat.t() @ flat
    count = len(images)
    centre = first / count
    covariance = (second - count * torch.outer(centre, centre)) / (count - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    scale = torch.rsqrt(eigenvalues.clamp_min(0) + epsilon)
    rotation = scale.unsqueeze(1) * eigenvectors.t()
    matrix = eigenvectors @ rotation if kind == "zca" else rotation
    return centre.float(), matrix.float()
