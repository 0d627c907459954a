"""Input statistics (mean/std, PCA/ZCA whitening) and the train/eval presets, on real images."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from training.assets import fetch
from training.data.mnist import load_mnist
from training.data.preprocessing import Preprocessing, fit_preprocessing
from training.data.presets import EvalPreset, TrainPreset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mnist_train() -> torch.Tensor:
    return load_mnist("train")[0][:5000]


def _photo(name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(fetch(name)).convert("RGB"))).permute(2, 0, 1)


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    """20,000 random 6x6 RGB patches of real photos (108 values each)."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        photo = _photo(name)
        ys = torch.randint(0, photo.shape[1] - 6, (5000,), generator=generator)
        xs = torch.randint(0, photo.shape[2] - 6, (5000,), generator=generator)
        out += [photo[:, y:y + 6, x:x + 6] for y, x in zip(ys.tolist(), xs.tolist(), strict=True)]
    return torch.stack(out)


@pytest.mark.slow
def test_mean_std_match_numpy_and_normalise(mnist_train: torch.Tensor) -> None:
    prep = fit_preprocessing(mnist_train)
    pixels = mnist_train.numpy().astype(np.float64) / 255
    assert prep.mean[0] == pytest.approx(pixels.mean(), abs=1e-9)
    assert prep.std[0] == pytest.approx(pixels.std(ddof=1), abs=1e-9)
    assert prep.whitening is None and prep.to_json()["whitening"] is None
    out = prep.module()(mnist_train.float() / 255)
    assert out.mean().item() == pytest.approx(0, abs=1e-4)
    assert out.std().item() == pytest.approx(1, abs=1e-4)


def test_per_channel_statistics_on_photos(patches: torch.Tensor) -> None:
    prep = fit_preprocessing(patches)
    expected = (patches.double() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(prep.mean, dtype=torch.float64), expected, atol=1e-9)
    assert len(prep.std) == 3 and prep.to_json()["scale"] == pytest.approx(1 / 255)


def test_zca_whitens_real_patches(patches: torch.Tensor) -> None:
    prep = fit_preprocessing(patches, whitening="zca", epsilon=1e-5)
    out = prep.module()(patches.float() / 255)
    assert out.shape == patches.shape
    covariance = torch.cov(out.flatten(1).double().t())
    assert (covariance - torch.eye(108, dtype=torch.float64)).abs().max() < 0.02
    # The input is strongly correlated (neighbouring pixels): whitening really changed it.
    raw = torch.cov((patches.double() / 255).flatten(1).t())
    correlation = raw / torch.outer(raw.diag().sqrt(), raw.diag().sqrt())
    assert (correlation - torch.eye(108, dtype=torch.float64)).abs().max() > 0.9
    # ZCA keeps each output pixel close to its input pixel (unlike PCA's rotation).
    normalised = (patches.float() / 255 - torch.tensor(prep.mean).view(1, 3, 1, 1)) / torch.tensor(
        prep.std).view(1, 3, 1, 1)
    pca = fit_preprocessing(patches, whitening="pca", epsilon=1e-5).module()(patches.float() / 255)
    def mean_corr(a: torch.Tensor) -> float:
        x, y = normalised.flatten(1), a.flatten(1)
        x, y = x - x.mean(0), y - y.mean(0)
        return ((x * y).sum(0) / (x.norm(dim=0) * y.norm(dim=0))).mean().item()
    assert mean_corr(out) > 0.2 > abs(mean_corr(pca))


@pytest.mark.slow
def test_pca_whitening_decorrelates_mnist(mnist_train: torch.Tensor) -> None:
    prep = fit_preprocessing(mnist_train, whitening="pca", epsilon=0.1)
    out = prep.module()(mnist_train.float() / 255).flatten(1).double()
    covariance = torch.cov(out.t())
    off_diagonal = covariance - torch.diag(covariance.diag())
    assert off_diagonal.abs().max() < 1e-3
    # Component i has variance l_i / (l_i + epsilon), l_i the i-th eigenvalue (ascending) of
    # the normalised images' covariance: ~1 for the strong components, damped for the weak.
    pixels = mnist_train.double().flatten(1) / 255
    eigenvalues = np.linalg.eigvalsh(np.cov(((pixels - prep.mean[0]) / prep.std[0]).numpy().T))
    expected = eigenvalues.clip(0) / (eigenvalues.clip(0) + 0.1)
    assert np.abs(covariance.diag().numpy() - expected).max() < 1e-3
    assert (expected > 0.95).sum() > 40


def test_whitening_refuses_huge_inputs() -> None:
    with pytest.raises(ValueError, match="at most 4096 values"):
        fit_preprocessing(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), whitening="zca")


def test_state_round_trip_and_onnx_trace(patches: torch.Tensor) -> None:
    prep = fit_preprocessing(patches[:4000], whitening="zca")
    again = Preprocessing.from_state(prep.state())
    batch = patches[:16].float() / 255
    assert torch.equal(prep.module()(batch), again.module()(batch))
    buffer = io.BytesIO()
    module = again.module().eval()
    torch.onnx.export(module, (batch[:2],), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"x": batch.numpy()})[0]
    assert np.abs(onnx_out - module(batch).numpy()).max() < 1e-4


@pytest.mark.slow
def test_grey_repeated_for_rgb_backbones() -> None:
    prep = Preprocessing(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], grey_to_rgb=True)
    grey = load_mnist("test")[0][:4].float() / 255
    out = prep.module()(grey)
    assert out.shape == (4, 3, 28, 28) and prep.input_channels == 1
    assert torch.allclose(out[:, 1], (grey[:, 0] - 0.456) / 0.224)


def test_eval_preset_resize_block_and_crop() -> None:
    chelsea = _photo("chelsea")  # 451 x 300
    preset = EvalPreset(height=224, width=224, channels=3,
                        resize_method="shorter-side-center-crop", shorter_side=256)
    assert preset.to_json() == {"method": "shorter-side-center-crop", "shorter_side": 256,
                                "interpolation": "bilinear"}
    out = preset(chelsea)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    resized = TF.resize(chelsea, [256, 385], antialias=True)
    expected = TF.center_crop(resized, [224, 224]).float() / 255
    assert (out - expected).abs().max() < 1e-6
    stretch = EvalPreset(height=48, width=64, channels=1, interpolation="area")
    assert stretch.to_json() == {"method": "stretch", "interpolation": "area"}
    grey = stretch(chelsea)
    assert grey.shape == (1, 48, 64) and 0 <= grey.min() and grey.max() <= 1
    with pytest.raises(ValueError, match="stretch, shorter-side-center-crop"):
        EvalPreset(height=8, width=8, channels=1, resize_method="pad")


@pytest.mark.slow
def test_train_preset_augments_within_bounds() -> None:
    digit = load_mnist("test")[0][0]
    flip = TrainPreset(height=28, width=28, channels=1, crop="none", hflip_prob=1.0)
    assert torch.allclose(flip(digit), digit.flip(-1).float() / 255, atol=1e-7)
    augment = TrainPreset(height=32, width=32, channels=3, crop="random", padding=4, rotation=10)
    torch.manual_seed(0)
    first = augment(digit)
    torch.manual_seed(0)
    assert torch.equal(first, augment(digit))  # reproducible under a seed
    assert first.shape == (3, 32, 32) and not torch.equal(first, augment(digit))
    resized = TrainPreset(height=64, width=64, channels=3, crop="resized", scale=(0.5, 1.0))
    assert resized(_photo("coffee")).shape == (3, 64, 64)
