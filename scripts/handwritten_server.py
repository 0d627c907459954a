"""The server a user would write by hand: FastAPI + uvicorn + ONNX Runtime, one model, no more.

The yardstick of ``bench_handwritten.py``. It is what FastAPI's tutorial and ONNX Runtime's
examples lead to: a sync endpoint (FastAPI runs it in its thread pool) that reads the upload,
decodes it with Pillow, resizes it as the model card says, runs the session (default options:
ONNX Runtime's own thread count) and returns the top ``top_k`` classes as JSON. It answers the
service's route, ``POST /v1/models/{name}/classify?top_k=5`` with a multipart ``file``, so the
same client drives both; no batching, no limits, no metrics, no access log.

Usage::

    python scripts/handwritten_server.py models/mnist-lenet5/1 --port 8100
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image


def build_app(version_dir: Path) -> FastAPI:
    card = json.loads((version_dir / "model.json").read_text())
    spec, labels = card["input"], card["labels"]
    session = ort.InferenceSession(str(version_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    mode = "L" if spec["channels"] == 1 else "RGB"
    size = (spec["width"], spec["height"])
    shorter = spec["resize"].get("shorter_side")

    def prepare(data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data)).convert(mode)
        if shorter:  # shorter side to `shorter`, then the centre crop
            scale = shorter / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)),
                                 Image.BILINEAR)
            left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
            image = image.crop((left, top, left + size[0], top + size[1]))
        else:
            image = image.resize(size, Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        return (array[:, :, None] if array.ndim == 2 else array)[None]

    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/v1/models/{name}/classify")
    def classify(name: str, file: Annotated[UploadFile, File()], top_k: int = 5) -> dict:
        probabilities = session.run(None, {input_name: prepare(file.file.read())})[0][0]
        top = np.argsort(probabilities)[::-1][:top_k]
        return {"model": name, "predictions": [
            {"label": labels[i], "index": int(i), "score": float(probabilities[i])} for i in top]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path, help="models/<name>/<version>")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(build_app(args.version_dir), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
