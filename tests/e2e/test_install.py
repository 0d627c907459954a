"""The README's install commands, run in fresh virtual environments on Python 3.11, 3.12, 3.13.

For each Python and each serving install (``serve``: onnxruntime-gpu with CUDA 13 and cuDNN 9 as
wheels; ``serve-cpu``: plain onnxruntime), a copy of the project is installed with exactly
``python3.X -m venv .venv && .venv/bin/pip install '.[EXTRA]'``, then ``.venv/bin/convserve
serve`` classifies a real photo. ``.[train]`` alone (no web framework in it) trains, exports,
quantizes a shipped model to int8 and rebuilds the face detector. The CUDA install must bring
every library its CUDA provider links but the driver's own ``libcuda.so.1``. Sizes and install
times are printed (``-s``).

Interpreters: ``python3.X`` on PATH, else pyenv's ``versions/3.X.*``. Where one is missing the
test skips, or fails under ``CONVSERVE_REQUIRE_SYSTEM_TOOLS=1`` (what ``.ci/run`` sets).
pip's own cache (``~/.cache/pip``) is shared by every venv, so a rerun downloads nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port, run_service

from training.assets import fetch

REPO = Path(__file__).resolve().parents[2]
PYTHONS = ("3.11", "3.12", "3.13")
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
README_INSTALL = "python3.11 -m venv .venv && .venv/bin/pip install '.[{extra}]'"


def require(found: object, why: str) -> None:
    """Skip with ``why`` when ``found`` is falsy; fail instead where CI requires system tools."""
    if found:
        return
    if os.environ.get("CONVSERVE_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(f"{why} (CONVSERVE_REQUIRE_SYSTEM_TOOLS=1)")
    pytest.skip(why)


def find_python(version: str) -> str | None:
    """An interpreter of ``version``: ``python3.X`` on PATH, else one of pyenv's."""
    candidates = [shutil.which(f"python{version}")]
    roots = [Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))]
    if shutil.which("pyenv"):
        found = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        roots.insert(0, Path(found.stdout.strip()))
    for root in roots:
        pattern = f"versions/{version}.*/bin/python{version}"
        candidates += [str(p) for p in sorted(root.glob(pattern))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; "
                                "print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def project_copy(root: Path) -> Path:
    """What a user has after cloning: the package sources and the shipped models the tests
    use (one to serve, one to quantize)."""
    project = root / "convserve"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    for name in ("service", "training", "model_format"):
        shutil.copytree(REPO / name, project / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("imagenet-mobilenetv2", "fashion-simple-cnn"):
        shutil.copytree(REPO / "models" / name, project / "models" / name)
    return project


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.fixture
def fresh_install(request: pytest.FixtureRequest, tmp_path: Path,
                  pytestconfig: pytest.Config) -> Iterator[Path]:
    """The README's install, ``(python, extra)`` from the test's parameters; yields .venv."""
    version, extra = request.param
    python = find_python(version)
    require(python, f"no Python {version} here (python{version} or pyenv versions/{version}.*)")
    project = project_copy(tmp_path)
    command = README_INSTALL.replace("python3.11", str(python)).format(extra=extra)
    started = time.perf_counter()
    result = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True,
                            text=True, timeout=900)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    venv = project / ".venv"
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        sys.stdout.write(f"\n[install] Python {version} .[{extra}]: {du(venv) / 1e6:.0f} MB in "
                         f"{seconds:.0f} s\n")  # a figure for the CI log, past the capture
    try:
        yield venv
    finally:
        shutil.rmtree(venv)  # GBs each: not kept in pytest's tmp dirs


def _probe(venv: Path, code: str) -> dict:
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                            text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _classify(venv: Path) -> str:
    """The README's serve command in the project copy; returns the top label for chelsea."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSERVE_")}
    env.update(CONVSERVE_PORT=str(port), HOME=str(venv.parent))
    with run_service([str(venv / "bin" / "convserve"), "serve", "--models", "models"], url, env,
                     cwd=venv.parent, timeout=180) as process:
        response = httpx.post(f"{url}/v1/models/imagenet-mobilenetv2/classify",
                              files={"file": ("chelsea.png", fetch("chelsea").read_bytes())},
                              timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["predictions"][0]["label"] in CATS
        provider = httpx.get(f"{url}/v1/models/imagenet-mobilenetv2").json()
    process.wait(30)
    log = process.communicate()[0]
    assert "WARNING" not in log, log  # no driver here: one INFO line, never a warning
    return json.dumps(provider)


PROBE = """
import importlib.util, json
import onnxruntime as ort
from service import runtime
runtime.preload_cuda_libraries()
print(json.dumps({"torch": importlib.util.find_spec("torch") is not None,
                  "cv2": importlib.util.find_spec("cv2") is not None,
                  "providers": ort.get_available_providers(),
                  "cuda_error": runtime.provider_load_error("CUDAExecutionProvider")}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("fresh_install", [(v, "serve") for v in PYTHONS], indirect=True,
                         ids=PYTHONS)
def test_serve_install_brings_cuda_as_wheels_and_classifies(fresh_install: Path) -> None:
    """``.[serve]``: every library the CUDA provider links resolves from the venv except the
    driver's libcuda.so.1 (no system CUDA or cuDNN), and without a driver it runs on the CPU."""
    found = _probe(fresh_install, PROBE)
    assert not found["torch"] and not found["cv2"]
    assert "CUDAExecutionProvider" in found["providers"]
    if found["cuda_error"] is not None:  # None: a driver here, CUDA loads
        assert found["cuda_error"].startswith("libcuda.so.1: cannot open shared object file")
    site = next(fresh_install.glob("lib/python3.*/site-packages"))
    library = site / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so"
    wheel_libs = ":".join(str(d) for d in sorted(site.glob("nvidia/*/lib")))
    ldd = subprocess.run(["ldd", str(library)], capture_output=True, text=True,
                         env={"LD_LIBRARY_PATH": wheel_libs}, check=True).stdout
    unresolved = [line.split()[0] for line in ldd.splitlines() if "not found" in line]
    assert unresolved in ([], ["libcuda.so.1"]), ldd
    assert {"libcublasLt.so.13", "libcudart.so.13"} <= {p.name for p in site.glob("nvidia/*/lib/*")}
    assert any(site.glob("nvidia/cudnn/lib/libcudnn.so.9"))
    _classify(fresh_install)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("fresh_install", [(v, "serve-cpu") for v in PYTHONS], indirect=True,
                         ids=PYTHONS)
def test_serve_cpu_install_is_small_and_classifies(fresh_install: Path) -> None:
    """``.[serve-cpu]``: plain onnxruntime, no nvidia-* wheels, a few hundred MB."""
    found = _probe(fresh_install, PROBE)
    assert not found["torch"] and not found["cv2"]
    assert found["providers"] == ["AzureExecutionProvider", "CPUExecutionProvider"] or (
        "CUDAExecutionProvider" not in found["providers"])
    site = next(fresh_install.glob("lib/python3.*/site-packages"))
    assert not (site / "nvidia").exists()
    assert du(fresh_install) < 500e6
    _classify(fresh_install)


def test_the_readme_gives_these_commands() -> None:
    readme = (REPO / "README.md").read_text()
    for extra in ("serve", "serve-cpu"):
        assert README_INSTALL.format(extra=extra) in readme, extra
    assert sys.version_info[:2] >= (3, 11)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("fresh_install", [(v, "train") for v in PYTHONS[1:]], indirect=True,
                         ids=PYTHONS[1:])
def test_train_install_trains_exports_quantizes_and_ships(fresh_install: Path,
                                                          tmp_path: Path) -> None:
    """``.[train]`` on the newer Pythons (3.11 is CI's own venv and the train image): torch
    2.14.1 ships wheels for both. No web framework is installed, and with none: one short real
    training and its export, the int8 quantization of a shipped model, and the face detector
    rebuilt (``training/`` imports only the model format and the framework-free core)."""
    project, cli = fresh_install.parent, str(fresh_install / "bin" / "convserve-train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    found = _probe(fresh_install, "import importlib.util, json; print(json.dumps(sorted("
                   "m for m in ('fastapi', 'starlette', 'uvicorn') "
                   "if importlib.util.find_spec(m))))")
    assert found == []
    train = subprocess.run(
        [cli, "train", "--config", "mnist-lenet5", "--set", "data.train_limit=1000",
         "--set", "data.eval_limit=300", "--set", "optim.epochs=1", "--set", "device=cpu",
         "--set", "output_dir=runs/short"], cwd=project, env=env, capture_output=True,
        text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert json.loads(train.stdout.strip().splitlines()[-1])["images"] == 300
    export = subprocess.run([cli, "export", "runs/short", "--name", "short-digits", "--version",
                             "1", "--models-dir", "models"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    meta = json.loads((project / "models" / "short-digits" / "1" / "model.json").read_text())
    assert meta["labels"] == [str(d) for d in range(10)]
    _quantize_and_ship(fresh_install, project, tmp_path / "models", env)


def _quantize_and_ship(venv: Path, project: Path, models: Path, env: dict[str, str]) -> None:
    """``python -m training export models/fashion-simple-cnn/1 --quantize int8`` and ``ship
    --only face-mtcnn``, both into ``models`` (outside the project's own ``models/``)."""
    python = str(venv / "bin" / "python")
    quantize = subprocess.run(
        [python, "-m", "training", "--log-level", "WARNING", "export",
         "models/fashion-simple-cnn/1", "--quantize", "int8", "--models-dir", str(models)],
        cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert quantize.returncode == 0, quantize.stderr[-3000:]
    assert quantize.stdout.strip() == str(models / "fashion-simple-cnn-int8" / "1")
    card = json.loads((models / "fashion-simple-cnn-int8" / "1" / "model.json").read_text())
    assert card["quantization"]["source"]["name"] == "fashion-simple-cnn"
    assert card["quantization"]["accuracy"]["top1_drop"] <= card["quantization"]["max_top1_drop"]
    ship = subprocess.run(
        [python, "-m", "training", "--log-level", "WARNING", "ship", "--only", "face-mtcnn",
         "--models-dir", str(models)], cwd=project, env=env, capture_output=True, text=True,
        timeout=900)
    assert ship.returncode == 0, ship.stderr[-3000:]
    assert ship.stdout.strip() == str(models / "face-mtcnn" / "1")
    detector = json.loads((models / "face-mtcnn" / "1" / "model.json").read_text())
    assert sorted(detector["onnx_sha256"]) == ["onet.onnx", "pnet.onnx", "rnet.onnx"]
    assert detector["provenance"]["exporter"] == "convserve.training.mtcnn"
    for name in ("fashion-simple-cnn-int8", "face-mtcnn"):  # only into --models-dir
        assert not (project / "models" / name).exists(), name
