"""Reading a request's images: multipart ``file`` fields or a raw image body -> :class:`Upload`."""

from __future__ import annotations

from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from service.errors import BadRequest, InvalidImage, InvalidParameter, UnsupportedMediaType
from service.imaging import SUPPORTED, sniff
from service.pipeline import Upload, image_name

FILE_FIELD = "file"
NO_FILE = (f"no image: send one or more multipart/form-data fields named '{FILE_FIELD}', or one "
           "image as the raw body with an image/* content type")


async def read_uploads(request: Request, max_files: int) -> list[Upload]:
    """The images of a request: multipart ``file`` fields, or the raw body.

    Raises:
        InvalidParameter: no image, an empty one, or more than ``max_files`` (HTTP 422).
        UnsupportedMediaType: a content type that is neither multipart nor an image (HTTP 415).
    """
    header = request.headers.get("content-type", "")
    content_type = header.split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        uploads = parse_multipart(await request.body(), header, max_files)
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        body = await request.body()
        uploads = [Upload(None, body)] if body else []
    elif content_type in ("", "application/x-www-form-urlencoded"):
        # `curl --data-binary @photo.jpg` declares a form: take the body if it is an image.
        body = await request.body()
        uploads = [Upload(None, body)] if body and _is_image(body) else []
    else:
        raise UnsupportedMediaType(f"content type {content_type!r} is not accepted: send "
                                   f"multipart/form-data or a raw image ({SUPPORTED})")
    if not uploads:
        raise InvalidParameter(NO_FILE)
    for position, upload in enumerate(uploads, 1):
        if not upload.data:
            raise InvalidParameter(f"image {image_name(position, upload)} is empty")
    return uploads


def parse_multipart(body: bytes, content_type: str, max_files: int) -> list[Upload]:
    """The ``file`` parts of a multipart/form-data body (RFC 7578), read in one pass.

    The body is already in memory (its size is capped by ``max_body_bytes``), so splitting on the
    boundary is all it takes; Starlette's streaming parser costs several times more per request.

    Raises:
        BadRequest: broken framing (HTTP 400).
        InvalidParameter: a text ``file`` field, or more than ``max_files`` files (HTTP 422).
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart/form-data content type has no boundary parameter")
    chunks = body.split(b"--" + boundary)
    uploads: list[Upload] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            return uploads
        head, separator, data = chunk.partition(b"\r\n\r\n")
        if not chunk.startswith(b"\r\n") or not separator or not data.endswith(b"\r\n"):
            raise BadRequest("malformed multipart/form-data body: a part is not framed by "
                             "CRLF and the boundary")
        disposition: dict[bytes, bytes] = {}
        for line in head.split(b"\r\n"):
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-disposition":
                disposition = parse_options_header(value.strip())[1]
        if disposition.get(b"name") != FILE_FIELD.encode():
            continue
        if b"filename" not in disposition:
            raise InvalidParameter(f"field '{FILE_FIELD}' must be a file upload, not text")
        if len(uploads) == max_files:
            raise InvalidParameter(f"too many images: at most {max_files} per request "
                                   "(CONVSERVE_MAX_IMAGES_PER_REQUEST)")
        filename = disposition[b"filename"].decode("utf-8", "replace")
        uploads.append(Upload(filename, data[:-2]))
    raise BadRequest("truncated multipart/form-data body: no closing boundary")


def _is_image(data: bytes) -> bool:
    try:
        sniff(data)
    except InvalidImage:
        return False
    return True  # or UnsupportedMediaType propagates: an image we do not read
