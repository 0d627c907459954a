"""Static post-training int8 quantization of an exported model, measured against its float model.

``python -m training export models/NAME/VERSION --quantize int8`` (or a training run with
``--quantize int8``, and the ``*-int8`` entries of ``python -m training ship``) call
:func:`quantize_version`. It uses ONNX Runtime's own tooling (``onnxruntime.quantization``):
``quant_pre_process`` (shape inference and graph clean-up), then ``quantize_static`` in QDQ
format with uint8 activations and int8 weights, one weight scale per output channel (U8S8),
calibrated by min-max on :func:`training.quantize_data.calibration_set` (the training split,
never the test split). S8S8, the guide's first choice, left 16 of MobileNetV2's 52 convolutions
and its 10 residual additions in float on ONNX Runtime's CPU provider, slower than the float
model; U8S8 fuses every one (docs/int8.md).

The graph keeps the float model's contract: the preprocessing stays inside it, ``image`` uint8
NHWC in, ``probabilities`` float32 out. The final softmax stays in float (quantized, the
probabilities would have 256 levels); so does the class-activation-map head of a model
explained by ``cam`` (pooling, classifier, softmax). Its feature map is then the dequantized
int8 one that the head reads, so the float ``explain.onnx`` explains the int8 answers exactly:
:func:`training.cam.check_cam` holds at its 1e-5 tolerance, checked before anything is written.

Nothing is written until the int8 model is measured (:func:`training.quantize_eval.compare`)
and within the limits: top-1 on the whole test split may drop by at most
:data:`MAX_TOP1_DROP`; a model with no test split here must keep its float model's top-1 on at
least :data:`MIN_TOP1_AGREEMENT` of the natural photos its float model is confident about.
Otherwise :class:`QuantizeError` gives the figures.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from model_format import (
    CARD_FILE,
    Calibration,
    ClassifierCard,
    FloatSource,
    ModelFormatError,
    Quantization,
    load_card,
)
from training.assets import sha256_of
from training.errors import ExportError, QuantizeError
from training.export import EXPORTER, check_signature
from training.publish import check_target, provenance, publish
from training.quantize_data import ImageSet, calibration_set

logger = logging.getLogger(__name__)

SUFFIX = "-int8"
MAX_TOP1_DROP = 0.01  # one point of top-1 on the test split (docs/int8.md says why)
MIN_TOP1_AGREEMENT = 0.9  # share of confident natural photos keeping the float top-1 (docs/int8.md)
BATCH = 32  # images per calibration run
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def float_nodes(model: onnx.ModelProto, card: ClassifierCard) -> list[str]:
    """Nodes to keep in float: every node after the class-activation-map feature map (pooling,
    classifier, softmax) when the model is explained by ``cam``, else the final softmax."""
    graph = model.graph
    output = card.output.name
    if card.explain is not None and card.explain.output:
        start = {card.explain.output}
        keep: list[str] = []
        for node in graph.node:  # topologically sorted
            if start.intersection(node.input):
                keep.append(node.name)
                start.update(node.output)
        if not any(output in n.output for n in graph.node if n.name in keep):
            raise QuantizeError(f"{card.explain.output} does not lead to {output}")
        return keep
    return [n.name for n in graph.node if output in n.output and n.op_type == "Softmax"]


class _Reader(CalibrationDataReader):
    """Calibration batches of uint8 NHWC images, :data:`BATCH` at a time."""

    def __init__(self, images: np.ndarray, input_name: str) -> None:
        self._batches = iter([{input_name: images[i:i + BATCH]}
                              for i in range(0, len(images), BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_graph(source: Path, target: Path, card: ClassifierCard, images: np.ndarray,
                   method: str = "minmax", reduce_range: bool = False) -> list[str]:
    """Write the int8 QDQ graph of ``source`` to ``target``; returns the nodes kept in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared))
    keep = float_nodes(onnx.load(str(prepared)), card)
    methods = {key: getattr(CalibrationMethod, value) for key, value in METHODS.items()}
    quantize_static(str(prepared), str(target), _Reader(images, card.input.name),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[method], nodes_to_exclude=keep)
    prepared.unlink()
    return keep


def _check_contract(path: Path, card: ClassifierCard) -> None:
    """The int8 graph's inputs and outputs are the float model's (the exporter's check)."""
    onnx.checker.check_model(str(path))
    outputs = [card.output.name] + ([card.explain.output] if card.explain and card.explain.output
                                    else [])
    try:
        check_signature(path, card.input.name,
                        (card.input.height, card.input.width, card.input.channels), outputs)
    except ExportError as error:
        raise QuantizeError(f"the int8 graph breaks its float model's contract: {error}") from None


def _check_explain(scratch: Path, source_dir: Path, card: ClassifierCard,
                   images: np.ndarray) -> None:
    """The float ``explain.onnx`` explains the int8 answers (softmax of the maps' means ==
    probabilities within :data:`training.cam.TOLERANCE`); copies it beside the int8 graph."""
    from training.cam import CamError, check_cam, class_maps

    if card.explain is None or not card.explain.file or not card.explain.output:
        return
    head = scratch / card.explain.file
    shutil.copyfile(source_dir / card.explain.file, head)
    probabilities, maps = class_maps(scratch / "model.onnx", head, images, card.explain.output,
                                     card.output.name)
    try:
        worst = check_cam(probabilities, maps)
    except CamError as error:
        raise QuantizeError(f"int8 class activation maps: {error}") from None
    logger.info("int8 CAM check: softmax(mean(maps)) vs probabilities max abs diff %.3g", worst)


def _card(card: ClassifierCard, name: str, version: int, sha: str, quantization: Quantization,
          measured: dict[str, Any] | None) -> ClassifierCard:
    document = card.model_dump(mode="json", exclude_unset=True)
    for stale in ("sanity", "metrics", "quantization"):  # they describe the float graph
        document.pop(stale, None)
    kept = {key: value for key, value in document.pop("provenance", {}).items()
            if key not in ("export_check", "git_commit", "created", "exporter")}
    document.update({"name": name, "version": version, "onnx_sha256": sha,
                     "provenance": provenance(EXPORTER + " --quantize int8", **kept),
                     "metrics": {"measured": measured} if measured else {},
                     "quantization": quantization.model_dump(mode="json", exclude_none=True)})
    return ClassifierCard.model_validate(document)


def quantize_version(source_dir: str | Path, *, models_dir: str | Path = "models",
                     name: str | None = None, version: int = 1, overwrite: bool = False,
                     calibration: ImageSet | None = None, max_top1_drop: float = MAX_TOP1_DROP,
                     min_top1_agreement: float = MIN_TOP1_AGREEMENT,
                     test_limit: int | None = None, method: str = "minmax",
                     reduce_range: bool = False) -> Path:
    """Quantize the float model in ``source_dir`` to ``models_dir/<name>/<version>``.

    Args:
        source_dir: A float classifier's version directory (``models/NAME/VERSION``).
        models_dir: The model repository to write to.
        name: The int8 model's name (default: the float name + :data:`SUFFIX`).
        version: Its version.
        overwrite: Replace an existing version.
        calibration: Images to calibrate on (default: :func:`calibration_set`).
        max_top1_drop: Refuse when test-split top-1 drops by more.
        min_top1_agreement: Refuse when fewer natural photos keep their top-1 (no test split).
        test_limit: Measure on the first ``test_limit`` test images only (quick tests).
        method: Calibration method, a key of :data:`METHODS`.
        reduce_range: 7-bit weights (for CPUs without VNNI, where U8S8 products can saturate).

    Raises:
        QuantizeError: a check failed or the accuracy limit was passed; nothing is written.
    """
    from onnxruntime import __version__ as ort_version

    from training.quantize_eval import compare

    source_dir = Path(source_dir)
    try:
        card = load_card(source_dir / CARD_FILE)
    except (ModelFormatError, FileNotFoundError) as error:
        raise QuantizeError(f"{source_dir} holds no float model to quantize: {error}") from None
    if not isinstance(card, ClassifierCard):
        raise QuantizeError(f"{source_dir} is a {card.task} model; only classifiers quantize")
    if card.quantization is not None:
        raise QuantizeError(f"{source_dir} is already int8; quantize its float model "
                            f"{card.quantization.source.name}")
    name = name or card.name + SUFFIX
    target = check_target(models_dir, name, version, overwrite)
    calibration = calibration or calibration_set(card)
    with tempfile.TemporaryDirectory(prefix="convserve-int8-") as scratch_name:
        scratch = Path(scratch_name)
        int8_path = scratch / "model.onnx"
        keep = quantize_graph(source_dir / "model.onnx", int8_path, card, calibration.images,
                              method, reduce_range)
        _check_contract(int8_path, card)
        result = compare(source_dir / "model.onnx", int8_path, card, test_limit)
        _check_explain(scratch, source_dir, card, result.sample)
        quantization = Quantization(
            activations="uint8", weights="int8", per_channel=True, reduce_range=reduce_range,
            float_nodes=keep, tool=f"onnxruntime.quantization {ort_version}",
            source=FloatSource(name=card.name, version=card.version,
                               onnx_sha256=sha256_of(source_dir / "model.onnx")),
            calibration=Calibration.model_validate({**calibration.about, "method": method}),
            accuracy=result.accuracy, agreement=result.agreement,
            max_top1_drop=max_top1_drop if result.accuracy else None,
            min_top1_agreement=None if result.accuracy else min_top1_agreement)
        _refuse_if_worse(name, quantization)
        meta = _card(card, name, version, sha256_of(int8_path), quantization, result.measured)
        publish(scratch, ["model.onnx"] + ([card.explain.file] if card.explain is not None
                                           and card.explain.file else []), meta, target)
    logger.info("%s: %s", target, json.dumps(quantization.model_dump(
        mode="json", include={"accuracy", "agreement"}, exclude_none=True)))
    return target


def _refuse_if_worse(name: str, quantization: Quantization) -> None:
    accuracy, agreement = quantization.accuracy, quantization.agreement
    if accuracy is not None and quantization.max_top1_drop is not None and (
            accuracy.top1_drop > quantization.max_top1_drop):
        raise QuantizeError(
            f"{name}: int8 top-1 {accuracy.int8_top1:.4f} vs float {accuracy.float_top1:.4f} on "
            f"{accuracy.images} {accuracy.dataset} {accuracy.split} images: a drop of "
            f"{accuracy.top1_drop * 100:.2f} points > the limit of "
            f"{quantization.max_top1_drop * 100:.2f}; not writing it (calibration: "
            f"{quantization.calibration.images} {quantization.calibration.dataset} images)")
    if agreement is not None and quantization.min_top1_agreement is not None and (
            (agreement.confident_top1_agreement or 0.0) < quantization.min_top1_agreement):
        raise QuantizeError(
            f"{name}: int8 and float agree on the top-1 of "
            f"{agreement.confident_top1_agreement or 0:.1%} of the {agreement.confident_photos} "
            f"natural photos the float model is confident about (top-1 >= 0.5) < the limit of "
            f"{quantization.min_top1_agreement:.0%} (all {agreement.photos} photos: "
            f"{agreement.top1_agreement:.1%}; largest probability difference "
            f"{agreement.max_probability_difference:.3f}; disagreements: "
            f"{', '.join(agreement.disagreements)}); not writing it")


def quantize_export(source: str | Path, *, name: str | None = None, version: int | None = None,
                    models_dir: str | Path = "models", overwrite: bool = False) -> Path:
    """``python -m training export SOURCE --quantize int8``: ``SOURCE`` is an exported float
    version directory (quantized as it is) or a training run (exported as usual first, then
    quantized). ``name`` names the int8 model (default: the float name + :data:`SUFFIX`)."""
    source = Path(source)
    if not (source / CARD_FILE).is_file():
        from training.export_run import export_checkpoint

        source = export_checkpoint(source, version=version, models_dir=models_dir,
                                   overwrite=overwrite)
    return quantize_version(source, models_dir=models_dir, name=name, version=version or 1,
                            overwrite=overwrite)
