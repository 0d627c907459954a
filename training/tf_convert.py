"""Converting a TensorFlow graph to ONNX for ``ship``: what the converted face detectors share.

TensorFlow and ``tf2onnx`` are needed only here, never to serve: they run in
``$CONVSERVE_CONVERT_PYTHON`` (default: this interpreter), which needs the ``faces-convert``
extra. :func:`convert_and_publish` converts in a scratch directory, lets the caller compare ONNX
Runtime with the source framework on :data:`PARITY_PHOTOS`, and publishes the graph with its
card (``model.json`` last).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model_format import DetectorCard, parse_card
from training.assets import ASSETS, fetch, sha256_of
from training.export import ExportError
from training.publish import provenance, publish

logger = logging.getLogger(__name__)
OPSET = 17
PARITY_PHOTOS = ("multi-face", "single-face", "face-bw", "astronaut")


def convert_python() -> str:
    """The interpreter that has TensorFlow and tf2onnx."""
    return os.environ.get("CONVSERVE_CONVERT_PYTHON", sys.executable)


def run_converter(command: list[str], what: str) -> None:
    """Run ``command`` (in the converting interpreter); its failure as an ExportError."""
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as error:
        tail = getattr(error, "stderr", "") or str(error)
        raise ExportError(f"{what} failed: {tail.strip()[-600:]}. Converting needs TensorFlow "
                          "and tf2onnx: pip install '.[faces-convert]', or point "
                          "CONVSERVE_CONVERT_PYTHON at a Python that has them") from None


def parity_inputs(prepare: Callable[[Image.Image], np.ndarray], scratch: Path) -> list[str]:
    """Each of :data:`PARITY_PHOTOS` as the graph takes it, saved as ``.npy`` in ``scratch``."""
    inputs = []
    for name in PARITY_PHOTOS:
        np.save(scratch / f"{name}.npy", prepare(Image.open(fetch(name))))
        inputs.append(str(scratch / f"{name}.npy"))
    return inputs


def convert_and_publish(out: Path, source: list[str], reference: str,
                        check_parity: Callable[[Path, Path], float],
                        card: Callable[[str, float], DetectorCard]) -> float:
    """Convert with tf2onnx (``source``: the arguments naming the graph and its tensors) at
    :data:`OPSET`, check it with ``check_parity(graph, scratch)`` (the largest difference from
    ``reference``, the source framework), and publish it to ``out`` with ``card(sha256,
    parity)``. Returns the parity."""
    with tempfile.TemporaryDirectory(prefix=f"convserve-{out.parent.name}-") as name:
        scratch = Path(name)
        graph = scratch / "model.onnx"
        run_converter([convert_python(), "-m", "tf2onnx.convert", *source, "--opset", str(OPSET),
                       "--output", str(graph)], "tf2onnx")
        parity = check_parity(graph, scratch)
        logger.info("%s: ONNX Runtime vs %s max |diff| %.2e", out.parent.name, reference, parity)
        publish(scratch, ["model.onnx"], card(sha256_of(graph), parity), out)
    return parity


def detector_card(name: str, version: int, asset: str, digest: str, fields: dict[str, Any],
                  module: str) -> DetectorCard:
    """A converted face detector's ``model.json``: its own ``fields`` (input, output,
    preprocessing, detector) and what every converted graph records (task, labels, where its
    weights came from: ``asset``, converted by ``module``, and the graph's sha256)."""
    parsed = parse_card({
        "name": name, "version": version, "task": "face-detection", "labels": ["face"], **fields,
        "metrics": {},
        "provenance": provenance(f"tf2onnx (opset {OPSET}) via {module}", config=None,
                                 source_weights=[ASSETS[asset].source_weights()]),
        "onnx_sha256": digest,
    }, f"{name} model.json")
    assert isinstance(parsed, DetectorCard)
    return parsed
