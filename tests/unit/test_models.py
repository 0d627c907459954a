"""Every registered model builds at its intended input size; families, registry contract, heads.

The forward passes run on real photos (scikit-image's chelsea and astronaut), resized to each
model's input size, grey or RGB.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import yaml
from PIL import Image

from training.assets import fetch
from training.models import get_model, list_models
from training.models.generic import CNNSpec, build_generic_from_config
from training.models.shapes import LayerConfigError, to_size

torch.set_num_threads(1)

# Large at their intended size (60-145M parameters or 224 px Inception): one channel setting.
HEAVY = {"alexnet", "zfnet", "googlenet", "vgg", "vgg11", "vgg13", "vgg16", "vgg19"}


def _defaults(name: str) -> dict[str, Any]:
    """The builder's default ``in_channels`` and ``input_size`` (its intended input)."""
    from training.models.registry import _MODELS

    params = inspect.signature(_MODELS[name]).parameters
    return {key: params[key].default for key in ("in_channels", "input_size")}


def _photos(size: tuple[int, int], channels: int) -> torch.Tensor:
    """chelsea and astronaut, stretched to ``size``, scaled to about zero mean, unit std."""
    mode = "L" if channels == 1 else "RGB"
    images = [np.asarray(Image.open(fetch(n)).convert(mode).resize(size[::-1], Image.BILINEAR))
              for n in ("chelsea", "astronaut")]
    x = torch.from_numpy(np.stack(images)).float().div(255)
    x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2)
    return (x - 0.45) / 0.25


def _cases() -> list[Any]:
    cases = []
    for name in list_models():
        default = _defaults(name)["in_channels"]
        channels = [default] if name in HEAVY else [1, 3]
        marks = [pytest.mark.slow] if name in HEAVY else []  # the big ImageNet-size ones
        cases += [pytest.param(name, c, marks=marks) for c in channels]
    return cases


@pytest.mark.parametrize(("name", "channels"), _cases())
def test_every_model_builds_at_its_input_size_and_classifies(name: str, channels: int) -> None:
    input_size = _defaults(name)["input_size"]
    model = get_model(name, num_classes=7, in_channels=channels, input_size=input_size).eval()
    size = to_size(input_size)
    assert model.input_size == size and model.in_channels == channels
    x = _photos(size, channels)
    with torch.inference_mode():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        if name not in HEAVY:
            assert torch.equal(model(x), logits)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert not torch.equal(logits[0], logits[1])  # the two photos give different outputs
    if hasattr(model, "feature_shape"):  # derived at construction, before any forward pass
        assert tuple(features.shape[1:]) == model.feature_shape

    weights = {k: v.clone() for k, v in model.state_dict().items()}
    head = {id(p) for p in model.head_parameters()}
    model.reset_classifier(3)
    assert model.num_classes == 3
    new_head = model.head_parameters()
    assert new_head and not head & {id(p) for p in new_head}
    assert {id(p) for p in new_head} <= {id(p) for p in model.parameters()}
    with torch.inference_mode():
        after = model.eval().forward_features(x)
        assert torch.equal(after, features)  # features untouched
        assert model.forward_head(after).shape == (2, 3)
    new_ids = {id(p) for p in new_head}
    head_names = {n for n, p in model.named_parameters() if id(p) in new_ids}
    kept = {k: v for k, v in model.state_dict().items() if k not in head_names}
    assert kept and all(torch.equal(v, weights[k]) for k, v in kept.items())


def test_registry_lists_the_cnn_family() -> None:
    names = set(list_models())
    assert {"lenet5", "alexnet", "zfnet", "vgg", "vgg11", "vgg13", "vgg16", "vgg19", "vgg_small",
            "googlenet", "generic_cnn", "simple_cnn"} <= names


def test_alexnet_refuses_a_wrong_input_size_before_training() -> None:
    with pytest.raises(LayerConfigError) as info:
        get_model("alexnet", num_classes=10, input_size=100)
    assert str(info.value) == (
        "alexnet with input_size 100: stage 1 pool: O = (W - K + 2P)/S + 1 = "
        "(24 - 3 + 2*0)/2 + 1 = 11.5 is not an integer (input width W=24, kernel K=3, "
        "padding P=0, stride S=2); fix: change the padding or stride so that W - K + 2P is a "
        "multiple of S; or use an input_size that works for every layer: 96 or 128")
    assert info.value.layer == "stage 1 pool" and info.value.result == 11.5


def test_alexnet_and_zfnet_sizes() -> None:
    """AlexNet at 227 needs no padding; at 224 its first conv pads (1, 2); an explicit padding
    that does not work is refused. ZFNet gives the paper's 110-55-26-13-6 maps at 224."""
    classic = get_model("alexnet", num_classes=5, input_size=227, fc_width=32)
    at_224 = get_model("alexnet", num_classes=5, input_size=224, fc_width=32)
    assert classic.features[0][0][0].padding == (0, 0)
    assert isinstance(at_224.features[0][0][0], nn.ZeroPad2d)
    assert classic.feature_shape == at_224.feature_shape == (256, 6, 6)
    with pytest.raises(LayerConfigError, match=r"alexnet with input_size 224: stage 1 conv 1: "
                                               r"O = .*\(224 - 11 \+ 2\*0\)/4 \+ 1 = 54.25"):
        get_model("alexnet", input_size=224, stem_padding=0)
    zfnet = get_model("zfnet", num_classes=5, fc_width=32)
    sizes = [w.name for w in zfnet.spec.windows()]
    assert sizes[0] == "stage 1 conv 1" and zfnet.feature_shape == (256, 6, 6)
    from training.models.shapes import trace_sizes

    assert [s[0] for s in trace_sizes(224, zfnet.spec.windows())] == [110, 55, 26, 13, 13, 13,
                                                                        13, 6]


@pytest.mark.parametrize(("name", "size", "layer", "numbers"), [
    ("vgg16", 100, "stage 3 pool", "(25 - 2 + 2*0)/2 + 1 = 12.5 is not an integer"),
    ("vgg_small", 50, "stage 2 pool", "(25 - 2 + 2*0)/2 + 1 = 12.5 is not an integer"),
    ("googlenet", 100, "stem pool 2",
     "(25 - 3 + 0 + 1)/2 + 1 = 12.5 is not an integer"),
    ("lenet5", 20, "stage 3 conv 1", "(2 - 5 + 2*0)/1 + 1 = -2 is below 1"),
    ("simple_cnn", 30, "stage 2 pool", "(15 - 2 + 2*0)/2 + 1 = 7.5 is not an integer"),
    ("zfnet", 225, "stage 1 conv 1", "(225 - 7 + 0 + 1)/2 + 1 = 110.5 is not an integer"),
])
def test_wrong_input_sizes_are_refused_with_layer_and_numbers(name: str, size: int, layer: str,
                                                               numbers: str) -> None:
    with pytest.raises(LayerConfigError) as info:
        get_model(name, num_classes=7, input_size=size)
    message = str(info.value)
    assert message.startswith(f"{name} with input_size {size}: {layer}: O = ")
    assert numbers in message and "; fix: " in message
    assert info.value.layer == layer and info.value.size is not None


def test_lenet5_classic_and_mnist_sizes() -> None:
    classic = get_model("lenet5", input_size=32)
    mnist = get_model("lenet5", input_size=(28, 28))
    assert classic.features[0][0][0].padding == (0, 0) and mnist.features[0][0][0].padding == (2, 2)
    assert classic.feature_shape == mnist.feature_shape == (120, 1, 1)
    assert sum(p.numel() for p in classic.parameters()) == 61706  # LeNet-5's 60k weights
    assert isinstance(classic.features[0][0][1], nn.Tanh)
    assert isinstance(classic.features[0][1], nn.AvgPool2d)
    modern = get_model("lenet5", input_size=28, activation="relu", pool="max")
    assert isinstance(modern.features[0][1], nn.MaxPool2d)


def test_vgg_depths_widths_and_small() -> None:
    convs = {depth: sum(isinstance(m, nn.Conv2d) for m in
                        get_model("vgg", depth=depth, width=4, fc=[8], input_size=32).modules())
             for depth in (11, 13, 16, 19)}
    assert convs == {11: 8, 13: 10, 16: 13, 19: 16}  # + 3 FC layers = the depth
    custom = get_model("vgg", convs_per_stage=[1, 2], widths=[8, 16], fc=[], input_size=12)
    assert custom.feature_shape == (16, 3, 3) and custom.num_features == 144
    small = get_model("vgg_small")
    assert small.input_size == (48, 48) and small.in_channels == 1 and small.num_classes == 7
    assert small.feature_shape == (256, 3, 3)
    assert any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    with pytest.raises(LayerConfigError, match="vgg: unknown depth 12; valid: 11, 13, 16, 19"):
        get_model("vgg", depth=12)


@pytest.mark.slow
def test_googlenet_aux_heads_only_when_asked_and_training() -> None:
    plain = get_model("googlenet", num_classes=4, input_size=128)
    assert not hasattr(plain, "aux1")
    assert plain.train()(_photos((128, 128), 3)).shape == (2, 4)
    aux = get_model("googlenet", num_classes=4, input_size=128, aux_logits=True, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in aux.modules())
    logits, aux1, aux2 = aux.train()(_photos((128, 128), 3))
    assert logits.shape == aux1.shape == aux2.shape == (2, 4)
    assert aux.eval()(_photos((128, 128), 3)).shape == (2, 4)
    assert len(aux.head_parameters()) == 6
    with pytest.raises(LayerConfigError, match=r"googlenet with input_size 96: aux pool: .*"
                                               r"\(6 - 5 \+ 2\*0\)/3 \+ 1 = 1.33333.* 128"):
        get_model("googlenet", input_size=96, aux_logits=True)


YAML_SPEC = """
activation: {name: maxout, pieces: 2}
batchnorm: true
dropout: 0.2
stages:
  - convs:
      - {out_channels: 16, kernel: 3, padding: 1}
      - {out_channels: 16, kernel: 3, padding: 1}
    pool: {kind: max, kernel: 2, stride: 2}
  - convs:
      - {out_channels: 32, kernel: 4, stride: 2, padding: 1}
    pool: {kind: avg, kernel: 2, stride: 2, padding: [0, 1]}
  - convs: [{out_channels: 32, kernel: 1}]
    pool: null
fc: [64, 32]
"""


def test_generic_pattern_from_yaml() -> None:
    """The first FC's input size is derived from the traced sizes: 28 -> 14 -> 7 -> 4 -> 4."""
    spec = yaml.safe_load(YAML_SPEC)
    model = build_generic_from_config(spec, num_classes=10, in_channels=1, input_size=28)
    registered = get_model("generic_cnn", num_classes=10, in_channels=1, input_size=28, **spec)
    assert model.feature_shape == registered.feature_shape == (32, 4, 4)
    assert model.num_features == 512 and model.pre_logits[1][0].in_features == 512
    assert model.pre_logits[1][0].out_features == 128  # maxout: 2 x 64
    out = model.eval()(_photos((28, 28), 1))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert CNNSpec.from_dict(spec).windows()[4].padding == (0, 1)


@pytest.mark.parametrize(("spec", "message"), [
    ({"stages": [{"convs": [{"out_channels": 8, "kernal": 3}]}]},
     r"stage 1 conv 1: unknown keys \['kernal'\]; valid: \['out_channels', 'kernel', "
     r"'stride', 'padding'\]"),
    ({"stages": [{"convs": [{"kernel": 3}]}]},
     r"stage 1 conv 1: missing \['out_channels'\]"),
    ({"stages": [{"convs": [], "pooling": None}]}, r"stage 1: unknown keys \['pooling'\]"),
    ({"layers": []}, r"spec: unknown keys \['layers'\]"),
    ({"fc": [10]}, "spec: 'stages' is required"),
    ({"stages": [{"convs": [{"out_channels": 8, "kernel": 3}],
                  "pool": {"kind": "max", "kernel": 3, "stride": 2}}]},
     r"generic_cnn with input_size 28: stage 1 pool: O = \(W - K \+ 2P\)/S \+ 1 = "
     r"\(26 - 3 \+ 2\*0\)/2 \+ 1 = 12.5 is not an integer"),
    ({"stages": [{"convs": [{"out_channels": 8, "kernel": 3}],
                  "pool": {"kind": "median", "kernel": 2}}]},
     "generic_cnn: stage 1 pool: unknown pool kind 'median'; valid: max, avg"),
])
def test_generic_bad_specs_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(LayerConfigError, match=message):
        build_generic_from_config(spec, num_classes=10, in_channels=1, input_size=28)


def test_simple_cnn_is_the_seed_pattern() -> None:
    model = get_model("simple_cnn")
    assert model.input_size == (28, 28) and model.num_classes == 10
    assert [len(stage.convs) for stage in model.spec.stages] == [2, 2]
    assert model.spec.fc == (256,) and model.feature_shape == (64, 7, 7)


def test_maxout_and_asymmetric_pool_export_to_onnx(tmp_path: Any) -> None:
    """Maxout (a reshape with a dynamic batch) and (before, after) padding survive ONNX export."""
    model = build_generic_from_config(yaml.safe_load(YAML_SPEC), 10, 1, 28).eval()
    path = tmp_path / "generic.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    x = torch.cat([_photos((28, 28), 1)] * 2)
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    with torch.inference_mode():
        expected = model(x).numpy()
    assert got.shape == (4, 10) and np.abs(got - expected).max() < 1e-4
