"""The README's examples, run as written: its serve command, every ``curl`` and ``convserve``
line of its shell blocks (against that server, on a free port), the figures it quotes, and its
quick training runs (train, evaluate, export, a new schedule, fine-tuning).

The commands run in a scratch directory that looks like the repository root (``samples/``, and a
``models/`` whose version directories link to the shipped ones), with the test's virtual
environment first on ``PATH`` as ``source .venv/bin/activate`` would put it, so that an example
that writes a file (``-o labelled.png``, ``echo 2 > models/...``) changes nothing here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, SHIPPED_MODELS, free_port, run_service

from training.assets import fetch
from training.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
PORT = ":8000"
RUN_FIRST_WORDS = ("curl", "convserve", "echo")  # each such line of a ```bash block is run
NOT_RUN = ("docker", "convserve serve")  # compose needs an engine; serve is the fixture


def shell_lines(text: str) -> list[str]:
    """The lines of the README's ```bash blocks that the test runs, in order."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith(RUN_FIRST_WORDS) and not line.startswith(NOT_RUN):
                lines.append(line)
    return lines


def serve_line(text: str) -> str:
    return next(line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                for line in block.splitlines() if line.startswith("convserve serve"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch repository root: samples/ and models/ (version directories linked)."""
    root = tmp_path_factory.mktemp("readme")
    (root / "samples").symlink_to(REPO_ROOT / "samples", target_is_directory=True)
    for model in sorted(SHIPPED_MODELS.iterdir()):
        if not model.is_dir():
            continue
        (root / "models" / model.name).mkdir(parents=True)
        for entry in model.iterdir():
            if entry.is_dir():
                (root / "models" / model.name / entry.name).symlink_to(entry, True)
            else:
                shutil.copy(entry, root / "models" / model.name / entry.name)
    # "a retrained version 2" for the README's default-version example: a copy of version 1
    (root / "models" / "mnist-lenet5" / "2").symlink_to(SHIPPED_MODELS / "mnist-lenet5" / "1",
                                                        True)
    return root


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)  # what `source .venv/bin/activate` does
    return {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "CONVSERVE_PROVIDERS": "CPU"}


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(root: Path, env: dict[str, str], grpc_port: int) -> Iterator[str]:
    port = free_port()
    command = serve_line(README.read_text()).replace(f"--port {PORT[1:]}", f"--port {port}")
    command += f" --grpc-port {grpc_port}"  # the README's 8001 may be taken on this machine
    with run_service(["bash", "-c", f"exec {command}"], f"http://127.0.0.1:{port}", env,
                     cwd=root, timeout=300):
        yield f"localhost:{port}"


def _run(line: str, root: Path, env: dict[str, str], address: str,
         ) -> subprocess.CompletedProcess[str]:
    command = line.replace("localhost" + PORT, address)
    return subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_every_shell_example_runs_as_written(server: str, root: Path,
                                             env: dict[str, str]) -> None:
    text = README.read_text()
    lines = shell_lines(text)
    assert len(lines) >= 12 and any("samples/cat.jpg" in line for line in lines)
    outputs = {}
    for line in lines:
        done = _run(line, root, env, server)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
        assert '"error"' not in done.stdout, (line, done.stdout[-2000:])
        if line.startswith("convserve"):
            assert done.stderr == "", (line, done.stderr)  # no warnings, no noise
        outputs[line] = done.stdout
    assert (root / "labelled.png").read_bytes()[:4] == b"\x89PNG"
    # The default-version example made the "retrained" version 2 the default.
    models = httpx.get(f"http://{server}/v1/models/mnist-lenet5").json()
    assert models["default_version"] == 2 and models["pinned"] is True
    # The answers the README quotes are the ones the examples give.
    first = json.loads(outputs[lines[0]])
    prediction = first["results"][0]["predictions"][0]
    quoted = re.search(r'Answer: `\{"model": "([\w-]+)", "version": (\d+), "results": '
                       r'\[\{"filename": "([\w.]+)",\s+"predictions": \[\{"label": "([^"]+)", '
                       r'"index": (\d+), "score": ([\d.]+)\}', text)
    assert quoted is not None
    assert (first["model"], str(first["version"]), first["results"][0]["filename"],
            prediction["label"], str(prediction["index"]), f"{prediction['score']:.2f}") == \
        quoted.groups()
    faces = json.loads(outputs[lines[1]])
    block = re.search(r"```json\n(.*?)```", text, re.S)
    assert block is not None
    shown = json.loads(block.group(1).replace('"...": 0.0, ', ""))
    assert (faces["model"], faces["detector"], faces["image"]) == \
        (shown["model"], shown["detector"], shown["image"])
    face, claim = faces["faces"][0], shown["faces"][0]
    assert face["box"] == claim["box"] and face["expression"] == claim["expression"]
    assert face["probabilities"]["happy"] == pytest.approx(claim["probabilities"]["happy"],
                                                           abs=0.005)


def python_block(text: str, heading: str) -> str:
    """The first ```python block of the section under ``heading``."""
    section = text.split(f"\n{heading}\n", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, heading
    return block.group(1)


def test_grpc_example_runs_as_written(server: str, grpc_port: int, root: Path,
                                      env: dict[str, str]) -> None:
    code = python_block(README.read_text(), "## gRPC")
    assert "localhost:8001" in code
    done = subprocess.run([sys.executable, "-c", code.replace("localhost:8001",
                                                              f"127.0.0.1:{grpc_port}")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    best = re.search(r"b'([\d.]+):(\d+):([^']+)'", done.stdout)
    assert best is not None, done.stdout
    assert best.group(3) in {"tabby", "tiger cat", "Egyptian cat"}, done.stdout


def _top1(client: httpx.Client, model: str, photo: str) -> tuple[str, float]:
    data = fetch(photo).read_bytes()
    answer = client.post(f"/v1/models/{model}/classify", files={"file": (photo, data)}).json()
    best = answer["results"][0]["predictions"][0]
    return best["label"], best["score"]


def test_photo_figures_are_the_services_answers(server: str) -> None:
    text = " ".join(README.read_text().split())
    with httpx.Client(base_url=f"http://{server}", timeout=60) as client:
        answers: Callable[[str], list[tuple[str, float]]] = lambda model: [  # noqa: E731
            _top1(client, model, photo) for photo in ("chelsea", "coffee", "squirrel")]
        (cat, s1), (cup, s2), (squirrel, s3) = answers("imagenet-mobilenetv2")
        assert (f"MobileNetV2 calls scikit-image's `chelsea` an {cat} ({s1:.2f}), `coffee` "
                f"{cup} ({s2:.2f}), OpenCV's squirrel a {squirrel} ({s3:.2f})") in text
        (cat, s1), (cup, s2), (squirrel, s3) = answers("imagenet-efficientnet-lite0")
        assert (f"EfficientNet-Lite0 says {cat} ({s1:.2f}), {cup} ({s2:.2f}), {squirrel} "
                f"({s3:.2f})") in text
    meta = json.loads((SHIPPED_MODELS / "imagenet-efficientnet-lite0" / "1" / "model.json")
                      .read_text())
    exported = meta["sanity"]["photos"]["squirrel"]["top3"][0][1]
    assert f"gave the squirrel {exported:.2f} with EfficientNet-Lite0" in text


def quick_training_lines(text: str) -> list[str]:
    """The ``python -m training`` lines of the block after the README's "Quick runs"."""
    section = text.split("**Quick runs.**", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    return [line.strip() for line in block.group(1).splitlines()
            if line.startswith("python -m training")]


def test_quick_training_examples_run_as_written(tmp_path: Path, env: dict[str, str]) -> None:
    lines = quick_training_lines(README.read_text())
    assert len(lines) >= 5 and any("--init-from" in line for line in lines)
    errors: dict[str, str] = {}  # stderr by the line's subcommand and first argument
    for line in lines:  # in a scratch directory: runs/ is created there
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path,
                              env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=600, check=False)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-3000:])
        errors[" ".join(line.split()[3:5])] = done.stderr
    runs = tmp_path / "runs"
    meta = json.loads((runs / "models" / "mnist-lenet5" / "2" / "model.json").read_text())
    assert meta["metrics"]["measured"]["images"] == 500
    assert load_checkpoint(runs / "quick-more")["init_from"] == {"checkpoint": "runs/quick",
                                                                  "epoch": 1}
    assert "new 1-epoch schedule from the weights" in errors["train --init-from"]
    # Fashion-MNIST has no validation split: the per-epoch numbers are the test split's.
    row = json.loads((runs / "quick-finetune" / "log.jsonl").read_text())
    assert "test_top1" in row and "val_top1" not in row and set(row["lr"]) == {"head",
                                                                              "backbone"}
    assert "no validation split" in errors["finetune --config"]
