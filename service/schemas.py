"""Pydantic response models, split by role: health, model descriptions, classification."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code, e.g. invalid_image")
    message: str = Field(description="what went wrong and how to fix it")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class Health(BaseModel):
    status: str = Field(description="'alive' or 'ready'")
    models: list[str] = Field(default_factory=list,
                              description="name/version of each model loaded so far")


class VersionInfo(BaseModel):
    """One loaded model version, as ``model.json`` and ONNX Runtime describe it."""

    name: str
    version: int
    task: str
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


class ModelInfo(BaseModel):
    name: str
    default_version: int = Field(description="the version used when none is named: the one "
                                             "models/<name>/default_version pins, else the newest")
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
