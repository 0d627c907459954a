"""The model format (model_format/card.py): shipped cards validate, bad ones name file and field,
the docs' field tables are the generated ones (the import
boundaries: tests/unit/test_import_boundaries.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_format import (
    ClassifierCard,
    DetectorCard,
    ModelFormatError,
    dump_card,
    load_card,
    parse_card,
)
from model_format.docs import BEGIN_MARK, END_MARK, markdown_tables

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(REPO.glob("models/*/*/model.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.parent.relative_to(REPO)) for p in SHIPPED])
def test_every_shipped_card_validates_and_round_trips(path: Path) -> None:
    card = load_card(path)
    assert card.name == path.parent.parent.name and card.version == int(path.parent.name)
    kind = DetectorCard if card.task == "face-detection" else ClassifierCard
    assert isinstance(card, kind)
    # Writing a card back gives the same document (extra fields such as `sanity` kept).
    assert json.loads(dump_card(card)) == json.loads(path.read_text())


def _classifier(**changes: object) -> dict:
    card: dict = {"name": "tiny", "version": 1, "labels": ["a", "b"],
                  "input": {"height": 8, "width": 8, "channels": 3,
                            "resize": {"method": "stretch"}}}
    card.update(changes)
    return card


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "Tiny_Net"}, "name: model names are lower-case letters, digits and '-'"),
    ({"version": 0}, "version: Input should be greater than 0 (got 0)"),
    ({"labels": ["a", "a"]}, "labels must be distinct"),
    ({"labels": ["a"]}, "labels: List should have at least 2 items"),
    ({"input": {"height": 8, "width": 8, "channels": 4}}, "input.channels: Input should be 1 or 3"),
    ({"input": {"width": 8}}, "input.height: Field required"),
    ({"input": {"height": 8, "width": 8, "resize": {"method": "squash"}}},
     "input.resize.method: Input should be 'stretch' or 'shorter-side-center-crop'"),
    ({"input": {"height": 8, "width": 8, "resize": {"method": "shorter-side-center-crop"}}},
     "input.resize: shorter_side is required for shorter-side-center-crop"),
    ({"input": {"height": 8, "width": 8, "resize": {"interpolation": "lanczos9"}}},
     "input.resize.interpolation: Input should be 'bilinear', 'bicubic', 'nearest' or 'area'"),
    ({"metrics": {"measured": {"dataset": "MNIST", "split": "test", "images": 10, "top1": 99}}},
     "metrics.measured.top1: Input should be less than or equal to 1"),
    ({"metrics": {"guessed": {}}}, "metrics.guessed: Extra inputs are not permitted"),
    ({"task": "segmentation"}, "task: Input should be 'classification' or 'expression'"),
])
def test_bad_fields_are_named_with_the_file(changes: dict, message: str) -> None:
    with pytest.raises(ModelFormatError) as raised:
        parse_card(_classifier(**changes), "models/tiny/1/model.json")
    assert str(raised.value).startswith("models/tiny/1/model.json: ")
    assert message in str(raised.value)


def test_unknown_fields_are_kept_and_task_defaults_to_classification() -> None:
    card = parse_card(_classifier(calibration={"method": "temperature"}))
    assert card.task == "classification" and card.graphs == {"model": "model.onnx"}
    assert json.loads(dump_card(card))["calibration"] == {"method": "temperature"}


def test_detector_cards_take_free_form_input() -> None:
    card = parse_card({"name": "faces", "version": 2, "task": "face-detection", "labels": ["face"],
                       "files": {"pnet": "pnet.onnx"}, "input": {"sizes": {"pnet": "any"}}})
    assert isinstance(card, DetectorCard) and card.graphs == {"pnet": "pnet.onnx"}


def test_a_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text("{not json")
    with pytest.raises(ModelFormatError, match=f"{path}: not valid JSON"):
        load_card(path)


def test_docs_field_tables_are_the_generated_ones() -> None:
    doc = (REPO / "docs" / "model-format.md").read_text()
    generated = doc.split(BEGIN_MARK, 1)[1].split(END_MARK, 1)[0].strip()
    assert generated == markdown_tables().strip(), (
        "docs/model-format.md is out of date: run python -m model_format.docs --write")


def test_training_and_serving_map_every_interpolation_the_format_names() -> None:
    from model_format import INTERPOLATIONS
    from service.imaging import RESAMPLE
    from training.data.presets import INTERPOLATIONS as TRAINING

    assert tuple(RESAMPLE) == INTERPOLATIONS and tuple(TRAINING) == INTERPOLATIONS
