"""The Open Inference Protocol's shared code and the gRPC adapter import no web framework.

Checked in a fresh interpreter with FastAPI, Starlette and uvicorn made unimportable (the gRPC
modules also load generated messages that must not meet tritonclient's in this process).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ("service.inference_protocol", "service.protocol_infer", "service.statistics",
           "service.tracing", "service.auth", "service.oip", "service.grpc.errors",
           "service.grpc.messages", "service.grpc.servicer", "service.grpc.server")


def test_they_import_without_a_web_framework() -> None:
    code = ("import sys\n"
            "for name in ('fastapi', 'starlette', 'uvicorn'):\n"
            "    sys.modules[name] = None\n"
            + "".join(f"import {module}\n" for module in MODULES))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    broken = subprocess.run([sys.executable, "-c", code + "import service.http.app\n"],
                            cwd=REPO, capture_output=True, text=True, check=False)
    assert broken.returncode != 0  # the check is not vacuous: the HTTP adapter needs FastAPI
