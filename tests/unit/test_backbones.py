"""ImageNet backbones: strict pretrained loading, head reset, grey input, verified weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import pretrained
from training.assets import ASSETS, AssetError, fetch
from training.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from training.models import get_model
from training.models.backbones import imagenet_labels
from training.models.layers import LayerConfigError

BACKBONES = ("mobilenet_v2", "efficientnet_lite0")
CATS = {"tabby", "tiger cat", "Egyptian cat"}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """chelsea (a cat) and coffee (an espresso), centre-cropped to 224, [0, 1] NCHW."""
    batch = []
    for name in ("chelsea", "coffee"):
        image = Image.open(fetch(name)).convert("RGB")
        scale = 256 / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.BILINEAR)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        image = image.crop((left, top, left + 224, top + 224))
        batch.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    return torch.stack(batch)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    return (x - mean) / torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)


@pytest.mark.parametrize("name", BACKBONES)
def test_pretrained_loads_every_tensor_of_the_file(name: str) -> None:
    model = get_model(name, pretrained=True)
    source = pretrained.load_state_dict(name)
    mine = model.state_dict()
    assert len(mine) == len(source)  # strict: every tensor, nothing left over
    for key, tensor in source.items():
        assert torch.equal(mine[key if key in mine else f"body.{key}"], tensor), key


@pytest.mark.parametrize("name", BACKBONES)
def test_pretrained_imagenet_head_recognises_real_photos(name: str,
                                                         photos: torch.Tensor) -> None:
    model = get_model(name, pretrained=True).eval()
    with torch.inference_mode():
        top5 = model(_normalise(photos)).topk(5, dim=1).indices
    labels = imagenet_labels()
    assert CATS & {labels[i] for i in top5[0]}
    assert {"espresso", "cup", "coffee mug"} & {labels[i] for i in top5[1]}


@pytest.mark.parametrize("name", BACKBONES)
def test_new_head_keeps_the_backbone(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, pretrained=True, input_size=64)
    source = pretrained.load_state_dict(name)
    head = {id(p) for p in model.head_parameters()}
    assert sorted(p.shape for p in model.head_parameters()) == [(10,), (10, 1280)]
    reused = {k: v for k, v in model.state_dict().items() if "classifier" not in k
              and "_fc" not in k}
    assert len(reused) == len(source) - 2
    assert all(torch.equal(v, source[k.removeprefix("body.")]) for k, v in reused.items())
    x = torch.rand(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, 1280, 2, 2)
    assert model(x).shape == (2, 10)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4) and model.num_classes == 4
    assert not head & {id(p) for p in model.head_parameters()}  # a new head


@pytest.mark.parametrize("name", BACKBONES)
def test_grey_input_matches_rgb_model_on_grey_photo(name: str, photos: torch.Tensor) -> None:
    """Summed stem kernels: a grey image in the grey model == (g, g, g) in the RGB model."""
    rgb = get_model(name, pretrained=True).eval()
    grey = get_model(name, pretrained=True, in_channels=1).eval()
    g = (photos.mean(dim=1, keepdim=True) - 0.45) / 0.226
    with torch.inference_mode():
        expected = rgb(g.expand(-1, 3, -1, -1))
        got = grey(g)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    labels = imagenet_labels()
    assert CATS & {labels[i] for i in got[0].topk(5).indices}  # still a cat in grey


@pytest.mark.parametrize("name", BACKBONES)
def test_random_init_and_sizes(name: str) -> None:
    model = get_model(name, num_classes=7, in_channels=1, input_size=(48, 40))
    assert model(torch.rand(3, 1, 48, 40)).shape == (3, 7)
    with pytest.raises(LayerConfigError, match="at least 32x32"):
        get_model(name, input_size=28)
    with pytest.raises(ValueError, match="in_channels must be 1"):
        get_model(name, in_channels=4)


def test_altered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(fetch("mobilenet_v2-imagenet").read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    monkeypatch.setenv("CONVSERVE_CACHE", str(tmp_path))
    altered = tmp_path / "assets" / ASSETS["mobilenet_v2-imagenet"].sha256[:16]
    altered.mkdir(parents=True)
    (altered / ASSETS["mobilenet_v2-imagenet"].filename).write_bytes(bytes(data))
    with pytest.raises(AssetError, match="sha256"):
        get_model("mobilenet_v2", pretrained=True)


def test_unknown_backbone_weights_list_the_known_ones() -> None:
    with pytest.raises(KeyError, match="mobilenet_v2"):
        pretrained.load_state_dict("resnet50")
    assert pretrained.provenance("mobilenet_v2")[0]["sha256"].startswith("b0353104")


def test_fine_tuning_can_use_the_weights_own_preprocessing() -> None:
    """``data.normalization=pretrained`` takes mean/std from the backbone's PretrainedCfg:
    EfficientNet-Lite0's (x - 127) / 128, not ImageNet's; an unknown model says which have one."""
    from training.config import load_config
    from training.data.pipeline import fit_from_config
    from training.models.backbones import pretrained_cfg

    overrides = ["data.normalization=pretrained", "model.name=efficientnet_lite0",
                 "data.path=unused.csv"]
    config = load_config("fer2013-mobilenetv2-finetune", overrides)
    prep = fit_from_config(config, train_set=None)  # type: ignore[arg-type]  # not read
    assert prep.mean == pytest.approx([127 / 255] * 3)
    assert prep.std == pytest.approx([128 / 255] * 3)
    assert prep.grey_to_rgb  # FER2013 is grey, the backbone takes RGB
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 1, 3, 1)
    assert prep.module()(x)[0, 0, :, 0].tolist() == pytest.approx([-127 / 128, 0.0, 1.0])
    assert pretrained_cfg("mobilenet_v2").mean == tuple(IMAGENET_MEAN)
    with pytest.raises(KeyError, match="no pretrained weights.*efficientnet_lite0, mobilenet_v2"):
        fit_from_config(load_config("fer2013-mobilenetv2-finetune",
                                    [*overrides[:1], "model.name=lenet5", "data.path=x"]),
                        train_set=None)  # type: ignore[arg-type]
