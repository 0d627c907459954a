"""int8 quantization: a small model quantized here (contract, model.json, accuracy measured,
refusal past the limit, CLI), the shipped int8 models re-checked against what they record, and
the service serving an int8 model end to end (classify, explain, /v1/models)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from model_format import ClassifierCard, load_card
from training.quantize import MAX_TOP1_DROP, QuantizeError, quantize_version
from training.quantize_data import ImageSet, calibration_set
from training.quantize_eval import CONFIDENT, compare

REPO = Path(__file__).resolve().parents[2]
INT8 = sorted(p.parent for p in REPO.glob("models/*-int8/*/model.json"))


@pytest.fixture(scope="module")
def lenet_int8(shipped_model: Callable[[str], Path],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped float LeNet-5 quantized into a temporary repository (full test split)."""
    source = shipped_model("mnist-lenet5") / "1"
    return quantize_version(source, models_dir=tmp_path_factory.mktemp("int8"))


def test_int8_keeps_the_contract_and_is_int8(lenet_int8: Path) -> None:
    graph = onnx.load(str(lenet_int8 / "model.onnx")).graph
    (image,) = graph.input
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [28, 28, 1]
    assert [o.name for o in graph.output] == ["probabilities"]
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and "DequantizeLinear" in ops
    compute = [op for op in ops if op != "DequantizeLinear"]  # weights' DQs come first
    assert compute[-1] == "Softmax"
    assert compute[:5] == ["Transpose", "Cast", "Div", "Sub", "Div"]  # preprocessing inside
    weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(w.dims)) for w in weights) > 40_000  # LeNet-5's ~44k weights


def test_model_json_records_quantization_and_both_accuracies(lenet_int8: Path) -> None:
    card = load_card(lenet_int8 / "model.json")
    assert isinstance(card, ClassifierCard) and card.name == "mnist-lenet5-int8"
    q = card.quantization
    assert q is not None and q.format == "QDQ" and q.per_channel
    assert q.activations == "uint8" and q.weights == "int8"
    assert q.source.name == "mnist-lenet5" and q.source.version == 1
    assert q.calibration.split == "train" and q.calibration.images == 300
    assert q.calibration.dataset == "MNIST" and q.calibration.seed == 0
    assert q.accuracy is not None and q.accuracy.images == 10_000
    assert q.accuracy.split == "test" and q.accuracy.float_top1 == 0.9936  # the float's record
    assert abs(q.accuracy.int8_top1 - 0.9936) <= MAX_TOP1_DROP
    assert q.accuracy.top1_drop == pytest.approx(q.accuracy.float_top1 - q.accuracy.int8_top1)
    assert card.metrics.measured is not None
    assert card.metrics.measured.top1 == q.accuracy.int8_top1
    assert q.max_top1_drop == MAX_TOP1_DROP and q.float_nodes == ["/Softmax"]


def test_accuracy_is_measured_through_onnx_runtime(lenet_int8: Path) -> None:
    card = load_card(lenet_int8 / "model.json")
    assert isinstance(card, ClassifierCard) and card.quantization is not None
    again = compare(REPO / "models/mnist-lenet5/1/model.onnx", lenet_int8 / "model.onnx",
                    card, test_limit=2000)
    assert again.accuracy is not None and again.accuracy.images == 2000
    assert again.accuracy.float_top1 > 0.98 and again.accuracy.int8_top1 > 0.98
    assert again.accuracy.top1_agreement > 0.99


def test_refuses_past_the_limit_with_the_figures(shipped_model: Callable[[str], Path],
                                                 tmp_path: Path) -> None:
    """Calibrated on black images, every activation range is empty: the int8 model guesses."""
    source = shipped_model("mnist-lenet5") / "1"
    black = ImageSet(np.zeros((64, 28, 28, 1), np.uint8), None, {
        "dataset": "MNIST", "split": "train", "images": 64, "selection": "black"})
    with pytest.raises(QuantizeError) as caught:
        quantize_version(source, models_dir=tmp_path, calibration=black, test_limit=1000)
    message = str(caught.value)
    found = re.match(r"mnist-lenet5-int8: int8 top-1 (0\.\d{4}) vs float 0\.9890 on 1000 MNIST "
                     r"test images: a drop of ([\d.]+) points > the limit of 1\.00; not writing "
                     r"it \(calibration: 64 MNIST images\)$", message)
    assert found, message
    assert float(found[1]) < 0.5 and float(found[2]) > 40
    assert not (tmp_path / "mnist-lenet5-int8").exists()


def test_cli_quantizes_and_refuses_an_existing_version(shipped_model: Callable[[str], Path],
                                                       tmp_path: Path) -> None:
    source = shipped_model("mnist-lenet5") / "1"
    command = [sys.executable, "-m", "training", "--log-level", "WARNING", "export",
               str(source), "--quantize", "int8", "--models-dir", str(tmp_path),
               "--name", "digits-int8", "--version", "3"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "digits-int8" / "3")
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 2
    assert (f"error: {tmp_path / 'digits-int8' / '3'} already holds a model; export a new "
            "version or pass --overwrite\n") == again.stderr


def test_calibration_is_reproducible_and_from_the_training_split(
        shipped_model: Callable[[str], Path]) -> None:
    card = load_card(shipped_model("fashion-simple-cnn") / "1" / "model.json")
    assert isinstance(card, ClassifierCard)
    first, second = calibration_set(card, count=50), calibration_set(card, count=50)
    assert np.array_equal(first.images, second.images) and first.images.shape == (50, 28, 28, 1)
    assert first.about["split"] == "train" and first.about["dataset"] == "Fashion-MNIST"


@pytest.mark.slow
@pytest.mark.parametrize("version", INT8, ids=[p.parent.name for p in INT8])
def test_shipped_int8_model_matches_its_record(version: Path) -> None:
    """Measured again here: top-1 (test split) or agreement (photos) as model.json records.
    Another CPU may round a few products differently (VNNI or not), hence the small margins."""
    card = load_card(version / "model.json")
    assert isinstance(card, ClassifierCard) and card.quantization is not None
    q = card.quantization
    source = REPO / "models" / q.source.name / str(q.source.version)
    result = compare(source / "model.onnx", version / "model.onnx", card)
    if q.accuracy is not None:
        assert result.accuracy is not None and result.accuracy.images == q.accuracy.images
        assert result.accuracy.float_top1 == q.accuracy.float_top1
        assert abs(result.accuracy.int8_top1 - q.accuracy.int8_top1) <= 0.002
        assert q.accuracy.top1_drop <= (q.max_top1_drop or 0)
    else:
        assert result.agreement is not None and q.agreement is not None
        assert result.agreement.photos == q.agreement.photos == 48
        assert abs(result.agreement.top1_agreement - q.agreement.top1_agreement) <= 2 / 48
        assert (result.agreement.confident_top1_agreement or 0) >= (q.min_top1_agreement or 1)
        assert CONFIDENT == 0.5


@pytest.fixture(scope="module")
def int8_client(make_client: Callable[..., Any], shipped_model: Callable[[str], Path],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("served-int8")
    for name in ("fashion-mobilenetv2", "fashion-mobilenetv2-int8", "imagenet-mobilenetv2-int8"):
        shutil.copytree(shipped_model(name), root / name)
    with make_client(root) as client:
        yield client


def test_service_serves_an_int8_model(int8_client: TestClient,
                                      photo: Callable[[str], bytes]) -> None:
    shoe = (REPO / "samples" / "shoe.png").read_bytes()
    answers = {}
    for model in ("fashion-mobilenetv2", "fashion-mobilenetv2-int8"):
        response = int8_client.post(f"/v1/models/{model}/classify",
                                    files={"file": ("shoe.png", shoe)}, params={"top_k": 1})
        assert response.status_code == 200, response.text
        answers[model] = response.json()["results"][0]["predictions"][0]
    assert answers["fashion-mobilenetv2-int8"]["label"] == "Ankle boot"
    assert answers["fashion-mobilenetv2"]["label"] == "Ankle boot"
    info = int8_client.get("/v1/models/fashion-mobilenetv2-int8").json()["versions"][0]
    assert info["provider"] == "CPUExecutionProvider" and info["notes"] == []
    assert info["quantization"]["source"]["name"] == "fashion-mobilenetv2"
    assert info["quantization"]["accuracy"]["images"] == 10_000
    assert info["explain"][0] == "cam"
    float_info = int8_client.get("/v1/models/fashion-mobilenetv2").json()["versions"][0]
    assert float_info["quantization"] is None


def test_int8_model_explains_with_class_activation_maps(int8_client: TestClient,
                                                        photo: Callable[[str], bytes]) -> None:
    """The float explain.onnx reads the int8 graph's feature map: the cat's map peaks on it."""
    response = int8_client.post("/v1/models/imagenet-mobilenetv2-int8/explain",
                                files={"file": ("cat.png", photo("chelsea"))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "cam" and body["cost"] == {"runs": 2, "images": 1}
    assert body["explained"]["label"] in ("tabby", "tiger cat", "Egyptian cat")
    assert 40 <= body["peak"]["x"] <= 380 and 0 <= body["peak"]["y"] <= 300  # the cat's head


def test_quantize_a_training_run_exports_float_then_int8(tmp_path: Path) -> None:
    """A run quantized from its checkpoint: the float model is exported as usual, then its
    int8 twin is measured on the whole test split against it."""
    from training.config import load_config
    from training.quantize import quantize_export
    from training.trainer import fit

    config = load_config("mnist-lenet5", [
        "data.train_limit=2000", "data.eval_limit=300", "optim.epochs=1", "optim.batch_size=50",
        "device=cpu", f"output_dir={tmp_path / 'run'}"])
    fit(config)
    directory = quantize_export(tmp_path / "run", models_dir=tmp_path / "models")
    assert directory == tmp_path / "models" / "mnist-lenet5-int8" / "1"
    assert (tmp_path / "models" / "mnist-lenet5" / "1" / "model.onnx").is_file()
    card = load_card(directory / "model.json")
    assert isinstance(card, ClassifierCard) and card.quantization is not None
    accuracy = card.quantization.accuracy
    assert accuracy is not None and accuracy.images == 10_000 and accuracy.float_top1 > 0.5
    assert accuracy.top1_drop <= MAX_TOP1_DROP
    assert card.quantization.calibration.split == "train"


def test_reduce_range_writes_7_bit_weights(shipped_model: Callable[[str], Path],
                                           tmp_path: Path) -> None:
    from onnx import numpy_helper

    source = shipped_model("mnist-lenet5") / "1"
    directory = quantize_version(source, models_dir=tmp_path, reduce_range=True, test_limit=500)
    card = load_card(directory / "model.json")
    assert isinstance(card, ClassifierCard) and card.quantization is not None
    assert card.quantization.reduce_range is True
    graph = onnx.load(str(directory / "model.onnx")).graph
    weights = [numpy_helper.to_array(i) for i in graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
