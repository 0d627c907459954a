"""POST /v1/models/{name}/classify against real exported models and real photos."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.imaging import InputSpec, prepare

PHOTOS = ("chelsea", "rocket", "coffee")


def _direct(models: Path, name: str, data: bytes, version: int = 1) -> np.ndarray:
    """The model's probabilities, computed without the service (ORT on prepare's output)."""
    directory = models / name / str(version)
    spec = InputSpec.from_json(json.loads((directory / "model.json").read_text())["input"])
    session = ort.InferenceSession(str(directory / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    array = prepare(data, spec, 10**9).array[None]
    return session.run(["probabilities"], {"image": array})[0][0]


def _scores(result: dict) -> dict[int, float]:
    return {p["index"]: p["score"] for p in result["predictions"]}


def _png(image: Image.Image, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **kwargs)
    return out.getvalue()


def _jpeg(image: Image.Image, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, **kwargs)
    return out.getvalue()


def test_several_images_answered_in_order(tiny_client: TestClient, tiny_models: Path,
                                          photo: Callable[[str], bytes]) -> None:
    files = [("file", (f"{name}.img", photo(name))) for name in PHOTOS]
    response = tiny_client.post("/v1/models/tiny-rgb/classify", files=files,
                                params={"top_k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("tiny-rgb", 2)  # the highest version
    assert [r["filename"] for r in body["results"]] == [f"{n}.img" for n in PHOTOS]
    for name, result in zip(PHOTOS, body["results"], strict=True):
        expected = _direct(tiny_models, "tiny-rgb", photo(name), version=2)
        scores = [p["score"] for p in result["predictions"]]
        assert scores == sorted(scores, reverse=True)
        assert [p["index"] for p in result["predictions"]] == list(np.argsort(-expected))
        np.testing.assert_allclose(scores, np.sort(expected)[::-1], atol=1e-5)
        assert all(p["label"] == f"tiny-rgb-class-{p['index']}" for p in result["predictions"])
    firsts = [json.dumps(r["predictions"]) for r in body["results"]]
    assert len(set(firsts)) == len(PHOTOS)  # different photos, different answers


def test_raw_body_upload(tiny_client: TestClient, photo: Callable[[str], bytes]) -> None:
    data = photo("rocket")
    raw = tiny_client.post("/v1/models/tiny-rgb/classify", content=data,
                           headers={"Content-Type": "image/jpeg"}, params={"top_k": 3})
    multipart = tiny_client.post("/v1/models/tiny-rgb/classify", params={"top_k": 3},
                                 files={"file": ("rocket.jpg", data)})
    assert raw.status_code == 200, raw.text
    (result,) = raw.json()["results"]
    assert result["filename"] is None
    assert len(result["predictions"]) == 3
    assert result["predictions"] == multipart.json()["results"][0]["predictions"]


def test_curl_data_binary_upload(tiny_client: TestClient, photo: Callable[[str], bytes]) -> None:
    """``curl --data-binary @photo.jpg`` declares a form; the body is still an image."""
    data = photo("rocket")
    response = tiny_client.post("/v1/models/tiny-rgb/classify", content=data, headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    form = tiny_client.post("/v1/models/tiny-rgb/classify", data={"file": "rocket.jpg"})
    assert form.status_code == 422  # a real form without an image


def test_declared_type_is_ignored(tiny_client: TestClient, photo: Callable[[str], bytes]) -> None:
    """A PNG sent as image/jpeg named .gif still decodes: the bytes decide."""
    data = photo("chelsea")
    lying = tiny_client.post("/v1/models/tiny-rgb/classify",
                             files={"file": ("cat.gif", data, "image/jpeg")})
    honest = tiny_client.post("/v1/models/tiny-rgb/classify",
                              files={"file": ("cat.png", data, "image/png")})
    assert lying.status_code == 200
    assert lying.json()["results"][0]["predictions"] == honest.json()["results"][0]["predictions"]


def test_explicit_version(tiny_client: TestClient, photo: Callable[[str], bytes]) -> None:
    data = photo("coffee")
    answers = {}
    for version in (1, 2):
        response = tiny_client.post(f"/v1/models/tiny-rgb/versions/{version}/classify",
                                    files={"file": ("coffee.png", data)})
        assert response.status_code == 200
        assert response.json()["version"] == version
        answers[version] = response.json()["results"][0]["predictions"]
    assert answers[1] != answers[2]  # different weights, different answers


def test_exif_rotated_photo_is_turned_upright(tiny_client: TestClient,
                                              photo: Callable[[str], bytes]) -> None:
    upright = Image.open(io.BytesIO(photo("china"))).convert("RGB")  # sky at the top
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    answers = {}
    for case, data in {"upright": _jpeg(upright), "tagged": _jpeg(stored, exif=exif.tobytes()),
                       "untagged": _jpeg(stored)}.items():
        response = tiny_client.post("/v1/models/tiny-layout/classify",
                                    files={"file": (f"{case}.jpg", data)}, params={"top_k": 1})
        assert response.status_code == 200, response.text
        answers[case] = response.json()["results"][0]["predictions"][0]["label"]
    assert answers == {"upright": "top", "tagged": "top", "untagged": "left"}


def test_grey_png_on_an_rgb_model(tiny_client: TestClient, tiny_models: Path,
                                  photo: Callable[[str], bytes]) -> None:
    grey = Image.open(io.BytesIO(photo("astronaut"))).convert("L")
    assert grey.mode == "L"
    as_grey = tiny_client.post("/v1/models/tiny-rgb/classify",
                               files={"file": ("g.png", _png(grey))})
    as_rgb = tiny_client.post("/v1/models/tiny-rgb/classify",
                              files={"file": ("rgb.png", _png(grey.convert("RGB")))})
    assert as_grey.status_code == 200, as_grey.text
    assert as_grey.json()["results"] == [{**as_rgb.json()["results"][0], "filename": "g.png"}]


def _classify_png(client: TestClient, data: bytes) -> list[dict]:
    response = client.post("/v1/models/tiny-rgb/classify", files={"file": ("x.png", data)},
                           params={"top_k": 10})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["predictions"]


def test_rgba_png(tiny_client: TestClient, photo: Callable[[str], bytes]) -> None:
    data = photo("rgba-png")  # a real RGBA PNG (opaque alpha)
    rgba = Image.open(io.BytesIO(data))
    assert rgba.mode == "RGBA"
    assert _classify_png(tiny_client, data) == _classify_png(tiny_client,
                                                              _png(rgba.convert("RGB")))


def test_transparent_pixels_are_composited_on_white(tiny_client: TestClient,
                                                    photo: Callable[[str], bytes]) -> None:
    rgb = Image.open(io.BytesIO(photo("chelsea"))).convert("RGB")
    alpha = np.tile(np.linspace(0, 255, rgb.width, dtype=np.uint8), (rgb.height, 1))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(alpha, "L"))  # transparent on the left, opaque on the right
    white = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    got = _classify_png(tiny_client, _png(rgba))
    on_white = _classify_png(tiny_client, _png(white))
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in on_white],
                               atol=1e-6)
    assert [p["index"] for p in got] == [p["index"] for p in on_white]
    assert got != _classify_png(tiny_client, _png(rgb))  # alpha was not just dropped


@pytest.mark.parametrize("name", ["face-bw", "chelsea"])
def test_colour_and_grey_photos_on_a_grey_model(tiny_client: TestClient, tiny_models: Path,
                                               photo: Callable[[str], bytes], name: str) -> None:
    response = tiny_client.post("/v1/models/tiny-grey/classify",
                                files={"file": (name, photo(name))}, params={"top_k": 10})
    assert response.status_code == 200, response.text
    expected = _direct(tiny_models, "tiny-grey", photo(name))
    got = {p["index"]: p["score"] for p in response.json()["results"][0]["predictions"]}
    np.testing.assert_allclose([got[i] for i in range(10)], expected, atol=1e-5)


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "GIF", "TIFF"])
def test_every_supported_format(tiny_client: TestClient, photo: Callable[[str], bytes],
                                fmt: str) -> None:
    image = Image.open(io.BytesIO(photo("coffee"))).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    response = tiny_client.post("/v1/models/tiny-rgb/classify",
                                files={"file": (f"coffee.{fmt.lower()}", out.getvalue())})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["predictions"]) == 5


def test_openapi_documents_the_classify_routes(tiny_client: TestClient) -> None:
    paths = tiny_client.get("/openapi.json").json()["paths"]
    for path in ("/v1/models/{name}/classify", "/v1/models/{name}/versions/{version}/classify"):
        operation = paths[path]["post"]
        top_k = next(p for p in operation["parameters"] if p["name"] == "top_k")
        assert top_k["schema"]["minimum"] == 1 and top_k["schema"]["maximum"] == 1000
        assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
        assert "ClassifyResponse" in json.dumps(operation["responses"]["200"])


def test_declared_routes_answer_like_the_shortcut(tiny_client: TestClient, tiny_models: Path,
                                                  photo: Callable[[str], bytes]) -> None:
    """ClassifyShortcut answers the classify paths before FastAPI's router; the routes declared
    to FastAPI (the documented contract) give the same answers and errors without it."""
    import time

    from service.http.app import create_app
    from service.http.routes.classify import ClassifyShortcut
    from service.settings import load_settings

    app = create_app(load_settings(models_dir=tiny_models, providers="CPU"))
    app.user_middleware = [m for m in app.user_middleware if m.cls is not ClassifyShortcut]
    files = {"file": ("chelsea.jpg", photo("chelsea"))}
    with TestClient(app, raise_server_exceptions=False) as routed:
        deadline = time.monotonic() + 30
        while routed.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        for path in ("/v1/models/tiny-rgb/classify", "/v1/models/tiny-rgb/versions/1/classify"):
            for params in ({"top_k": 3}, {"top_k": 0}, {"version": 1}, {"version": 9}):
                declared = routed.post(path, files=files, params=params)
                shortcut = tiny_client.post(path, files=files, params=params)
                assert declared.status_code == shortcut.status_code, declared.text
                if shortcut.status_code in (200, 404):
                    assert declared.json() == shortcut.json()
                else:
                    assert shortcut.status_code == 422
                    assert declared.json()["error"]["message"].startswith("top_k:")
                    assert shortcut.json()["error"]["message"].startswith("top_k:")
                    assert routed.get("/metrics").text.count(
                        'route="/v1/models/{name}/classify"') > 0


@pytest.mark.parametrize("where", ["app", "include_router", "router", "route"])
def test_shortcut_refuses_routes_it_cannot_honour(where: str, tiny_models: Path) -> None:
    """A dependency added at any level (the app, ``include_router``, the router, the route)
    stops the start, instead of being skipped by ClassifyShortcut on the busiest endpoint."""
    from fastapi import APIRouter, Depends, FastAPI

    from service.http.app import create_app
    from service.http.routes.classify import ClassifyShortcut, classify_images
    from service.settings import load_settings

    async def audit() -> None:
        return None

    def at(level: str) -> list[Any]:
        return [Depends(audit)] if where == level else []

    app = FastAPI(dependencies=at("app"))
    router = APIRouter(prefix="/v1/models", dependencies=at("router"))
    router.add_api_route("/{name}/classify", classify_images, methods=["POST"],
                         dependencies=at("route"))
    app.include_router(router, dependencies=at("include_router"))
    with pytest.raises(RuntimeError, match=r"ClassifyShortcut cannot answer "
                                           r"/v1/models/\{name\}/classify as declared"):
        ClassifyShortcut(app.router, app.routes)
    served = create_app(load_settings(models_dir=tiny_models, providers="CPU"))
    assert len(ClassifyShortcut(served.router, served.routes).routes) == 2  # as shipped
