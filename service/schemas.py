"""The answers' types, split by role: errors, health, model descriptions, classification,
expressions, explanations.

The engine and every protocol adapter share them (pydantic only, no web framework); the HTTP
routes declare them as their response models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code, e.g. invalid_image")
    message: str = Field(description="what went wrong and how to fix it")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class ProtocolErrorResponse(BaseModel):
    """The Open Inference Protocol's error answer (``/v2``)."""

    error: str = Field(description="what went wrong and how to fix it")


class Health(BaseModel):
    status: str = Field(description="'alive' or 'ready'")
    models: list[str] = Field(default_factory=list,
                              description="name/version of each model loaded so far")


class BatchingInfo(BaseModel):
    """The batching figures a classifier runs with and where they came from (service/tuning.py)."""

    source: Literal["host cache", "serving.json", "default"] = Field(
        description="host cache: measured on this host by `convserve tune` (CONVSERVE_TUNING_DIR);"
                    " serving.json: shipped beside model.json, measured on another machine; "
                    "default: CONVSERVE_MAX_BATCH_SIZE")
    max_batch_size: int
    batch_costs_ms: dict[str, float] = Field(default_factory=dict)
    latency_threads: int | None = Field(
        default=None, description="ONNX Runtime threads of a lone request's run: host cache's "
                                  "figure, or an instance's own threads for a graph whose run "
                                  "takes under 0.1 ms; null: every core")
    throughput_instances: int | None = Field(
        default=None, description="host cache: the CONVSERVE_INSTANCES with the most images/s "
                                  "(advice; the setting is per process)")
    measured: dict[str, Any] = Field(default_factory=dict, description="command, date, machine")
    file: str | None = Field(default=None, description="the file the figures were read from")
    key: dict[str, Any] | None = Field(
        default=None, description="what the host cache is keyed by on this host (CPU or GPU, "
                                  "cores, onnxruntime, provider, graph sha256)")


class VersionInfo(BaseModel):
    """One loaded model version, as ``model.json`` and ONNX Runtime describe it."""

    name: str
    version: int
    task: str
    capabilities: list[str] = Field(description="what it can be asked: classify, expressions, "
                                    "detect-faces, explain, first-layer (docs/service-"
                                    "architecture.md)")
    labels: list[str]
    num_classes: int
    input: dict[str, Any] = Field(description="model.json's input spec (size, channels, resize)")
    output: dict[str, Any]
    metrics: dict[str, Any] = Field(description="model.json's measured and reported metrics")
    provider: str = Field(description="the ONNX Runtime execution provider actually in use")
    providers: list[str] = Field(description="every provider in use, main one first")
    load_seconds: float
    max_batch_size: int | None = Field(
        description="images per ONNX Runtime run at most: CONVSERVE_MAX_BATCH_SIZE, or on a CPU "
                    "the size with the cheapest image as the version's serving.json says "
                    "(measured once by python -m service.batch_sizes; null: not batched)")
    batch_costs_ms: dict[str, float] = Field(
        default_factory=dict, description="on a CPU: serving.json's ms of ONNX Runtime per "
                                          "image by batch size")
    files: dict[str, str] = Field(default_factory=dict, description="graphs of multi-file models")
    explain: list[str] = Field(default_factory=list, description="how POST .../explain can "
                               "answer, default first: cam (class activation maps), occlusion")
    quantization: dict[str, Any] | None = Field(
        default=None, description="int8 models: model.json's quantization (calibration, accuracy "
                                  "or agreement next to the float model's); null: float")
    notes: list[str] = Field(default_factory=list, description="warnings about how this version "
                             "is served, e.g. an int8 model on a GPU provider")
    batching: BatchingInfo | None = Field(default=None, description="classifiers: the batching "
                                          "figures in force and where they came from")


class ModelInfo(BaseModel):
    name: str
    default_version: int = Field(description="the version used when none is named: the one "
                                             "models/<name>/default_version pins, else the newest;"
                                             " 0 when that file cannot be read (requests naming "
                                             "no version are refused until it is fixed)")
    pinned: bool = Field(description="true: models/<name>/default_version chose the default; "
                                     "false: it is the newest version")
    versions: list[VersionInfo] = Field(description="newest first")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Prediction(BaseModel):
    label: str
    index: int = Field(description="class index in the model's output")
    score: float = Field(description="softmax probability")


class ImageResult(BaseModel):
    filename: str | None = Field(description="the multipart file name, if any")
    predictions: list[Prediction] = Field(description="top_k classes, highest score first")


class ClassifyResponse(BaseModel):
    model: str
    version: int
    results: list[ImageResult] = Field(description="one per image, in the order sent")
    notes: list[str] = Field(default_factory=list, description="present when the answer is "
                             "likely not what was meant, e.g. a whole photo sent to an "
                             "expression model, which expects one face")


class ReloadResponse(BaseModel):
    added: list[str] = Field(description="name/version loaded by this reload")
    removed: list[str] = Field(description="name/version dropped (directory gone or replaced)")
    failed: dict[str, str] = Field(description="name/version -> why it did not load")
    models: list[str] = Field(description="every name/version now served")


class ImageSize(BaseModel):
    width: int
    height: int


# Expressions (POST /v1/expressions)

class Box(BaseModel):
    x: int = Field(description="left edge, pixels from the left of the (EXIF-oriented) photo")
    y: int = Field(description="top edge, pixels from the top")
    width: int
    height: int


class FaceResult(BaseModel):
    box: Box
    detection_score: float | None = Field(description="face probability (null with detect=false)")
    expression: str = Field(description="the most probable expression")
    probabilities: dict[str, float] = Field(description="every expression's probability")


class ExpressionsResponse(BaseModel):
    model: str = Field(description="the expression model")
    version: int = Field(description="its version that answered")
    detector: str | None = Field(description="the face detector (null with detect=false)")
    detector_version: int | None = Field(description="its version that answered")
    image: ImageSize = Field(description="the photo's size after EXIF orientation")
    faces: list[FaceResult] = Field(description="left to right")


# Explanations (POST /v1/models/{name}/explain, /first-layer)

class Cost(BaseModel):
    runs: int = Field(description="ONNX Runtime runs this answer took")
    images: int = Field(description="images those runs computed (occlusion: 1 + 64 patches)")


class Region(BaseModel):
    x: float = Field(description="left edge of the part of the photo the model saw, pixels")
    y: float
    width: float
    height: float


class Point(BaseModel):
    x: float
    y: float


class ExplainResponse(BaseModel):
    model: str
    version: int
    method: Literal["cam", "occlusion"] = Field(
        description="cam: class activation map from the graph; occlusion: grey patch sliding")
    explained: Prediction = Field(description="the class the map is for")
    predictions: list[Prediction] = Field(description="the image's top 5, as classify answers")
    cost: Cost
    image: ImageSize = Field(description="the photo as displayed (EXIF orientation applied)")
    region: Region = Field(description="the part of the photo the model saw (its centre crop)")
    peak: Point = Field(description="the map's hottest place, in photo pixels")
    grid: list[list[float]] = Field(
        description="rows of [0, 1] values, top to bottom, each cell an equal part of the photo "
                    "(32 cells along its longer side); 0 outside region")


class FeatureMap(BaseModel):
    index: int = Field(description="the filter that made it")
    mean: float = Field(description="its mean activation")
    image: str = Field(description="grey PNG data URL, white strongest")


class FirstLayerResponse(BaseModel):
    model: str
    version: int
    layer: str = Field(description="the convolution's node name in the graph")
    activation: str | None = Field(description="the activation after it, whose output the maps are")
    shape: list[int] = Field(description="[filters, channels, height, width]")
    stride: list[int]
    filters: list[list[list[list[float]]]] = Field(
        description="each filter [height][width][channels], [0, 1]: 0.5 is zero weight")
    feature_maps: list[FeatureMap] = Field(default_factory=list,
                                           description="POST only: the strongest, strongest first")
    map_size: list[int] | None = Field(default=None, description="[height, width] of each map")
