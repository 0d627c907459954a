"""The FER2013 CSV: ``emotion,pixels,Usage`` with 48x48 grey faces.

``emotion`` is 0..6 (angry, disgust, fear, happy, sad, surprise, neutral), ``pixels`` 2,304
space-separated values 0..255, ``Usage`` ``Training``, ``PublicTest`` or ``PrivateTest``.
FER2013 ships with no registry package: users pass their own ``fer2013.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

FER2013_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER2013_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
SIDE = 48


def load_fer2013(split: str, path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of one ``Usage`` from a FER2013 CSV.

    Args:
        split: ``train`` (Training), ``val`` (PublicTest) or ``test`` (PrivateTest).
        path: The CSV file.

    Returns:
        uint8 images ``(N, 1, 48, 48)`` and int64 labels ``(N,)``.

    Raises:
        ValueError: a missing path, a bad header or a malformed row (the message names the line).
    """
    if split not in FER2013_USAGE:
        raise ValueError(f"unknown FER2013 split {split!r}; use train, val or test")
    if not path:
        raise ValueError("FER2013 needs the path of your fer2013.csv: --set data.path=/path/to/"
                         "fer2013.csv (it is not shipped by any package registry)")
    usage = FER2013_USAGE[split]
    images, labels = [], []
    with Path(path).open(newline="") as handle:
        reader = csv.reader(handle)
        header = [column.strip() for column in next(reader, [])]
        if header[:3] != ["emotion", "pixels", "Usage"]:
            raise ValueError(f"{path}: header is {header}, expected emotion,pixels,Usage")
        for line, row in enumerate(reader, start=2):
            if len(row) < 3 or row[2].strip() != usage:
                continue
            label, pixels = _parse_row(row, path, line)
            images.append(pixels)
            labels.append(label)
    if not images:
        raise ValueError(f"{path}: no rows with Usage {usage}")
    stacked = np.stack(images).reshape(-1, 1, SIDE, SIDE)
    return torch.from_numpy(stacked), torch.tensor(labels, dtype=torch.int64)


def _parse_row(row: list[str], path: str, line: int) -> tuple[int, np.ndarray]:
    try:
        label = int(row[0])
        pixels = np.array(row[1].split(), dtype=np.int64)
    except ValueError:
        raise ValueError(f"{path}:{line}: emotion or pixels is not a number") from None
    if not 0 <= label < len(FER2013_LABELS):
        raise ValueError(f"{path}:{line}: emotion {label} is outside 0..6")
    if pixels.size != SIDE * SIDE or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}:{line}: expected {SIDE * SIDE} pixel values in 0..255, "
                         f"got {pixels.size}")
    return label, pixels.astype(np.uint8)


def write_fer2013(path: str | Path, rows: list[tuple[int, np.ndarray, str]]) -> None:
    """Write ``(emotion, 48x48 uint8 image, Usage)`` rows as a FER2013 CSV."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for label, image, usage in rows:
            writer.writerow([label, " ".join(map(str, np.asarray(image).reshape(-1))), usage])
