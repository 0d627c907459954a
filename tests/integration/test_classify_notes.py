"""A whole photo sent to an expression model's classify: answered, with a note that points to
``/v1/expressions``; an image classifier's answer carries no notes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_an_expression_model_given_a_group_photo_says_what_it_expects(
        make_client: Callable[..., Any], shipped_repository: Callable[..., Path]) -> None:
    models = shipped_repository("fer-minixception", "mnist-lenet5")
    with make_client(models) as client:
        group = client.post("/v1/models/fer-minixception/classify",
                            files={"file": ("group.jpg", (SAMPLES / "group.jpg").read_bytes())})
        assert group.status_code == 200
        assert group.json()["notes"] == [
            "fer-minixception is an expression model: it expects one face, cropped close as "
            "POST /v1/expressions crops it; for a photo with people in it, send it to "
            "POST /v1/expressions?model=fer-minixception, which finds each face first"]
        digit = client.post("/v1/models/mnist-lenet5/classify",
                            files={"file": ("digit.png", (SAMPLES / "digit.png").read_bytes())})
        assert digit.status_code == 200 and "notes" not in digit.json()
        assert digit.json()["results"][0]["filename"] == "digit.png"
