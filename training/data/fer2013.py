"""The FER2013 CSV: ``emotion,pixels,Usage`` with 48x48 grey faces.

``emotion`` is 0..6 (angry, disgust, fear, happy, sad, surprise, neutral), ``pixels`` 2,304
space-separated values 0..255, ``Usage`` ``Training``, ``PublicTest`` or ``PrivateTest``.
FER2013 ships with no registry package: users pass their own ``fer2013.csv``.
"""

from __future__ import annotations

import csv
import logging
import reprlib
from pathlib import Path

import numpy as np
import torch

from training.errors import ConfigError, DataError, MissingData

FER2013_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER2013_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
SIDE = 48
SHOWN = 80  # characters of a cell or row quoted in an error message

logger = logging.getLogger(__name__)


def _clip(value: object) -> str:
    """``repr`` of a CSV cell or row cut to about :data:`SHOWN` characters."""
    shorten = reprlib.Repr()
    shorten.maxstring = shorten.maxother = SHOWN
    shorten.maxlist = 3
    return shorten.repr(value)


def load_fer2013(split: str, path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of one ``Usage`` from a FER2013 CSV.

    Args:
        split: ``train`` (Training), ``val`` (PublicTest) or ``test`` (PrivateTest).
        path: The CSV file.

    Returns:
        uint8 images ``(N, 1, 48, 48)`` and int64 labels ``(N,)``.

    Rows without a ``Usage`` are skipped and counted in a warning; a ``Usage`` that is not one
    of the three (``Trainig``) fails, since its rows would otherwise vanish from every split.

    Raises:
        ConfigError: no path or an unknown split.
        MissingData: the path is not a file.
        DataError: a bad header, a malformed row or an unknown ``Usage`` (the
            message names the line).
    """
    if split not in FER2013_USAGE:
        raise ConfigError(f"unknown FER2013 split {split!r}; use train, val or test")
    if not path:
        raise ConfigError("FER2013 needs the path of your fer2013.csv: --set data.path=/path/to/"
                         "fer2013.csv (it is not shipped by any package registry)")
    if not Path(path).is_file():
        raise MissingData(f"data.path {path} is not a file; give the path of your fer2013.csv "
                          "(--set data.path=/path/to/fer2013.csv)")
    usage = FER2013_USAGE[split]
    known = set(FER2013_USAGE.values())
    images, labels, missing = [], [], []
    with Path(path).open(newline="") as handle:
        reader = csv.reader(handle)
        header = [column.strip() for column in next(reader, [])]
        if header[:3] != ["emotion", "pixels", "Usage"]:
            raise DataError(f"{path}: header is {_clip(header)}, expected "
                             "emotion,pixels,Usage")
        for line, row in enumerate(reader, start=2):
            row_usage = row[2].strip() if len(row) >= 3 else ""
            if not row_usage:
                missing.append(line)
                continue
            if row_usage not in known:
                raise DataError(f"{path}:{line}: unknown Usage {_clip(row_usage)}; expected "
                                 f"one of {', '.join(sorted(known))}")
            if row_usage != usage:
                continue
            label, pixels = _parse_row(row, path, line)
            images.append(pixels)
            labels.append(label)
    if missing:
        logger.warning("%s: %d rows have no Usage and belong to no split (lines %s%s)", path,
                       len(missing), ", ".join(map(str, missing[:5])),
                       ", ..." if len(missing) > 5 else "")
    if not images:
        raise DataError(f"{path}: no rows with Usage {usage}")
    stacked = np.stack(images).reshape(-1, 1, SIDE, SIDE)
    return torch.from_numpy(stacked), torch.tensor(labels, dtype=torch.int64)


def _is_pixel(text: str) -> bool:
    try:
        return 0 <= int(text) <= 255
    except ValueError:
        return False


def _parse_row(row: list[str], path: str, line: int) -> tuple[int, np.ndarray]:
    try:
        label = int(row[0])
    except ValueError:
        raise DataError(f"{path}:{line}: emotion {_clip(row[0])} is not a number") from None
    values = row[1].split()
    try:
        pixels = np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        column = next((i for i, v in enumerate(values) if not _is_pixel(v)), 0)
        raise DataError(f"{path}:{line}: pixel {column} (0-based, in pixels) is "
                         f"{_clip(values[column])}, not a whole number in 0..255") from None
    if not 0 <= label < len(FER2013_LABELS):
        raise DataError(f"{path}:{line}: emotion {label} is outside 0..6")
    if pixels.size != SIDE * SIDE:
        raise DataError(f"{path}:{line}: expected {SIDE * SIDE} pixel values, got "
                         f"{pixels.size}")
    outside = np.flatnonzero((pixels < 0) | (pixels > 255))
    if outside.size:
        column = int(outside[0])
        raise DataError(f"{path}:{line}: pixel {column} (0-based, in pixels) is "
                         f"{pixels[column]}, outside 0..255"
                         + (f" ({outside.size} values are)" if outside.size > 1 else ""))
    return label, pixels.astype(np.uint8)


def write_fer2013(path: str | Path, rows: list[tuple[int, np.ndarray, str]]) -> None:
    """Write ``(emotion, 48x48 uint8 image, Usage)`` rows as a FER2013 CSV."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for label, image, usage in rows:
            writer.writerow([label, " ".join(map(str, np.asarray(image).reshape(-1))), usage])
