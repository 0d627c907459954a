"""Where a classifier looked: class activation maps or occlusion, aligned to the photo.

Two methods (docs/explain.md), chosen by ``model.json``'s ``explain``:

* ``cam`` (class activation maps, Zhou et al. 2016): one run of the model asking for
  ``probabilities`` and its last feature map, then one run of the small head graph that applies
  the classifier's row for the class to every place of that map (``training/cam.py``).
  Two ONNX Runtime runs, no gradients, no torch.
* ``occlusion`` (for heads with fully connected layers): the image and
  :data:`OCCLUSION_POSITIONS` copies with a grey patch (the training mean) hiding a quarter of
  each side, slid over an 8 x 8 grid, batched (one run for small inputs, runs of 16 for 224x224);
  the map is how much hiding each place lowers the class's probability. Its cost is fixed: 65
  images per request, whatever the photo.

Maps are normalised to [0, 1] and sampled onto a grid over the whole photo as displayed (EXIF
orientation applied): cells outside the part the model saw (its centre crop) are 0.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model_format import Capability, ClassifierCard
from service.errors import InvalidParameter
from service.imaging import crop_box
from service.model_version import ModelVersion

OCCLUSION_GRID = 8  # patch positions per side
OCCLUSION_POSITIONS = OCCLUSION_GRID * OCCLUSION_GRID
# Images per occlusion run at most, in pixels: 28x28 or 64x64 inputs go in one run, 224x224 in
# runs of 16 (ONNX Runtime's CPU arena keeps the memory of the largest batch a session ran).
OCCLUSION_PIXELS_PER_RUN = 16 * 224 * 224
GRID_CELLS = 32  # cells along the photo's longer side in JSON answers
PNG_MAX_SIDE = 1024  # the explained photo is scaled down to this (bounded time and size)
# A jet-like colour map: blue (cold) -> cyan -> yellow -> red (hot).
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]],
                    np.float32)


@dataclass(frozen=True)
class Explanation:
    """One image's map for one class, at the model's input geometry."""

    method: str  # "cam" or "occlusion"
    probabilities: np.ndarray  # [K], the image's answer (as classify gives it)
    index: int  # the explained class
    map: np.ndarray  # [h, w] in [0, 1], covering the model's input
    runs: int  # ONNX Runtime runs
    images: int  # images those runs computed


def method_of(version: ModelVersion) -> str:
    """The default method: ``model.json``'s ``explain.method`` (``cam``, ``occlusion`` or
    ``none``); a classifier without one is occluded, a face detector does not explain."""
    card = version.card
    if not isinstance(card, ClassifierCard) or version.input is None:
        return "none"
    return "occlusion" if card.explain is None else card.explain.method


def methods_of(version: ModelVersion) -> list[str]:
    """Every method ``version`` can explain by, its default first."""
    default = method_of(version)
    if default == "none":
        return []
    found = [default, "occlusion"] + (["cam"] if "explain" in version.sessions else [])
    return list(dict.fromkeys(found))


def require_method(version: ModelVersion, requested: str | None = None) -> str:
    """The method to use: ``requested``, or the model's default.

    Raises:
        UnsupportedTask: the model does neither method (HTTP 422).
        InvalidParameter: it cannot do the ``requested`` one (HTTP 422).
    """
    version.require(Capability.EXPLAIN)
    available = methods_of(version)
    if requested is None:
        return available[0]
    if requested not in available:
        raise InvalidParameter(f"method: model {version.name!r} cannot explain by {requested!r}"
                               f" (its graph has no class activation maps); it can by: "
                               f"{', '.join(available)}")
    return requested


def resolve_class(raw: str | None, labels: list[str], probabilities: np.ndarray) -> int:
    """The class to explain: an index, a label (exact, then ignoring case), or the top-1.

    Raises:
        InvalidParameter: no such class (HTTP 422).
    """
    if raw is None or raw == "":
        return int(np.argmax(probabilities))
    if raw.isascii() and raw.isdigit():  # not '²' or '፩', which int() refuses
        if len(raw.lstrip("0")) > len(str(len(labels))):  # no 4,300-digit int() either
            raise InvalidParameter(f"class: index {raw[:20]}{'...' if len(raw) > 20 else ''} "
                                   f"is out of range; this model has {len(labels)} classes "
                                   f"(0 to {len(labels) - 1})")
        index = int(raw)
        if index < len(labels):
            return index
        raise InvalidParameter(f"class: index {index} is out of range; this model has "
                               f"{len(labels)} classes (0 to {len(labels) - 1})")
    if raw in labels:
        return labels.index(raw)
    folded = [label.casefold() for label in labels]
    if raw.casefold() in folded:
        return folded.index(raw.casefold())
    shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
    raise InvalidParameter(f"class: no class labelled {raw!r}; give a label ({shown}) or an "
                           "index (GET /v1/models/{name} lists the labels)")


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (Zhou et al.'s normalisation); a flat map becomes zeros."""
    values = values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if not math.isfinite(low) or not math.isfinite(high) or high - low < 1e-12:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def class_activation_map(version: ModelVersion, array: np.ndarray,
                         wanted: str | None) -> Explanation:
    """One model run (probabilities and features), one head run (the class's map)."""
    card = version.card
    assert isinstance(card, ClassifierCard) and card.explain is not None
    feature_name = card.explain.output
    assert feature_name is not None
    probabilities, features = version.session.run(
        {version.input_name: array[None]}, [version.output_name, feature_name], alone=False)
    index = resolve_class(wanted, version.labels, probabilities[0])
    head = version.sessions["explain"]
    cam = head.run({"features": features, "class": np.array([index], np.int64)}, ["cam"],
                   alone=False)[0]
    return Explanation("cam", probabilities[0], index, normalise(cam[0, 0]), runs=2, images=1)


def occlusion_batch(array: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, list[tuple[
        int, int, int, int]]]:
    """The image then :data:`OCCLUSION_POSITIONS` copies with a patch of ``fill``; and each
    patch's ``(top, left, bottom, right)``."""
    height, width = array.shape[:2]
    patch_h, patch_w = math.ceil(height / 4), math.ceil(width / 4)
    tops = np.linspace(0, height - patch_h, OCCLUSION_GRID).round().astype(int)
    lefts = np.linspace(0, width - patch_w, OCCLUSION_GRID).round().astype(int)
    batch = np.repeat(array[None], OCCLUSION_POSITIONS + 1, axis=0)
    boxes = []
    for i, (top, left) in enumerate((t, e) for t in tops for e in lefts):
        batch[i + 1, top:top + patch_h, left:left + patch_w] = fill
        boxes.append((int(top), int(left), int(top) + patch_h, int(left) + patch_w))
    return batch, boxes


def occlusion_inputs(version: ModelVersion, array: np.ndarray) -> tuple[
        np.ndarray, list[tuple[int, int, int, int]]]:
    """The image and its :data:`OCCLUSION_POSITIONS` copies, each with a patch of the training
    mean (:func:`occlusion_batch`)."""
    card = version.card
    assert isinstance(card, ClassifierCard)
    channels = array.shape[2]
    mean = card.preprocessing.mean if card.preprocessing and card.preprocessing.mean else [0.5]
    fill = np.array(mean if len(mean) == channels else [float(np.mean(mean))] * channels)
    return occlusion_batch(array, np.round(fill * 255).astype(np.uint8))


def occlusion_from(version: ModelVersion, shape: tuple[int, ...], probabilities: np.ndarray,
                   boxes: list[tuple[int, int, int, int]], wanted: str | None,
                   runs: int) -> Explanation:
    """The occlusion map from the answers to :func:`occlusion_inputs`' images (image first)."""
    index = resolve_class(wanted, version.labels, probabilities[0])
    drops = probabilities[0, index] - probabilities[1:, index]
    total = np.zeros(shape[:2], np.float64)
    count = np.zeros(shape[:2], np.float64)
    for drop, (top, left, bottom, right) in zip(drops, boxes, strict=True):
        total[top:bottom, left:right] += drop
        count[top:bottom, left:right] += 1
    heat = np.maximum(total / np.maximum(count, 1), 0)
    highest = float(heat.max())
    result = (heat / highest).astype(np.float32) if highest > 0 else np.zeros_like(heat, np.float32)
    return Explanation("occlusion", probabilities[0], index, result, runs=runs,
                       images=len(probabilities))


def occlusion_map(version: ModelVersion, array: np.ndarray, wanted: str | None) -> Explanation:
    """How much a grey patch over each place lowers the class's probability (65 images, in runs
    of at most :data:`OCCLUSION_PIXELS_PER_RUN` pixels and a GPU session's largest batch), run
    directly on the version's session (offline; the service queues them in its batcher:
    :mod:`service.explain_run`)."""
    batch, boxes = occlusion_inputs(version, array)
    chunk = max(1, min(len(batch), OCCLUSION_PIXELS_PER_RUN // (array.shape[0] * array.shape[1])))
    if version.batch_sizes:
        chunk = min(chunk, max(version.batch_sizes))
    outputs = [version.infer(batch[start:start + chunk], False)
               for start in range(0, len(batch), chunk)]
    return occlusion_from(version, array.shape, np.concatenate(outputs), boxes, wanted,
                          runs=len(outputs))


def explain_array(version: ModelVersion, array: np.ndarray, wanted: str | None,
                  method: str | None = None) -> Explanation:
    """The map of ``array`` (the model's uint8 ``[H, W, C]`` input) for class ``wanted``, by
    ``method`` (default: the model's).

    Raises:
        UnsupportedTask: the model does neither method (HTTP 422).
        InvalidParameter: ``wanted`` is no class of the model, or it cannot do ``method``.
    """
    if require_method(version, method) == "cam":
        return class_activation_map(version, array, wanted)
    return occlusion_map(version, array, wanted)


def oriented_size(data: bytes) -> tuple[int, int]:
    """The photo's (width, height) as displayed (EXIF orientation applied), from its header."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        try:
            orientation = int(image.getexif().get(0x0112, 1))
        except Exception:
            orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def region(decoded_size: tuple[int, int], photo_size: tuple[int, int],
           version: ModelVersion) -> tuple[float, float, float, float]:
    """The part of the photo the model saw, ``(left, top, right, bottom)`` in photo pixels."""
    assert version.input is not None
    left, top, right, bottom = crop_box(decoded_size, version.input)
    sx, sy = photo_size[0] / decoded_size[0], photo_size[1] / decoded_size[1]
    return (left * sx, top * sy, right * sx, bottom * sy)


def sample(heat: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int],
           photo_size: tuple[int, int]) -> np.ndarray:
    """``heat`` (covering ``box`` of a photo of ``photo_size``) bilinearly sampled at the centres
    of a ``size`` (columns, rows) grid over the whole photo; 0 outside ``box``."""
    columns, rows = size
    xs = (np.arange(columns) + 0.5) * photo_size[0] / columns
    ys = (np.arange(rows) + 0.5) * photo_size[1] / rows
    left, top, right, bottom = box
    u = (xs - left) / (right - left) * heat.shape[1] - 0.5
    v = (ys - top) / (bottom - top) * heat.shape[0] - 0.5
    inside = ((xs >= left) & (xs < right))[None, :] & ((ys >= top) & (ys < bottom))[:, None]
    u, v = np.clip(u, 0, heat.shape[1] - 1), np.clip(v, 0, heat.shape[0] - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, heat.shape[1] - 1), np.minimum(v0 + 1, heat.shape[0] - 1)
    fu, fv = (u - u0)[None, :], (v - v0)[:, None]
    top_row = heat[v0][:, u0] * (1 - fu) + heat[v0][:, u1] * fu
    bottom_row = heat[v1][:, u0] * (1 - fu) + heat[v1][:, u1] * fu
    return np.where(inside, top_row * (1 - fv) + bottom_row * fv, 0.0).astype(np.float32)


def grid_size(photo_size: tuple[int, int], longer: int = GRID_CELLS) -> tuple[int, int]:
    """(columns, rows) with ``longer`` cells along the longer side, the photo's aspect."""
    width, height = photo_size
    if width >= height:
        return longer, max(1, round(longer * height / width))
    return max(1, round(longer * width / height)), longer


def peak(heat: np.ndarray, box: tuple[float, float, float, float]) -> tuple[float, float]:
    """The map's hottest place (first one on ties), in photo pixels."""
    row, column = np.unravel_index(int(np.argmax(heat)), heat.shape)
    left, top, right, bottom = box
    return (left + (column + 0.5) * (right - left) / heat.shape[1],
            top + (row + 0.5) * (bottom - top) / heat.shape[0])


def colourise(values: np.ndarray) -> np.ndarray:
    """[0, 1] values -> uint8 RGB through the jet-like colour map."""
    flat = values.reshape(-1)
    rgb = np.stack([np.interp(flat, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=1)
    return rgb.reshape(*values.shape, 3).astype(np.uint8)


def blend_png(photo: Image.Image, heat: np.ndarray, box: tuple[float, float, float, float],
              ) -> bytes:
    """The photo (at most :data:`PNG_MAX_SIDE` a side) with the map blended over it: hot places
    coloured, cold ones left as they are."""
    full_size = photo.size
    shown = photo.convert("RGB")
    if max(full_size) > PNG_MAX_SIDE:  # at least 1 px a side, whatever the aspect ratio
        scale = PNG_MAX_SIDE / max(full_size)
        shown = shown.resize((max(1, round(full_size[0] * scale)),
                              max(1, round(full_size[1] * scale))), Image.Resampling.BICUBIC)
    values = sample(heat, box, shown.size, full_size)
    alpha = (0.65 * values)[:, :, None]
    pixels = np.asarray(shown, np.float32)
    blended = pixels * (1 - alpha) + colourise(values).astype(np.float32) * alpha
    out = io.BytesIO()
    Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8)).save(out, "PNG", compress_level=1)
    return out.getvalue()
