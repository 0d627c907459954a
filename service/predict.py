"""``convserve predict PATH... --model NAME``: classify local image files and print the results.

With ``--url`` the files go to a running service; without it the service runs in this process
(the same app, decoding, batching and errors, over ``--models``, loading only the model asked for
and, for expressions, the face detector). Classification models print their top classes;
expression models print each face's box and expression. ``--json`` prints the service's answers,
one object per file, as a JSON list.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from model_format import Task

READY_TIMEOUT_S = 300.0


def _say(text: str, stream: Any = None) -> None:
    """A line for the user (this is a command line tool: stdout for results, stderr else)."""
    (stream or sys.stdout).write(text + "\n")


class PredictError(Exception):
    """Something the user must fix (a file, the URL, the model); the message says what."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files")
    parser.add_argument("--model", "-m", required=True, help="model name (GET /v1/models)")
    parser.add_argument("--version", help="model version (default: the model's default version)")
    parser.add_argument("--url", help="a running service, e.g. http://localhost:8000 "
                                      "(default: run the model in this process)")
    parser.add_argument("--models", type=Path,
                        help="models directory for in-process runs (CONVSERVE_MODELS_DIR, "
                             "default ./models)")
    parser.add_argument("--top-k", "-k", type=int, default=5, help="classes to print (5)")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.add_argument("--api-key", default=os.environ.get("CONVSERVE_API_KEY"),
                        help="Bearer token for --url (default: $CONVSERVE_API_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or f"HTTP {response.status_code}: {response.text[:200]}")


def _local_task(models_dir: Path, name: str) -> str:
    """The task of ``name``'s newest version, from its validated ``model.json``."""
    from model_format import load_card

    versions = sorted((int(p.parent.name), p) for p in (models_dir / name).glob("*/model.json")
                      if p.parent.name.isdigit())
    if not versions:
        known = sorted(p.parent.parent.name for p in models_dir.glob("*/*/model.json"))
        raise PredictError(f"no model {name!r} in {models_dir} (models there: "
                           f"{', '.join(sorted(set(known))) or 'none'}); pass --models DIR")
    return load_card(versions[-1][1]).task


@contextlib.asynccontextmanager
async def local_client(models_dir: Path, name: str) -> AsyncIterator[httpx.AsyncClient]:
    """The service's app in this process, over ``name`` (and the face detector it needs).

    Requests go straight to the ASGI app (``httpx.ASGITransport``), and its lifespan runs here,
    so the models load and the batcher drains as under uvicorn."""
    from service.expressions import DEFAULT_DETECTOR
    from service.http.app import create_app
    from service.settings import load_settings

    needed = [name]
    if _local_task(models_dir, name) == Task.EXPRESSION:
        needed.append(DEFAULT_DETECTOR)
    with tempfile.TemporaryDirectory(prefix="convserve-predict-") as tmp:
        for model in needed:  # only these load: a symlink per model directory
            if not (models_dir / model).is_dir():
                raise PredictError(f"{models_dir / model} is missing; expression models need "
                                   f"the face detector {DEFAULT_DETECTOR!r} beside them")
            (Path(tmp) / model).symlink_to((models_dir / model).resolve(), True)
        settings = load_settings(models_dir=Path(tmp))
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url="http://convserve") as client:
            await _wait_ready(client)
            yield client


async def _wait_ready(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        response = await client.get("/readyz")
        if response.status_code == 200:
            return
        if "failed" in _message(response) or time.monotonic() > deadline:
            raise PredictError(f"the model did not load: {_message(response)}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def remote_client(url: str, api_key: str | None, timeout: float,
                        ) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the service at ``url``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers,
                                 timeout=timeout) as client:
        yield client


async def _task(client: httpx.AsyncClient, name: str, version: str | None) -> dict[str, Any]:
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "")
    try:
        response = await client.get(path)
    except httpx.TransportError as exc:
        raise PredictError(f"cannot reach {client.base_url} ({exc}); is the service running? "
                           "Start it with `convserve serve` or leave out --url") from None
    if response.status_code != 200:
        raise PredictError(_message(response))
    info = response.json()
    if "versions" not in info:
        return dict(info)
    default = info.get("default_version")
    return dict(next((v for v in info["versions"] if v["version"] == default),
                     info["versions"][0]))


async def predict_file(client: httpx.AsyncClient, path: Path, name: str, version: str | None,
                 task: str, top_k: int) -> dict[str, Any]:
    """The service's answer for one file, with ``path`` added.

    Raises:
        PredictError: the file cannot be read, or the service refused it (its message).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PredictError(f"{path}: {exc.strerror or exc}") from None
    files = {"file": (path.name, data, "application/octet-stream")}
    if task == Task.EXPRESSION:
        params: dict[str, str | int] = {"model": name}
        if version:
            params["version"] = version
        response = await client.post("/v1/expressions", files=files, params=params)
    else:
        route = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + "/classify"
        response = await client.post(route, files=files, params={"top_k": top_k})
    if response.status_code != 200:
        raise PredictError(f"{path}: {_message(response)}")
    answer = response.json()
    if task != Task.EXPRESSION:
        answer = {"model": answer["model"], "version": answer["version"],
                  "predictions": answer["results"][0]["predictions"]}
    return {"path": str(path), **answer}


def format_result(result: dict[str, Any]) -> str:
    """One file's answer as text."""
    if "faces" in result:
        faces = result["faces"]
        lines = [f"{result['path']}  ({result['model']} v{result['version']}): "
                 f"{len(faces)} face(s)"]
        for face in faces:
            box = face["box"]
            ranked = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])
            rest = ", ".join(f"{label} {p:.3f}" for label, p in ranked[1:3])
            lines.append(f"  box x={box['x']} y={box['y']} {box['width']}x{box['height']}: "
                         f"{ranked[0][0]} {ranked[0][1]:.3f}  ({rest})")
        return "\n".join(lines)
    lines = [f"{result['path']}  ({result['model']} v{result['version']})"]
    for rank, prediction in enumerate(result["predictions"], 1):
        lines.append(f"  {rank}. {prediction['label']:<32} {prediction['score']:.4f}")
    return "\n".join(lines)


async def _predict(args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    """Every file's answer, and how many failed (each reported on stderr)."""
    opened: contextlib.AbstractAsyncContextManager[httpx.AsyncClient]
    if args.url:
        opened = remote_client(args.url, args.api_key, args.timeout)
    else:
        models_dir = args.models or Path(os.environ.get("CONVSERVE_MODELS_DIR", "models"))
        opened = local_client(models_dir, args.model)
    results, failures = [], 0
    async with opened as client:
        info = await _task(client, args.model, args.version)
        for path in args.paths:
            try:
                results.append(await predict_file(client, path, args.model, args.version,
                                                   info["task"], args.top_k))
            except PredictError as exc:
                failures += 1
                _say(f"convserve predict: {exc}", sys.stderr)
                continue
            if not args.json:
                _say(format_result(results[-1]))
    return results, failures


def _run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        _say("convserve predict: --top-k must be at least 1", sys.stderr)
        return 2
    try:
        results, failures = asyncio.run(_predict(args))
    except PredictError as exc:
        _say(f"convserve predict: {exc}", sys.stderr)
        return 2
    if args.json:
        _say(json.dumps(results, indent=2))
    return 1 if failures else 0


# ``convserve predict``: (help, add_arguments, run), registered by service/cli.py (which also
# sets up logging); this module does not import the command line.
COMMAND = ("classify local image files (through --url, or in this process)", _add_arguments, _run)
