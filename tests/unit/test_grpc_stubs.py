"""service/grpc/: the committed generated code is what the proto gives, and errors map once.

Nothing here imports the generated messages (see tests/integration/test_grpc_protocol.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import grpc
import pytest

from service import errors
from service.grpc.errors import CODES, describe
from service.grpc.generate import GENERATED, ROOT, generate
from service.inference_protocol import ProtocolError


def test_regenerating_gives_the_committed_files(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert [path.name for path in written] == list(GENERATED)
    for path in written:
        committed = ROOT / "service" / "grpc" / path.name
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed} is stale: run python -m service.grpc.generate")


@pytest.mark.parametrize("kind", [
    cls for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ServiceError) and cls is not errors.ServiceError] + [ProtocolError])
def test_every_domain_error_has_a_status_code(kind: type[errors.ServiceError]) -> None:
    code, message, _, status = describe(kind("how to fix it"), "r1")
    assert message == "how to fix it" and status == kind.status_code
    assert code == CODES[kind.status_code] and code != grpc.StatusCode.INTERNAL


def test_unexpected_errors_reveal_nothing() -> None:
    code, message, _, status = describe(KeyError("secret"), "r7")
    assert (code, status) == (grpc.StatusCode.INTERNAL, 500)
    assert message == "internal server error; quote request id r7 when reporting"


def test_unavailable_carries_the_retry_hint() -> None:
    _, _, trailers, _ = describe(errors.NotReady("loading"), "r1")
    assert dict(trailers) == {"retry-after": "1", "grpc-retry-pushback-ms": "1000"}
    full = errors.Overloaded("queue full", headers={"Retry-After": "2"})
    code, _, trailers, _ = describe(full, "r1")
    assert code == grpc.StatusCode.UNAVAILABLE
    assert dict(trailers) == {"retry-after": "2", "grpc-retry-pushback-ms": "2000"}
