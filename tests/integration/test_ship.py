"""``python -m training ship``: rebuilds shipped models the same way and checks what it wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from training.cli import main
from training.export import ExportError, photo_batch
from training.ship import SHIPPED, verify

REPO = Path(__file__).resolve().parents[2]
SHIPPED_DIRS = sorted(p.parent for p in REPO.glob("models/*/*/model.json"))


def test_every_shipped_model_has_a_ship_entry_and_passes_the_final_check() -> None:
    names = {directory.parent.name for directory in SHIPPED_DIRS}
    assert names <= set(SHIPPED), f"models/ holds {names - set(SHIPPED)} with no ship entry"
    for directory in SHIPPED_DIRS:
        verify(directory)


def test_verify_refuses_a_graph_that_does_not_match_its_card(tmp_path: Path) -> None:
    copy = shutil.copytree(REPO / "models" / "face-mtcnn" / "1", tmp_path / "face-mtcnn" / "1")
    (copy / "rnet.onnx").write_bytes((copy / "rnet.onnx").read_bytes() + b"\0")
    with pytest.raises(ExportError, match=r"rnet.onnx: sha256 differs from model.json"):
        verify(copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["labels"] = []
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"model.json: labels: List should have at least 1"):
        verify(copy)


def test_an_unknown_name_is_refused_with_the_valid_ones(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["ship", "--only", "imagenet-resnet"])
    err = capsys.readouterr().err
    assert "invalid choice: 'imagenet-resnet'" in err and "face-mtcnn" in err


@pytest.mark.parametrize("name", ["face-mtcnn", "mnist-lenet5"])  # mnist: before training
def test_an_existing_version_is_kept_without_overwrite(name: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(REPO / "models" / name, tmp_path / name)
    assert main(["ship", "--only", name, "--models-dir", str(tmp_path)]) == 1
    assert "already holds a model; export a new version or pass --overwrite" in (
        capsys.readouterr().err)


def test_rebuilding_the_detector_reproduces_the_shipped_graphs(tmp_path: Path) -> None:
    assert main(["ship", "--only", "face-mtcnn", "--models-dir", str(tmp_path)]) == 0
    rebuilt, shipped = tmp_path / "face-mtcnn" / "1", REPO / "models" / "face-mtcnn" / "1"
    for name in ("pnet.onnx", "rnet.onnx", "onet.onnx"):
        assert (rebuilt / name).read_bytes() == (shipped / name).read_bytes(), name
    ours, theirs = (json.loads((d / "model.json").read_text()) for d in (rebuilt, shipped))
    for meta in (ours, theirs):
        meta["provenance"].pop("created"), meta["provenance"].pop("git_commit")
    assert ours == theirs


@pytest.mark.slow
def test_rebuilding_an_imagenet_model_gives_the_shipped_answers(tmp_path: Path) -> None:
    """The ONNX bytes may differ from machine to machine (constant folding in float32); the
    probabilities on real photos agree to well within the export tolerance (1e-4)."""
    name = "imagenet-mobilenetv2"
    assert main(["ship", "--only", name, "--models-dir", str(tmp_path)]) == 0
    from training.models.backbones import pretrained_cfg
    from training.ship_imagenet import SANITY, eval_preset

    photos = photo_batch(list(SANITY), eval_preset(pretrained_cfg("mobilenet_v2")))
    answers = [ort.InferenceSession(str(root / name / "1" / "model.onnx"),
                                    providers=["CPUExecutionProvider"]).run(None,
                                                                            {"image": photos})[0]
               for root in (tmp_path, REPO / "models")]
    assert np.abs(answers[0] - answers[1]).max() < 1e-5
    assert (answers[0].argmax(1) == answers[1].argmax(1)).all()
    rebuilt = json.loads((tmp_path / name / "1" / "model.json").read_text())
    shipped = json.loads((REPO / "models" / name / "1" / "model.json").read_text())
    assert rebuilt["sanity"] == shipped["sanity"] and rebuilt["preprocessing"] == shipped[
        "preprocessing"] and rebuilt["input"] == shipped["input"]


@pytest.mark.slow
def test_rebuilding_the_expression_model_keeps_occlusion_as_its_default(tmp_path: Path) -> None:
    """fer-minixception has maps but explains by occlusion by default (its 4x4 maps missed the
    face); a rebuild must say so again, as the shipped model.json does."""
    assert main(["ship", "--only", "face-mtcnn", "--only", "fer-minixception",
                 "--models-dir", str(tmp_path)]) == 0
    rebuilt = tmp_path / "fer-minixception" / "1"
    shipped = json.loads((REPO / "models" / "fer-minixception" / "1" / "model.json").read_text())
    explain = json.loads((rebuilt / "model.json").read_text())["explain"]
    assert explain["method"] == shipped["explain"]["method"] == "occlusion"
    assert explain["reason"] == shipped["explain"]["reason"]
    assert (rebuilt / explain["file"]).is_file()  # the maps stay available (method=cam)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["face-retinaface", "face-blazeface"])
def test_rebuilding_a_converted_detector_gives_the_shipped_graph_s_answers(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ship --only face-retinaface`` / ``face-blazeface`` convert the wheels' TensorFlow and
    TFLite graphs again (tf2onnx, in ``$CONVSERVE_CONVERT_PYTHON``; each checks ONNX Runtime
    against TensorFlow itself). tf2onnx names some nodes at random, so the bytes differ: the
    answers on real photos must not."""
    import os

    from conftest import require_tool
    from PIL import Image

    from training.assets import fetch
    from training.ship_blazeface import square
    from training.ship_retinaface import PARITY_PHOTOS, padded

    python = require_tool(os.environ.get("CONVSERVE_CONVERT_PYTHON", "convserve-convert-python"),
                          "set CONVSERVE_CONVERT_PYTHON to a Python with "
                          "pip install '.[faces-convert]' (tensorflow-cpu, tf2onnx)")
    monkeypatch.setenv("CONVSERVE_CONVERT_PYTHON", python)
    assert main(["ship", "--only", name, "--models-dir", str(tmp_path)]) == 0
    sessions = [ort.InferenceSession(str(root / name / "1" / "model.onnx"),
                                     providers=["CPUExecutionProvider"])
                for root in (tmp_path, REPO / "models")]
    prepare, feed = (padded, "x:0") if name == "face-retinaface" else (square, "input")
    for photo in PARITY_PHOTOS:
        batch = prepare(Image.open(fetch(photo)))
        ours, theirs = (s.run(None, {feed: batch}) for s in sessions)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
