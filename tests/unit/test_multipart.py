"""service/pipeline.py's hand-written multipart/form-data parser, directly, on good and bad bodies.

The good bodies are built by httpx (what clients send) around real photo bytes; the bad ones are
cut or bent by hand. Every malformed body is a :class:`BadRequest` (400) or an
:class:`InvalidParameter` (422) with a message that says what is wrong, never another exception.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from service.errors import BadRequest, InvalidParameter
from service.http.uploads import parse_multipart

BOUNDARY = "b0undary"
TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _encoded(files: list[tuple[str, tuple[str, bytes]]] | None = None,
             data: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A body and content type exactly as httpx encodes them."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def _part(name: str, payload: bytes, filename: str | None = "a.jpg") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + payload + b"\r\n"


def test_files_in_order_with_names(photo: Callable[[str], bytes]) -> None:
    jpeg, png = photo("chelsea"), photo("astronaut")
    body, content_type = _encoded([("file", ("cat.jpg", jpeg)), ("file", ("astronaut.png", png))])
    uploads = parse_multipart(body, content_type, 64)
    assert [(u.filename, u.data) for u in uploads] == [("cat.jpg", jpeg), ("astronaut.png", png)]


def test_other_fields_are_skipped(photo: Callable[[str], bytes]) -> None:
    jpeg = photo("chelsea")
    body, content_type = _encoded([("file", ("c.jpg", jpeg)), ("other", ("o.jpg", b"xx"))],
                                  data={"note": "hello"})
    assert [u.data for u in parse_multipart(body, content_type, 64)] == [jpeg]


def test_data_holding_the_boundary_prefix_and_crlf_is_kept() -> None:
    payload = b"\r\n--b0und\r\n\r\nnot the end--\r\n"
    body = _part("file", payload) + f"--{BOUNDARY}--\r\n".encode()
    assert parse_multipart(body, TYPE, 64)[0].data == payload


def test_utf8_filename_and_preamble() -> None:
    body = b"preamble to ignore\r\n" + _part("file", b"x", "fé.jpg") + (
        f"--{BOUNDARY}--".encode())
    (upload,) = parse_multipart(body, TYPE, 64)
    assert upload.filename == "fé.jpg" and upload.data == b"x"


def test_no_file_fields_is_an_empty_list() -> None:
    body = _part("note", b"hello", filename=None) + f"--{BOUNDARY}--\r\n".encode()
    assert parse_multipart(body, TYPE, 64) == []


@pytest.mark.parametrize(("body", "content_type", "error", "message"), [
    (_part("file", b"x") + f"--{BOUNDARY}--".encode(), "multipart/form-data", BadRequest,
     "the multipart/form-data content type has no boundary parameter"),
    (_part("file", b"x"), TYPE, BadRequest,
     "truncated multipart/form-data body: no closing boundary"),
    (_part("file", b"x")[:-2] + f"--{BOUNDARY}--".encode(), TYPE, BadRequest,
     "malformed multipart/form-data body: a part is not framed by CRLF and the boundary"),
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
     f"--{BOUNDARY}--".encode(), TYPE, BadRequest, "malformed multipart/form-data body"),
    (f"--{BOUNDARY}X\r\n\r\nx\r\n--{BOUNDARY}--".encode(), TYPE, BadRequest,
     "malformed multipart/form-data body"),
    (b"", TYPE, BadRequest, "truncated multipart/form-data body: no closing boundary"),
    (b"just some bytes", TYPE, BadRequest, "truncated multipart/form-data body"),
    (_part("file", b"text", filename=None) + f"--{BOUNDARY}--".encode(), TYPE,
     InvalidParameter, "field 'file' must be a file upload, not text"),
    (_part("file", b"a") + _part("file", b"b") + _part("file", b"c") + f"--{BOUNDARY}--".encode(),
     TYPE, InvalidParameter,
     "too many images: at most 2 per request (CONVSERVE_MAX_IMAGES_PER_REQUEST)"),
])
def test_malformed_bodies(body: bytes, content_type: str, error: type[Exception],
                          message: str) -> None:
    with pytest.raises(error) as caught:
        parse_multipart(body, content_type, 2)
    assert message in str(caught.value)
    assert caught.value.status_code == (400 if error is BadRequest else 422)  # type: ignore[attr-defined]
