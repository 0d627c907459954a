"""The model repository format: one pydantic definition of ``models/<name>/<version>/model.json``.

``training/export.py`` builds a :data:`ModelCard` and writes it with :func:`write_card`;
``service/repository.py`` reads it with :func:`load_card`, which validates it and names the file
and the field to fix. This module needs pydantic only (no torch, no ONNX Runtime), so the
serving install and the training code share it. docs/model-format.md's field tables are
generated from these classes (``python -m model_format.docs --write``) and a test keeps
them in step.

Every object accepts fields it does not know (``extra="allow"``: an exporter may record more,
e.g. ``sanity`` or ``training``, and a later version may add optional fields) but validates every
field it defines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from model_format.layout import CARD_FILE, NAME_PATTERN, NAME_RE, SERVING_FILE
from model_format.tasks import Task

RESIZE_METHODS = ("stretch", "shorter-side-center-crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")

__all__ = [
    "RESIZE_METHODS",
    "INTERPOLATIONS",
    "ResizeMethod",
    "Interpolation",
    "ModelName",
    "ModelFormatError",
    "Resize",
    "ImageInput",
    "Output",
    "Preprocessing",
    "Measured",
    "Reported",
    "Metrics",
    "SourceWeights",
    "ExportCheck",
    "Provenance",
    "FaceCrop",
    "Explain",
    "FloatSource",
    "Calibration",
    "FloatComparison",
    "PhotoAgreement",
    "Quantization",
    "ClassifierCard",
    "DetectorInput",
    "DetectorCard",
    "ServingHints",
    "load_serving_hints",
    "ModelCard",
    "describe",
    "parse_card",
    "load_card",
    "dump_card",
    "write_card",
]

ResizeMethod = Literal["stretch", "shorter-side-center-crop"]
Interpolation = Literal["bilinear", "bicubic", "nearest", "area"]


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"model names are lower-case letters, digits and '-', at most 64 "
                         f"(regex {NAME_PATTERN})")
    return name


ModelName = Annotated[str, AfterValidator(_check_name),
                      Field(description="lower-case letters, digits and '-'")]


class ModelFormatError(ValueError):
    """``model.json`` breaks the format; the message names the file and each bad field."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class Resize(_Part):
    """How the service turns a decoded image into ``height x width``."""

    method: ResizeMethod = Field(
        default="stretch", description="stretch: to exactly width x height; "
        "shorter-side-center-crop: shorter side to shorter_side, then a centre crop")
    shorter_side: int | None = Field(default=None, gt=0,
                                     description="required for shorter-side-center-crop")
    interpolation: Interpolation = Field(default="bilinear", description="resampling filter")

    @model_validator(mode="after")
    def _crop_needs_side(self) -> Resize:
        if self.method == "shorter-side-center-crop" and self.shorter_side is None:
            raise ValueError("shorter_side is required for shorter-side-center-crop")
        return self


class ImageInput(_Part):
    """The graph's one input: uint8 ``[N, height, width, channels]`` pixels."""

    name: str = Field(default="image", description="ONNX input name")
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3] = Field(default=3, description="1 grey, 3 RGB")
    resize: Resize = Field(default_factory=lambda: Resize())


class Output(_Part):
    """The graph's output: float32 ``[N, len(labels)]`` softmax probabilities."""

    name: str = Field(default="probabilities", description="ONNX output name")
    dtype: Literal["float32"] = "float32"


class Preprocessing(_Part):
    """Informative: what the graph does to [0, 1] pixels (it is inside the graph already)."""

    scale: float = Field(default=1 / 255, description="uint8 -> [0, 1]")
    mean: list[float] | None = Field(default=None, description="per channel, on [0, 1] pixels")
    std: list[float] | None = Field(default=None, description="per channel, on [0, 1] pixels")
    whitening: Literal["pca", "zca"] | None = None
    source: str | None = Field(default=None, description="where these statistics come from")


class Measured(_Part):
    """Measured by convserve on a held-out split."""

    dataset: str
    split: str
    images: int = Field(gt=0)
    top1: float = Field(ge=0, le=1)
    top5: float | None = Field(default=None, ge=0, le=1)


class Reported(_Part):
    """Reported by the weights' authors (not measured here)."""

    dataset: str
    top1: float = Field(ge=0, le=1)
    source: str | None = None


class Metrics(BaseModel):
    """``measured`` and/or ``reported``, never mixed."""

    model_config = ConfigDict(extra="forbid")
    measured: Measured | None = None
    reported: Reported | None = None


class SourceWeights(_Part):
    """One reused weight file, from a registry package, pinned by sha256."""

    package: str
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ExportCheck(_Part):
    """The exporter's ONNX Runtime vs PyTorch check."""

    opset: int = Field(ge=17)
    onnxruntime_vs_pytorch_max_abs_diff: float = Field(ge=0)
    images: int = Field(gt=0)
    tolerance: float = Field(gt=0)


class Provenance(_Part):
    """Where the model came from."""

    source_weights: list[SourceWeights] = Field(default_factory=list)
    config: dict[str, Any] | None = Field(default=None, description="resolved training config")
    git_commit: str | None = None
    created: str | None = Field(default=None, description="UTC, ISO 8601")
    exporter: str | None = None
    export_check: ExportCheck | None = None


class FaceCrop(_Part):
    """How an expression model wants its faces cut (``service/faces.py``)."""

    detector: str | None = Field(default=None,
                                 description="the face detector it was checked with")
    margin: float | None = Field(default=None, ge=0, le=1,
                                 description="per side, fraction of the box")
    align: bool = Field(default=True, description="turn the face so the eyes are level")


class Explain(_Part):
    """How the service explains a classifier's answers (``POST .../explain``, docs/explain.md)."""

    method: Literal["cam", "occlusion", "none"] = Field(
        description="the default method. cam: class activation maps from the graph; occlusion: "
        "grey patches slid over the image, one batched run; none: the model does not explain")
    output: str | None = Field(default=None, description="cam: model.onnx's output holding the "
                               "last feature map, float32 [N, C, h, w]")
    file: str | None = Field(default=None, description="cam: the head graph in the version "
                             "directory: (features, class) -> cam [N, 1, h, w]")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="sha256 of file")
    reason: str | None = Field(default=None, description="why the default is not cam")

    @model_validator(mode="after")
    def _cam_needs_graphs(self) -> Explain:
        if self.method == "cam" and not (self.output and self.file):
            raise ValueError("output and file are required for method cam")
        if bool(self.output) != bool(self.file):
            raise ValueError("output and file go together (the maps need both graphs)")
        return self


class FloatSource(_Part):
    """The float model an int8 model was quantized from."""

    name: ModelName
    version: int = Field(gt=0)
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="its model.onnx")


class Calibration(_Part):
    """The images the activation ranges were calibrated on (never a test split)."""

    dataset: str = Field(description="e.g. MNIST, or natural photos for models with no "
                         "training split here")
    split: str | None = Field(default=None, description="the training split; null: photo crops")
    images: int = Field(gt=0, description="how many")
    selection: str = Field(description="how they were chosen (seeded: reproducible)")
    seed: int | None = None
    method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="onnxruntime.quantization CalibrationMethod")


class FloatComparison(_Part):
    """int8 against its float model on a labelled split, both through ONNX Runtime (CPU) after
    the service's resize."""

    dataset: str
    split: str
    images: int = Field(gt=0)
    float_top1: float = Field(ge=0, le=1)
    int8_top1: float = Field(ge=0, le=1)
    top1_drop: float = Field(description="float_top1 - int8_top1 (negative: int8 is better)")
    top1_agreement: float = Field(ge=0, le=1, description="share of images with the same top-1")
    max_probability_difference: float = Field(ge=0, description="max |int8 - float| over every "
                                              "probability of every image")


class PhotoAgreement(_Part):
    """int8 against its float model where no labelled set exists: agreement, not accuracy."""

    photos: int = Field(gt=0, description="every natural photo from the registry packages")
    top1_agreement: float = Field(ge=0, le=1)
    max_probability_difference: float = Field(ge=0)
    confident_photos: int = Field(ge=0, description="photos the float model gives a top-1 "
                                  "probability of at least 0.5")
    confident_top1_agreement: float | None = Field(default=None, ge=0, le=1,
                                                   description="agreement on those (the limit)")
    jpeg_reference_top1_agreement: float | None = Field(
        default=None, ge=0, le=1, description="the float model against itself on the photos "
        "re-encoded as JPEG (quality 90): how often a top-1 flips under a change no one would "
        "call a different image")
    held_out_photos: int = Field(ge=0, description="photos not used for calibration")
    held_out_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    disagreements: list[str] = Field(default_factory=list,
                                     description="photo: float top-1 -> int8 top-1")


class Quantization(_Part):
    """How an int8 model was made from a float one (``training/quantize.py``)."""

    precision: Literal["int8"] = "int8"
    format: Literal["QDQ"] = "QDQ"
    activations: Literal["int8", "uint8"] = Field(description="uint8: U8S8, every convolution "
                                                  "fused on ONNX Runtime's CPU provider")
    weights: Literal["int8", "uint8"] = "int8"
    per_channel: bool = Field(default=True, description="one weight scale per output channel")
    reduce_range: bool = Field(default=False, description="7-bit weights (for non-VNNI CPUs)")
    float_nodes: list[str] = Field(default_factory=list,
                                   description="nodes kept in float (softmax, CAM head)")
    tool: str = Field(description="onnxruntime.quantization and its version")
    source: FloatSource
    calibration: Calibration
    accuracy: FloatComparison | None = Field(default=None, description="models with a test split")
    agreement: PhotoAgreement | None = Field(default=None, description="models without one")
    max_top1_drop: float | None = Field(default=None, description="the export refused more")
    min_top1_agreement: float | None = Field(default=None, description="the export refused less")


class _Card(_Part):
    name: ModelName
    version: int = Field(gt=0)
    labels: list[str] = Field(min_length=1, description="class names in output order")
    files: dict[str, str] | None = Field(
        None, description="graphs of a multi-graph model: key -> file in the version directory")
    preprocessing: Preprocessing | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    provenance: Provenance | None = None
    onnx_sha256: str | dict[str, str] | None = Field(
        None, description="sha256 of model.onnx (multi-graph: of each file in files)")

    @model_validator(mode="after")
    def _distinct_labels(self) -> _Card:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        return self

    @property
    def graphs(self) -> dict[str, str]:
        """Session key -> graph file: ``{"model": "model.onnx"}`` unless ``files`` says more."""
        return dict(self.files) if self.files else {"model": "model.onnx"}


class ClassifierCard(_Card):
    """A whole-image classifier (``classification``) or a face classifier (``expression``)."""

    task: Literal["classification", "expression"] = "classification"
    labels: list[str] = Field(min_length=2, description="class names in output order")
    input: ImageInput
    output: Output = Field(default_factory=lambda: Output())
    face_crop: FaceCrop | None = Field(default=None,
                                       description="expression models: how faces are cut")
    explain: Explain | None = Field(default=None, description="absent: explained by occlusion")
    quantization: Quantization | None = Field(default=None,
                                              description="absent: a float model")


class DetectorInput(_Part):
    """A detector's input as its code (``service/faces.py``) expects it; free-form beyond this."""

    name: str = "image"
    dtype: str = "float32"


class DetectorCard(_Card):
    """A face detector: one or more graphs run by ``service/faces.py``, never classified."""

    task: Literal["face-detection"]
    input: DetectorInput = Field(default_factory=DetectorInput)
    output: dict[str, Any] = Field(default_factory=dict)
    detector: dict[str, Any] | None = Field(default=None,
                                            description="algorithm and its parameters")


class ServingHints(_Part):
    """``serving.json`` beside ``model.json`` (optional): measured once on a serving machine by
    ``python -m service.batch_sizes --write``, not by the exporter, and read at every load."""

    cpu_max_batch_size: int = Field(gt=0, description="on a CPU, images per ONNX Runtime run at "
                                    "most (capped by CONVSERVE_MAX_BATCH_SIZE)")
    cpu_batch_costs_ms: dict[int, float] = Field(
        default_factory=dict, description="ms of ONNX Runtime per image by batch size, measured")
    measured: dict[str, Any] | None = Field(default=None,
                                            description="when, where and with what command")


def load_serving_hints(directory: Path) -> ServingHints | None:
    """``directory/serving.json`` validated, or None when there is none.

    Raises:
        ModelFormatError: naming the file and each bad field.
    """
    path = directory / SERVING_FILE
    if not path.is_file():
        return None
    try:
        return ServingHints.model_validate_json(path.read_text())
    except ValidationError as error:
        raise ModelFormatError(f"{path}: {describe(error)}") from None


def _kind(value: Any) -> str:
    task = value.get("task") if isinstance(value, dict) else getattr(value, "task", None)
    return "detector" if task == Task.FACE_DETECTION else "classifier"


ModelCard = Annotated[Annotated[ClassifierCard, Tag("classifier")]
                      | Annotated[DetectorCard, Tag("detector")], Discriminator(_kind)]
_CARD = TypeAdapter[ClassifierCard | DetectorCard](ModelCard)


def describe(error: ValidationError, prefix: str = "", skip: int = 0) -> str:
    """Each error of ``error`` as ``field.path: what is wrong (got value)``, joined by ``; ``.

    Args:
        error: From validating a model card or a part of one.
        prefix: Put before each field path (e.g. ``input.`` for an ``ImageInput``).
        skip: Leading path items to drop (the union tag of a :data:`ModelCard`).
    """
    lines = []
    for item in error.errors():
        where = prefix + ".".join(str(p) for p in item["loc"][skip:]) or "(top level)"
        got = item.get("input")
        shown = "" if item["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {item['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(lines)


def parse_card(data: Any, source: str = CARD_FILE) -> ClassifierCard | DetectorCard:
    """Validate a decoded ``model.json``.

    Raises:
        ModelFormatError: naming ``source`` and every bad field.
    """
    try:
        return _CARD.validate_python(data)
    except ValidationError as error:
        raise ModelFormatError(f"{source}: {describe(error, skip=1)} (see docs/model-format.md)"
                               ) from None


def load_card(path: Path) -> ClassifierCard | DetectorCard:
    """Read and validate ``path`` (a ``model.json``).

    Raises:
        ModelFormatError: not JSON, or a field breaks the format (message names both).
        OSError: unreadable.
    """
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFormatError(f"{path}: not valid JSON ({error})") from None
    return parse_card(data, str(path))


def dump_card(card: ClassifierCard | DetectorCard) -> str:
    """``card`` as ``model.json`` text: the fields it was built with, nothing added."""
    return json.dumps(card.model_dump(mode="json", exclude_unset=True), indent=1) + "\n"


def write_card(card: ClassifierCard | DetectorCard, directory: Path) -> Path:
    """Write ``directory/model.json`` atomically (``.tmp`` then rename): a reader never sees
    half a model, and the graph files must already be there."""
    path = directory / CARD_FILE
    partial = directory / (CARD_FILE + ".tmp")
    partial.write_text(dump_card(card))
    partial.replace(path)
    return path
