"""Layer-size arithmetic O = (W - K + 2P)/S + 1, activations and pools (training.models.layers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from training.data.mnist import load_mnist
from training.models import get_model
from training.models.layers import (
    Activation,
    Maxout,
    conv_block,
    fc_block,
    make_pool,
    parse_activation,
)
from training.models.shapes import LayerConfigError, Window, output_size, trace_sizes

torch.set_num_threads(1)

# (W, K, S, P): classic layers, including "same" padding (before, after) on even inputs.
GEOMETRIES = [
    (227, 11, 4, 0),  # AlexNet conv1 -> 55
    (224, 11, 4, (1, 2)),  # AlexNet conv1 at 224 -> 55
    (224, 7, 2, (2, 3)),  # GoogLeNet conv1 -> 112
    (112, 3, 2, (0, 1)),  # GoogLeNet pool -> 56
    (55, 3, 2, 0),  # AlexNet pool -> 27
    (28, 5, 1, 2),  # LeNet-5 C1 on MNIST -> 28
    (13, 3, 1, 1),  # "same" 3x3 -> 13
    (7, 7, 1, 0),  # global 7x7 -> 1
]


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), GEOMETRIES)
def test_output_size_matches_real_conv_and_pool_layers(size: int, kernel: int, stride: int,
                                                       padding: int | tuple[int, int]) -> None:
    expected = output_size(size, kernel, stride, padding)
    x = torch.randn(1, 2, size, size)
    conv = conv_block(2, 3, kernel, stride, padding)
    assert conv(x).shape == (1, 3, expected, expected)
    if max(padding if isinstance(padding, tuple) else (padding,)) <= kernel // 2:
        for kind in ("max", "avg"):
            assert make_pool(kind, kernel, stride, padding)(x).shape == (1, 2, expected, expected)


def test_output_size_values() -> None:
    assert output_size(227, 11, 4, 0) == 55
    assert output_size(224, 11, 4, (1, 2)) == 55
    assert output_size(32, 5) == 28
    assert output_size(1, 3, 1, 1) == 1


def test_non_integer_size_is_refused_with_the_layer_and_numbers() -> None:
    with pytest.raises(LayerConfigError) as info:
        output_size(224, 11, 4, 0, layer="stage 1 conv 1")
    assert str(info.value) == (
        "stage 1 conv 1: O = (W - K + 2P)/S + 1 = (224 - 11 + 2*0)/4 + 1 = 54.25 is not an "
        "integer (input width W=224, kernel K=11, padding P=0, stride S=4); fix: change the "
        "padding or stride so that W - K + 2P is a multiple of S")
    error = info.value
    assert (error.layer, error.size, error.kernel, error.padding, error.stride, error.result) == (
        "stage 1 conv 1", 224, 11, 0, 4, 54.25)
    assert isinstance(error, ValueError)


def test_asymmetric_padding_message_shows_both_sides() -> None:
    with pytest.raises(LayerConfigError, match=r"stem pool: O = \(W - K \+ P_before \+ P_after\)"
                                               r"/S \+ 1 = \(25 - 3 \+ 0 \+ 1\)/2 \+ 1 = 12\.5 "
                                               r"is not an integer"):
        output_size(25, 3, 2, (0, 1), layer="stem pool")


def test_size_below_one_is_refused() -> None:
    with pytest.raises(LayerConfigError) as info:
        output_size(3, 5, 1, 0, layer="stage 3 conv 1", dim="height")
    assert str(info.value).startswith(
        "stage 3 conv 1: O = (W - K + 2P)/S + 1 = (3 - 5 + 2*0)/1 + 1 = -1 is below 1 "
        "(input height W=3, kernel K=5, padding P=0, stride S=1); fix: use a larger input")


def test_non_square_input_names_the_failing_dimension() -> None:
    windows = [Window("stage 1 pool", 2, 2)]
    assert trace_sizes((28, 32), windows) == [(14, 16)]
    with pytest.raises(LayerConfigError, match=r"input width W=33"):
        trace_sizes((28, 33), windows)
    with pytest.raises(LayerConfigError, match=r"input height W=27"):
        trace_sizes((27, 32), windows)


def test_trace_sizes_suggests_input_sizes_that_work() -> None:
    windows = [Window("conv1", 11, 4), Window("pool1", 3, 2)]
    with pytest.raises(LayerConfigError) as info:
        trace_sizes(100, windows, model="toy")
    message = str(info.value)
    assert message.startswith("toy with input_size 100: conv1: O = (W - K + 2P)/S + 1 = "
                              "(100 - 11 + 2*0)/4 + 1 = 23.25 is not an integer")
    assert message.endswith("or use an input_size that works for every layer: 99 or 107")
    for side in (99, 107):  # the suggestions really work
        assert len(trace_sizes(side, windows)) == 2


def test_maxout_takes_the_max_over_groups_of_channels() -> None:
    x = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).reshape(2, 6, 2, 2).flip(1)
    out = Maxout(3)(x)
    expected = torch.stack([x[:, 0:3].amax(1), x[:, 3:6].amax(1)], dim=1)
    assert out.shape == (2, 2, 2, 2) and torch.equal(out, expected)
    assert torch.equal(Maxout(2)(torch.tensor([[1.0, -4.0, -2.0, 5.0]])), torch.tensor([[1., 5.]]))
    with pytest.raises(ValueError, match="Maxout\\(4\\) needs a multiple of 4 channels, got 6"):
        Maxout(4)(x)


def test_maxout_blocks_widen_the_layer_before_them() -> None:
    act = parse_activation({"name": "maxout", "pieces": 3})
    block = conv_block(1, 8, 3, padding=1, act=act, batchnorm=True)
    assert block[0].out_channels == 24 and block[1].num_features == 24
    assert block(torch.randn(2, 1, 5, 5)).shape == (2, 8, 5, 5)
    fc = fc_block(10, 4, act, dropout=0.5)
    assert fc[0].out_features == 12 and fc.eval()(torch.randn(2, 10)).shape == (2, 4)


def test_leaky_relu_slope_is_configurable() -> None:
    act = parse_activation({"name": "leaky_relu", "negative_slope": 0.2}).make()
    assert torch.allclose(act(torch.tensor([-2.0, 3.0])), torch.tensor([-0.4, 3.0]))


@pytest.mark.parametrize(("name", "module"), [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU),
                                              ("maxout", Maxout), ("tanh", nn.Tanh),
                                              ("sigmoid", nn.Sigmoid)])
def test_activation_factory(name: str, module: type) -> None:
    assert isinstance(parse_activation(name).make(), module)
    assert parse_activation(Activation(name)) == Activation(name)


def test_unknown_activation_and_pool_list_the_valid_names() -> None:
    with pytest.raises(LayerConfigError, match="unknown activation 'gelu'; valid: relu, "
                                               "leaky_relu, maxout, tanh, sigmoid"):
        parse_activation("gelu")
    with pytest.raises(LayerConfigError, match=r"unknown activation keys \['slope'\]"):
        parse_activation({"name": "leaky_relu", "slope": 0.1})
    with pytest.raises(LayerConfigError, match="maxout needs pieces >= 2, got 1"):
        parse_activation({"name": "maxout", "pieces": 1})
    with pytest.raises(LayerConfigError, match="stage 2 pool: unknown pool kind 'min'; "
                                               "valid: max, avg"):
        make_pool("min", 2, layer="stage 2 pool")
    with pytest.raises(LayerConfigError, match=r"max pool padding 2 exceeds half the kernel "
                                               r"\(3 // 2 = 1\)"):
        make_pool("max", 3, 1, 2)


ACTIVATIONS = ["relu", {"name": "leaky_relu", "negative_slope": 0.1},
               {"name": "maxout", "pieces": 2}, "tanh", "sigmoid"]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    scale = lambda x: (x[:, :, 2:26, 2:26].float() / 255 - 0.13) / 0.31  # noqa: E731
    return scale(images[:1500]), labels[:1500], scale(test_images[:500]), test_labels[:500]


@pytest.mark.slow
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a if isinstance(a, str) else a["name"])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_every_activation_and_pool_learns_real_digits(act: str | dict, pool: str,
                                                      digits: tuple[torch.Tensor, ...]) -> None:
    """A small net of each activation/pool learns 1,500 MNIST digits (24x24 crops) well above
    chance on 500 test digits."""
    torch.manual_seed(0)
    stages = [{"convs": [{"out_channels": 8, "kernel": 5}],
               "pool": {"kind": pool, "kernel": 2, "stride": 2}},
              {"convs": [{"out_channels": 16, "kernel": 3}],
               "pool": {"kind": pool, "kernel": 2, "stride": 2}}]  # 24 -> 20 -> 10 -> 8 -> 4
    model = get_model("generic_cnn", num_classes=10, in_channels=1, input_size=24,
                      stages=stages, fc=[32], activation=act, batchnorm=True)
    assert model.feature_shape == (16, 4, 4) and model.num_features == 256
    images, labels, test_images, test_labels = digits
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2 if act == "sigmoid" else 3e-3)
    for _ in range(3):
        for start in range(0, len(images), 50):
            loss = nn.functional.cross_entropy(model(images[start:start + 50]),
                                               labels[start:start + 50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.inference_mode():
        accuracy = (model.eval()(test_images).argmax(1) == test_labels).float().mean().item()
    assert accuracy > 0.6, f"{act}/{pool}: {accuracy:.3f}"  # chance: 0.1
