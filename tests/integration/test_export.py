"""The ONNX export path: parity on real photos, refusals, model.json, dynamic batch, checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.config import load_config
from training.data.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    fit_preprocessing,
)
from training.data.presets import EvalPreset
from training.export import (
    ExportError,
    ExportSpec,
    ExportWrapper,
    export_model,
    photo_batch,
)
from training.export_run import export_checkpoint
from training.models import get_model

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "china", "flower")


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _spec(name: str, labels: list[str], size: int, channels: int = 3,
          prep: Preprocessing | None = None) -> ExportSpec:
    preset = EvalPreset(height=size, width=size, channels=channels,
                        resize_method="shorter-side-center-crop", shorter_side=size + size // 7)
    return ExportSpec(name=name, version=1, labels=labels, height=size, width=size,
                      channels=channels, resize=preset.to_json(),
                      preprocessing=prep.to_json() if prep else {"scale": 1 / 255},
                      metrics={"reported": {"dataset": "ImageNet-1k", "top1": 0.7}})


def _photos(size: int, channels: int = 3) -> np.ndarray:
    preset = EvalPreset(height=size, width=size, channels=channels,
                        resize_method="shorter-side-center-crop", shorter_side=size + size // 7)
    return photo_batch(PHOTOS, preset)


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": images})[0]


def _torch(model: nn.Module, prep: Preprocessing | None, images: np.ndarray) -> np.ndarray:
    wrapper = ExportWrapper(model, prep.module() if prep else None).eval()
    with torch.inference_mode():
        return wrapper(torch.from_numpy(images)).numpy()


def test_small_cnn_with_zca_whitening_on_real_photos(tmp_path: Path) -> None:
    images = _photos(16)
    crops = torch.from_numpy(_photos(48)).permute(0, 3, 1, 2)
    patches = crops.unfold(2, 16, 4).unfold(3, 16, 4).permute(0, 2, 3, 1, 4, 5)
    prep = fit_preprocessing(patches.reshape(-1, 3, 16, 16), whitening="zca", epsilon=0.1)
    torch.manual_seed(0)
    model = get_model("simple_cnn", num_classes=5, in_channels=3, input_size=16).eval()
    spec = _spec("tiny-zca", list("abcde"), 16, prep=prep)
    directory = export_model(model, spec, images, preprocess=prep.module(), models_dir=tmp_path)
    assert directory == tmp_path / "tiny-zca" / "1"
    onnx_path = directory / "model.onnx"
    meta = json.loads((directory / "model.json").read_text())
    assert meta["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    for key in ("name", "version", "task", "labels", "input", "output", "preprocessing",
                "metrics", "provenance", "onnx_sha256"):
        assert key in meta, key
    assert meta["input"] == {"name": "image", "dtype": "uint8", "layout": "NHWC", "height": 16,
                             "width": 16, "channels": 3, "resize": spec.resize}
    assert meta["preprocessing"]["whitening"] == "zca"
    assert meta["provenance"]["export_check"]["onnxruntime_vs_pytorch_max_abs_diff"] <= 1e-4
    assert len(meta["provenance"]["git_commit"]) == 40
    expected = _torch(model, prep, images)
    for batch in (images[:1], images[1:4]):  # dynamic batch: 1 and 3
        got = _run(onnx_path, batch)
        assert got.shape == (len(batch), 5)
    np.testing.assert_allclose(_run(onnx_path, images), expected, atol=1e-4)
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.onnx"]


@pytest.mark.slow
def test_pretrained_mobilenet_v2_parity_and_answers(tmp_path: Path) -> None:
    images = _photos(128)
    model = get_model("mobilenet_v2", pretrained=True, input_size=128).eval()
    prep = Preprocessing(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    labels = [f"class-{i}" for i in range(1000)]
    directory = export_model(model, _spec("mnv2", labels, 128, prep=prep), images,
                             preprocess=prep.module(), models_dir=tmp_path)
    got = _run(directory / "model.onnx", images[:3])
    np.testing.assert_allclose(got, _torch(model, prep, images[:3]), atol=1e-4)
    assert got[1].argmax() == 967  # coffee: espresso, even at 128 px
    weights = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert (directory / "model.onnx").stat().st_size < 1.05 * weights  # no duplicated weights


class DataDependent(nn.Module):
    """Python control flow on the data: the tracer bakes in one branch."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        if float(pooled.mean()) > self.threshold:
            return self.fc(pooled)
        return -self.fc(pooled)


def test_model_failing_parity_is_refused_and_nothing_written(tmp_path: Path) -> None:
    images = _photos(32)
    means = images.reshape(len(images), -1).mean(axis=1) / 255
    first_bright = means[0] > np.median(means)
    threshold = float(np.median(means))
    assert any((m > threshold) != first_bright for m in means)  # both branches occur
    torch.manual_seed(0)
    model = DataDependent(threshold)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(model, _spec("broken", list("abcd"), 32), images, models_dir=tmp_path)
    assert not any(tmp_path.rglob("*"))


class Duplicating(nn.Module):
    """Uses one weight twice through a folded constant: the graph would store it twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32 * 32 * 3, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return (self.fc(flat) + F.linear(flat, self.fc.weight * 2.0))[:, :4]


def test_duplicated_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="duplicated"):
        export_model(Duplicating(), _spec("dup", list("abcd"), 32), _photos(32),
                     models_dir=tmp_path)
    assert not any(tmp_path.rglob("*"))


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    model = get_model("simple_cnn", num_classes=4, in_channels=1, input_size=28).eval()
    images = _photos(28, channels=1)
    with pytest.raises(ExportError, match="lower-case"):
        export_model(model, _spec("Bad_Name", list("abcd"), 28, 1), images, models_dir=tmp_path)
    with pytest.raises(ExportError, match="4 outputs but 3 labels"):
        export_model(model, _spec("three", list("abc"), 28, 1), images, models_dir=tmp_path)
    with pytest.raises(ExportError, match=r"uint8 \[N, 28, 28, 1\]"):
        export_model(model, _spec("shape", list("abcd"), 28, 1), _photos(28),
                     models_dir=tmp_path)
    export_model(model, _spec("once", list("abcd"), 28, 1), images, models_dir=tmp_path)
    with pytest.raises(ExportError, match="already holds a model"):
        export_model(model, _spec("once", list("abcd"), 28, 1), images, models_dir=tmp_path)


@pytest.mark.slow
def test_export_checkpoint_of_a_real_training_run(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Train LeNet-5 briefly on MNIST, export the checkpoint (read once), and re-measure it in
    ORT."""
    from training.data.pipeline import build_split
    from training.trainer import fit

    config = load_config("mnist-lenet5", [
        "data.train_limit=2000", "data.eval_limit=300", "optim.epochs=1", "optim.batch_size=50",
        "device=cpu", f"output_dir={tmp_path / 'run'}"])
    measured = fit(config)
    loads: list[object] = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, **kwargs: loads.append(path) or load(
        path, **kwargs))
    directory = export_checkpoint(tmp_path / "run", models_dir=tmp_path / "models")
    assert loads == [tmp_path / "run" / "checkpoint.pt"]  # one read gives model and record
    assert directory == tmp_path / "models" / "mnist-lenet5" / "1"
    meta = json.loads((directory / "model.json").read_text())
    assert meta["labels"] == [str(d) for d in range(10)]
    assert meta["input"]["channels"] == 1 and meta["input"]["height"] == 28
    assert meta["metrics"]["measured"]["images"] == 300
    assert meta["metrics"]["measured"]["top1"] == pytest.approx(measured["top1"])
    assert meta["provenance"]["config"]["data"]["train_limit"] == 2000
    assert meta["provenance"]["source_weights"] == []  # trained from scratch
    test = build_split(config, "test", train=False)
    images = np.stack([(test[i][0] * 255).round().byte().permute(1, 2, 0).numpy()
                       for i in range(300)])
    truth = np.array([test[i][1] for i in range(300)])
    top1 = (_run(directory / "model.onnx", images).argmax(axis=1) == truth).mean()
    assert top1 == pytest.approx(measured["top1"], abs=1 / 300)
