"""Every error status, with its JSON body and a message that says what to do."""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.repository import ModelRepository, ScanPlan

CLASSIFY = "/v1/models/tiny-rgb/classify"


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert response.headers["x-request-id"]
    return body["error"]["message"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (bogus) image stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def test_400_not_an_image(tiny_client: TestClient) -> None:
    response = tiny_client.post(CLASSIFY, files={"file": ("cat.jpg", b"this is not an image")})
    message = _error(response, 400, "invalid_image")
    assert "not a decodable image" in message and "JPEG, PNG" in message


@pytest.mark.parametrize("name", ["rocket", "chelsea"])  # a JPEG and a PNG
def test_400_truncated(tiny_client: TestClient, photo: Callable[[str], bytes], name: str) -> None:
    data = photo(name)
    response = tiny_client.post(CLASSIFY, files={"file": ("cut", data[: len(data) // 2])})
    assert "truncated" in _error(response, 400, "invalid_image")


def test_400_names_the_bad_image_among_several(tiny_client: TestClient,
                                               photo: Callable[[str], bytes]) -> None:
    files = [("file", ("good.png", photo("chelsea"))), ("file", ("bad.jpg", b"\xff\xd8\xffjunk"))]
    message = _error(tiny_client.post(CLASSIFY, files=files), 400, "invalid_image")
    assert message.startswith("image #2 ('bad.jpg')")


def test_422_classify_on_a_face_detector(tiny_client: TestClient,
                                         photo: Callable[[str], bytes]) -> None:
    response = tiny_client.post("/v1/models/tiny-faces/classify",
                                files={"file": ("x.png", photo("chelsea"))})
    assert "/v1/expressions" in _error(response, 422, "unsupported_task")


@pytest.mark.parametrize(("path", "code", "hint"), [
    ("/v1/models/nope/classify", "model_not_found", "tiny-rgb"),
    ("/v1/models/Not_A..Name/classify", "model_not_found", "lower-case"),
    ("/v1/models/tiny-rgb/versions/7/classify", "version_not_found", "versions: 2, 1"),
    ("/v1/models/tiny-rgb/versions/x/classify", "version_not_found", "versions: 2, 1"),
])
def test_404_unknown_model_or_version(tiny_client: TestClient, photo: Callable[[str], bytes],
                                      path: str, code: str, hint: str) -> None:
    response = tiny_client.post(path, files={"file": ("x.png", photo("chelsea"))})
    assert hint in _error(response, 404, code)


def test_404_and_405_for_routes(tiny_client: TestClient) -> None:
    assert "/docs" in _error(tiny_client.get("/v1/nothing"), 404, "not_found")
    _error(tiny_client.get(CLASSIFY), 405, "method_not_allowed")


def test_404_model_description(tiny_client: TestClient) -> None:
    assert "tiny-grey" in _error(tiny_client.get("/v1/models/nope"), 404, "model_not_found")


@pytest.fixture(scope="module")
def limited(make_client: Callable[..., Any], tiny_models: Path) -> Iterator[TestClient]:
    with make_client(tiny_models, max_body_bytes=200_000, max_image_pixels=1_000_000,
                     max_images_per_request=3) as client:
        yield client


def test_413_body_too_large(limited: TestClient, photo: Callable[[str], bytes]) -> None:
    data = photo("astronaut")  # ~ 0.8 MB
    message = _error(limited.post(CLASSIFY, files={"file": ("a.png", data)}), 413,
                     "payload_too_large")
    assert "200000" in message and "CONVSERVE_MAX_BODY_BYTES" in message


def test_413_streamed_body_too_large(limited: TestClient, photo: Callable[[str], bytes]) -> None:
    data = photo("astronaut")
    chunks = (data[i:i + 65536] for i in range(0, len(data), 65536))  # no Content-Length
    response = limited.post(CLASSIFY, content=chunks, headers={"Content-Type": "image/png"})
    assert "200000" in _error(response, 413, "payload_too_large")


def test_413_too_many_pixels(limited: TestClient, photo: Callable[[str], bytes]) -> None:
    image = Image.open(io.BytesIO(photo("rocket")))  # 640 x 427: fine
    big = image.resize((1400, 934))  # 1.3 Mpx > the 1 Mpx limit
    out = io.BytesIO()
    big.save(out, "JPEG", quality=40)
    assert len(out.getvalue()) < 200_000
    assert limited.post(CLASSIFY, files={"file": ("ok.jpg", photo("rocket"))}).status_code == 200
    message = _error(limited.post(CLASSIFY, files={"file": ("big.jpg", out.getvalue())}), 413,
                     "image_too_large")
    assert "1400x934" in message and "1000000" in message


@pytest.mark.parametrize("side", [20_000, 100_000])  # under and over Pillow's own bomb limit
def test_413_decompression_bomb_is_not_decoded(tiny_client: TestClient, side: int) -> None:
    bomb = _png_header_only(side, side)
    assert len(bomb) < 100
    message = _error(tiny_client.post(CLASSIFY, files={"file": ("bomb.png", bomb)}), 413,
                     "image_too_large")
    assert "pixels" in message


def _ico() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, "ICO")
    return out.getvalue()


def _tga(photo: Callable[[str], bytes]) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(photo("chelsea"))).convert("RGB").save(out, "TGA")
    return out.getvalue()


PDF = (b"%PDF-1.1\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]"
       b"/Count 1>>endobj\n3 0 obj<</Type/Page/MediaBox[0 0 3 3]/Parent 2 0 R>>endobj\ntrailer"
       b"<</Root 1 0 R>>\n%%EOF\n")
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4"/></svg>'


@pytest.mark.parametrize("kind", ["PDF", "SVG", "ICO", "PSD-or-other"])
def test_415_unsupported_format(tiny_client: TestClient, photo: Callable[[str], bytes],
                                kind: str) -> None:
    data = {"PDF": PDF, "SVG": SVG, "ICO": _ico()}.get(kind) or b"8BPS\x00\x01" + b"\0" * 64
    message = _error(tiny_client.post(CLASSIFY, files={"file": ("x", data)}), 415,
                     "unsupported_media_type")
    assert "JPEG, PNG, WebP, BMP, GIF, TIFF" in message


def test_415_format_pillow_reads_but_we_do_not(tiny_client: TestClient,
                                               photo: Callable[[str], bytes]) -> None:
    response = tiny_client.post(CLASSIFY, content=_tga(photo),
                                headers={"Content-Type": "image/x-tga"})
    assert _error(response, 415, "unsupported_media_type").startswith("TGA images")


def test_415_wrong_content_type(tiny_client: TestClient) -> None:
    response = tiny_client.post(CLASSIFY, json={"image": "abc"})
    assert "multipart/form-data" in _error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("top_k", ["0", "-3", "five", "1001", "2.5", "\u00b2"])
def test_422_bad_top_k(tiny_client: TestClient, photo: Callable[[str], bytes],
                       top_k: str) -> None:
    response = tiny_client.post(CLASSIFY, params={"top_k": top_k},
                                files={"file": ("x.png", photo("chelsea"))})
    assert _error(response, 422, "invalid_parameter").startswith("top_k:")


@pytest.mark.parametrize("kwargs", [
    {"files": {"image": ("x.png", b"\x89PNG")}},  # wrong field name
    {"data": {"file": "not a file"}},  # a text field
    {"content": b"", "headers": {"Content-Type": "image/png"}},  # empty raw body
    {},  # nothing at all
])
def test_422_no_file(tiny_client: TestClient, kwargs: dict) -> None:
    message = _error(tiny_client.post(CLASSIFY, **kwargs), 422, "invalid_parameter")
    assert "file" in message


def test_422_too_many_files(limited: TestClient, photo: Callable[[str], bytes]) -> None:
    small = photo("rocket")[:100]
    files = [("file", (f"{i}.jpg", small)) for i in range(4)]
    assert "at most 3" in _error(limited.post(CLASSIFY, files=files), 422, "invalid_parameter")


def test_503_until_the_models_have_loaded(make_client: Callable[..., Any], tiny_models: Path,
                                          photo: Callable[[str], bytes],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_plan = ModelRepository.plan

    def held_plan(self: ModelRepository) -> ScanPlan:
        release.wait(10)  # hold the first load until the test has looked
        return real_plan(self)

    monkeypatch.setattr(ModelRepository, "plan", held_plan)
    with make_client(tiny_models, ready=False) as client:
        assert client.get("/healthz").status_code == 200
        assert "loading" in _error(client.get("/readyz"), 503, "not_ready")
        response = client.post(CLASSIFY, files={"file": ("x.png", photo("chelsea"))})
        assert "/readyz" in _error(response, 503, "not_ready")
        assert response.headers["Retry-After"] == "1"  # a balancer or client tries again
        for path in ("/readyz", "/v2/health/ready", "/v1/models", "/v1/models/tiny-rgb"):
            assert client.get(path).headers["Retry-After"] == "1", path
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/readyz").json()["status"] == "ready"
        response = client.post(CLASSIFY, files={"file": ("x.png", photo("chelsea"))})
        assert response.status_code == 200


def test_unexpected_error_is_a_generic_500(make_client: Callable[..., Any], tiny_models: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with make_client(tiny_models) as client:
        @client.app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("secret internal detail")

        with caplog.at_level(logging.ERROR, logger="convserve.errors"):
            response = client.get("/boom")
        message = _error(response, 500, "internal_error")
        assert "secret" not in message and response.headers["x-request-id"] in message
        assert any("secret internal detail" in r.getMessage() or
                   (r.exc_info and "secret internal detail" in str(r.exc_info[1]))
                   for r in caplog.records)


def _multipart(*parts: bytes, boundary: bytes = b"b0undary", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


FILE_PART = b'Content-Disposition: form-data; name="file"; filename="r.jpg"\r\n\r\n'


@pytest.mark.parametrize(("content_type", "close", "wording"), [
    ("multipart/form-data", True, "no boundary"),
    ("multipart/form-data; boundary=b0undary", False, "no closing boundary"),
])
def test_400_malformed_multipart(tiny_client: TestClient, photo: Callable[[str], bytes],
                                 content_type: str, close: bool, wording: str) -> None:
    body = _multipart(FILE_PART + photo("rocket"), close=close)
    response = tiny_client.post(CLASSIFY, content=body, headers={"Content-Type": content_type})
    assert wording in _error(response, 400, "bad_request")


def test_other_form_fields_are_ignored(tiny_client: TestClient,
                                       photo: Callable[[str], bytes]) -> None:
    body = _multipart(b'Content-Disposition: form-data; name="note"\r\n\r\nhello',
                      FILE_PART + photo("rocket"))
    response = tiny_client.post(CLASSIFY, content=body, headers={
        "Content-Type": "multipart/form-data; boundary=b0undary"})
    assert response.status_code == 200, response.text
    assert [r["filename"] for r in response.json()["results"]] == ["r.jpg"]
