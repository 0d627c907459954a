"""``python -m service.grpc.generate``: write the Python code for ``inference.proto``.

Runs grpcio-tools' ``protoc`` (the ``dev`` extra pins its version, so the output is
reproducible) from the repository root, so that the generated modules import each other as
``service.grpc.inference_pb2``. The generated files are committed; ``tests/unit/test_grpc_stubs``
checks that running this again gives the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO = Path("service/grpc/inference.proto")
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")
ROOT = Path(__file__).resolve().parents[2]


def generate(out: Path) -> list[Path]:
    """Write the generated modules under ``out`` (``out/service/grpc/...``); return their paths.

    Raises:
        RuntimeError: protoc failed (its message says why).
    """
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}",
                          f"--python_out={out}", f"--pyi_out={out}",
                          f"--grpc_python_out={out}", str(ROOT / PROTO)])
    if status != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit status {status})")
    return [out / PROTO.parent / name for name in GENERATED]


def main() -> int:
    generate(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
