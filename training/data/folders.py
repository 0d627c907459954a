"""Image folders: ``<root>/<split>/<class>/<image>``, one sub-folder per class.

Class names are the sub-folder names, sorted (as torchvision's ``ImageFolder`` does); every split
must have the same classes. Images are decoded on access with Pillow (EXIF orientation applied).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from training.errors import ConfigError, DataError, MissingData

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"),
              "test": ("test", "testing")}


def _split_dir(root: Path, split: str) -> Path:
    if split not in SPLIT_DIRS:
        raise ConfigError(f"unknown folder split {split!r}; use train, val or test")
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    raise MissingData(f"{root} has no {split} folder; expected {root}/"
                            f"{SPLIT_DIRS[split][0]}/<class>/<image> (one sub-folder per class)")


def folder_classes(root: str | Path) -> list[str]:
    """Sorted class names of the training split."""
    train = _split_dir(Path(root), "train")
    classes = sorted(entry.name for entry in train.iterdir() if entry.is_dir())
    if not classes:
        raise MissingData(f"{train} has no class sub-folders")
    return classes


def list_folder(root: str | Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """Image files and labels of one split, and the class names.

    Raises:
        FileNotFoundError: missing split folder, no classes, or no images.
        ValueError: a class folder that the training split does not have.
    """
    classes = folder_classes(root)
    directory = _split_dir(Path(root), split)
    files: list[Path] = []
    labels: list[int] = []
    for entry in sorted(p for p in directory.iterdir() if p.is_dir()):
        if entry.name not in classes:
            raise DataError(f"{entry} is a class that {root}/train does not have; "
                             f"classes: {', '.join(classes)}")
        found = sorted(p for p in entry.rglob("*") if p.suffix.lower() in EXTENSIONS)
        files += found
        labels += [classes.index(entry.name)] * len(found)
    if not files:
        raise MissingData(f"no images ({', '.join(sorted(EXTENSIONS))}) under {directory}")
    return files, labels, classes


def read_image(path: Path) -> torch.Tensor:
    """Decode an image file to a uint8 ``(C, H, W)`` tensor (C = 1 or 3), EXIF-oriented."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        image = image.convert("L" if image.mode in ("L", "I;16", "I", "1") else "RGB")
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
