"""Class activation maps from the graph (training/cam.py): right maps, and maps that mean something.

* The in-graph maps equal a PyTorch reference computed from the same weights (within 1e-4).
* Their spatial means are the logits (softmax gives the probabilities back).
* Randomising the classifier's weights changes them (Adebayo et al., 2018, model-parameter
  randomisation): the correlation with the trained maps falls.
* Adding the maps left classify's graph computing the same probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from model_format import ClassifierCard, load_card
from service.imaging import InputSpec, prepare
from training import cam
from training.assets import fetch

REPO = Path(__file__).resolve().parents[2]
MOBILENET = REPO / "models" / "imagenet-mobilenetv2" / "1"
EFFICIENTNET = REPO / "models" / "imagenet-efficientnet-lite0" / "1"
PHOTOS = ("chelsea", "coffee", "squirrel")
SPEC = InputSpec(224, 224, 3, "shorter-side-center-crop", 256, "bilinear")


def _feature_output(directory: Path = MOBILENET) -> str:
    card = load_card(directory / "model.json")
    assert isinstance(card, ClassifierCard) and card.explain and card.explain.output
    return card.explain.output


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return np.stack([prepare(fetch(name).read_bytes(), SPEC, 10**8).array for name in PHOTOS])


def _maps(model: bytes, head: bytes, images: np.ndarray, classes: list[int],
          feature_output: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and the map of ``classes[i]`` for image ``i``."""
    cpu = ["CPUExecutionProvider"]
    main, tail = (ort.InferenceSession(model, providers=cpu),
                  ort.InferenceSession(head, providers=cpu))
    probabilities, features = main.run(["probabilities", feature_output or _feature_output()],
                                       {"image": images})
    maps = [tail.run(["cam"], {"features": features[i:i + 1], "class": np.array([k])})[0][0, 0]
            for i, k in enumerate(classes)]
    return probabilities, np.stack(maps)


def test_finds_the_head_or_says_why() -> None:
    assert cam.find_head(onnx.load(str(MOBILENET / "model.onnx"))).weight is not None
    with pytest.raises(cam.CamError, match="not a global average pooling"):
        cam.find_head(onnx.load(str(REPO / "models" / "mnist-lenet5" / "1" / "model.onnx")))


@pytest.mark.parametrize(("backbone", "directory"), [
    ("mobilenet_v2", MOBILENET), ("efficientnet_lite0", EFFICIENTNET)])
def test_maps_equal_pytorch_from_the_same_weights(photos: np.ndarray, backbone: str,
                                                  directory: Path) -> None:
    torch = pytest.importorskip("torch")
    from training.data.preprocessing import Preprocessing
    from training.models import get_model
    from training.models.backbones import pretrained_cfg

    model = get_model(backbone, pretrained=True).eval()
    source = pretrained_cfg(backbone)
    prep = Preprocessing(mean=list(source.mean), std=list(source.std)).module()
    linear = model.classifier[-1] if backbone == "mobilenet_v2" else model._fc
    with torch.inference_mode():
        x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255.0
        features = model.forward_features(prep(x))
        reference = torch.einsum("nchw,kc->nkhw", features, linear.weight) + linear.bias[
            None, :, None, None]
    classes = reference.mean(dim=(2, 3)).argmax(dim=1).tolist()
    probabilities, maps = _maps((directory / "model.onnx").read_bytes(),
                                (directory / "explain.onnx").read_bytes(), photos, classes,
                                _feature_output(directory))
    expected = reference[range(len(classes)), classes].numpy()
    assert maps.shape == expected.shape == (3, 7, 7)
    np.testing.assert_allclose(maps, expected, atol=1e-4, rtol=0)
    assert probabilities.argmax(axis=1).tolist() == classes


def test_map_means_are_the_logits(photos: np.ndarray) -> None:
    probabilities, maps = cam.class_maps(MOBILENET / "model.onnx", MOBILENET / "explain.onnx",
                                         photos[:1], _feature_output())
    assert cam.check_cam(probabilities, maps) < 1e-5


def test_randomised_classifier_changes_the_maps(photos: np.ndarray) -> None:
    """The trained maps against maps from a head whose weights are re-drawn (same mean and
    spread): a map that did not change would be showing the image, not the classifier."""
    head = onnx.load(str(MOBILENET / "explain.onnx"))
    rng = np.random.default_rng(0)
    for tensor in head.graph.initializer:
        values = numpy_helper.to_array(tensor)
        drawn = rng.normal(values.mean(), values.std(), values.shape).astype(values.dtype)
        tensor.CopyFrom(numpy_helper.from_array(drawn, tensor.name))
    model = (MOBILENET / "model.onnx").read_bytes()
    probabilities, _ = _maps(model, (MOBILENET / "explain.onnx").read_bytes(), photos, [0, 0, 0])
    classes = probabilities.argmax(axis=1).tolist()
    _, trained = _maps(model, (MOBILENET / "explain.onnx").read_bytes(), photos, classes)
    _, randomised = _maps(model, head.SerializeToString(), photos, classes)
    correlations = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
                    for a, b in zip(trained, randomised, strict=True)]
    assert max(correlations) < 0.5 and float(np.mean(correlations)) < 0.3, correlations


def test_classify_graph_unchanged(photos: np.ndarray) -> None:
    """The upgrade added an output, no node: without it the graph is the original one, and the
    probabilities are the same to the bit (what classify answers did not change)."""
    model = onnx.load(str(MOBILENET / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["probabilities", _feature_output()]
    assert not any(n.name.startswith("explain") for n in model.graph.node)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    del original.graph.output[1:]
    cpu = ["CPUExecutionProvider"]
    before = ort.InferenceSession(original.SerializeToString(), providers=cpu)
    after = ort.InferenceSession(model.SerializeToString(), providers=cpu)
    np.testing.assert_array_equal(before.run(["probabilities"], {"image": photos})[0],
                                  after.run(["probabilities"], {"image": photos})[0])


def test_fully_connected_head_records_occlusion_and_why(tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "mnist-lenet5" / "1"
    shutil.copytree(REPO / "models" / "mnist-lenet5" / "1", target)
    document = json.loads((target / "model.json").read_text())
    del document["explain"]  # as it was before the upgrade
    (target / "model.json").write_text(json.dumps(document))
    card = cam.upgrade(target)
    assert card.explain is not None and card.explain.method == "occlusion"
    assert "global average pooling" in (card.explain.reason or "")
    assert not (target / "explain.onnx").exists()
