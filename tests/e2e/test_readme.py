"""The README's and the guides' (``docs/*.md``) examples, run as written.

Every ```` ```bash ```` block line is run: ``curl``, ``convserve predict``, ``echo`` and
``python -c`` lines against one real server (started with the serve line of
``docs/serving.md``, on a free port), ``python -m training`` lines in a scratch directory of
their own per page; ```` ```python ```` blocks followed by the output they print against the
same server (other Python blocks are excerpts of the code, not commands). Where a block is followed
at once by a ```` ```json ```` or plain ```` ``` ```` block, that block is the answer the command
gives: JSON is compared field by field (``"..."`` marks what is left out, numbers to the digits
shown), text exactly; a quoted ``error:`` is the command's refusal (exit status 2, stderr).

Commands that need what a test machine lacks (a Docker engine, a cluster, a fresh environment,
hours) are ```` ```console ```` blocks of ``$ `` lines, and only such commands may be:
:data:`CONSOLE_ONLY` names each kind and the test that covers it instead.

The server's commands run in a scratch directory that looks like the repository root
(``samples/``, and a ``models/`` whose version directories link to the shipped ones), with the
test's virtual environment first on ``PATH`` as ``source .venv/bin/activate`` would put it, so
that an example that writes a file (``-o labelled.png``, ``echo 2 > models/...``) changes nothing
here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO_ROOT, SHIPPED_MODELS, free_port, run_service

from training.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
DOCS = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
SERVING = REPO_ROOT / "docs" / "serving.md"
PORT = ":8000"
GRPC_PORT = ":8001"
SERVER_WORDS = ("curl", "convserve predict", "echo", "python -c")
TRAINING_WORDS = ("python -m training",)
SERVE_WORDS = ("convserve serve",)  # the fixture's own command
# ```console lines: what each needs, and what tests it instead.
CONSOLE_ONLY = {
    "docker": "a Docker engine; tests/e2e/test_container.py builds and runs the images",
    "kubectl": "a cluster; tests/e2e/test_kubernetes.py renders and validates the manifests",
    "KEY=$(kubectl": "a cluster (as above)",
    "pip install": "a fresh environment; tests/e2e/test_install.py",
    "python -m pytest": "the test suite itself",
    "CONVSERVE_REQUIRE_SYSTEM_TOOLS=1 python -m pytest": "the test suite itself",
    "python -m training.cam": "rewrites shipped models; tests/integration/test_explain.py",
    "python -m training ship": "rebuilds shipped models; tests/integration/test_ship.py",
    "python -m training export models/": "writes into models/; tests/integration/test_quantize.py",
    "python -m training export runs/mnist-lenet5 --quantize": "a full run first; test_quantize.py",
    "python scripts/": "benchmarks: minutes of measurement, figures in docs/performance.md",
    "python -m service.grpc.generate": "rewrites committed code; tests/unit/test_grpc_stubs.py",
    "OTEL_EXPORTER_OTLP_ENDPOINT=": "an OTLP collector; tests/integration/test_tracing.py",
    "curl": "only beside docker or kubectl: the service they started",
}


@dataclass
class Block:
    """One fenced block of a page, and the block right after it (its quoted answer), if any."""

    page: Path
    lang: str
    text: str
    answer: tuple[str, str] | None = None  # (lang, text) of a block that follows at once

    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.splitlines()
                if line.strip() and not line.strip().startswith("#")]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, each with the block that follows it at once."""
    text = page.read_text()
    found = [(m.start(), m.end(), m.group(1), m.group(2))
             for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]
    result = []
    for i, (_, end, lang, body) in enumerate(found):
        block = Block(page, lang, body)
        if i + 1 < len(found) and not text[end:found[i + 1][0]].strip():
            block.answer = (found[i + 1][2], found[i + 1][3])
        result.append(block)
    return result


ALL = [block for page in DOCS for block in blocks(page)]


def test_every_command_block_is_run_or_says_what_it_needs() -> None:
    for block in ALL:
        if block.lang == "bash":
            for line in block.lines():
                assert line.startswith((*SERVER_WORDS, *TRAINING_WORDS, *SERVE_WORDS)), (
                    f"{block.page.name}: no test runs {line!r}: make it runnable, or a "
                    "```console line of a kind CONSOLE_ONLY lists")
        elif block.lang == "console":
            commands = [line[2:] for line in block.text.splitlines() if line.startswith("$ ")]
            assert commands, f"{block.page.name}: a console block without '$ ' lines"
            for command in commands:
                kind = next((k for k in sorted(CONSOLE_ONLY, key=len, reverse=True)
                             if command.startswith(k)), None)
                assert kind is not None, f"{block.page.name}: {command!r} could run in a test"
                if kind == "curl":
                    assert any(c.startswith(("docker", "kubectl")) for c in commands), command


def serve_line() -> str:
    return next(line.split("#")[0].strip() for block in blocks(SERVING) if block.lang == "bash"
                for line in block.lines() if line.startswith(SERVE_WORDS))


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
            if entry.is_dir() and entry.name == "1":
                (root / "models" / model.name / entry.name).symlink_to(entry, True)
            elif entry.name == "default_version":
                (root / "models" / model.name / entry.name).write_text("1\n")
    # "a retrained version 2" for the default-version example: a copy of version 1
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
    command = serve_line().replace(f"--port {PORT[1:]}", f"--port {port}")
    command += f" --grpc-port {grpc_port}"  # 8001 may be taken on a test machine
    with run_service(["bash", "-c", f"exec {command}"], f"http://127.0.0.1:{port}", env,
                     cwd=root, timeout=300):
        yield f"localhost:{port}"


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def matches(quoted: Any, actual: Any, where: str = "$") -> None:
    """``actual`` holds what ``quoted`` shows: dict keys (but ``"..."``), list items up to a
    ``"..."`` item, numbers to the digits shown, everything else exactly."""
    if isinstance(quoted, dict):
        assert isinstance(actual, dict), (where, actual)
        for key, value in quoted.items():
            if key != "...":
                assert key in actual, (where, key, actual)
                matches(value, actual[key], f"{where}.{key}")
    elif isinstance(quoted, list):
        assert isinstance(actual, list), (where, actual)
        shown = quoted[:quoted.index("...")] if "..." in quoted else quoted
        if "..." not in quoted:
            assert len(actual) == len(quoted), (where, actual)
        for i, value in enumerate(shown):
            matches(value, actual[i], f"{where}[{i}]")
    elif isinstance(quoted, float):
        digits = len(repr(quoted).split(".")[1])
        assert actual == pytest.approx(quoted, abs=0.6 * 10 ** -digits), (where, actual)
    else:
        assert actual == quoted, (where, actual)


def _check_answer(block: Block, line: str, stdout: str) -> None:
    assert block.answer is not None
    lang, quoted = block.answer
    if lang == "json":
        matches(json.loads(quoted), json.loads(stdout), f"{block.page.name}: {line}")
    else:
        assert stdout.strip() == quoted.strip(), (block.page.name, line, stdout)


def test_every_server_example_runs_and_gives_the_answer_shown(
        server: str, grpc_port: int, root: Path, env: dict[str, str]) -> None:
    ran, checked = [], 0
    for block in ALL:
        if block.lang == "python" and block.answer is not None:  # others are code excerpts
            code = block.text.replace("localhost" + PORT, server).replace(
                "localhost" + GRPC_PORT, f"localhost:{grpc_port}")
            done = _run([sys.executable, "-c", code], root, env)
            assert done.returncode == 0, (block.page.name, done.stderr[-2000:])
            _check_answer(block, "python block", done.stdout)
            checked += 1
            continue
        if block.lang != "bash":
            continue
        lines = [line for line in block.lines() if line.startswith(SERVER_WORDS)]
        for line in lines:
            done = _run(["bash", "-c", line.replace("localhost" + PORT, server)], root, env)
            assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
            assert '"error"' not in done.stdout, (line, done.stdout[-2000:])
            if line.startswith("convserve"):
                assert done.stderr == "", (line, done.stderr)  # no warnings, no noise
            ran.append((block.page, line))
            if block.answer is not None and len(lines) == 1:
                _check_answer(block, line, done.stdout)
                checked += 1
    readme = [line for page, line in ran if page == README]
    assert len(readme) >= 3 and any("samples/cat.jpg" in line for line in readme)
    assert len(ran) >= 15 and checked >= 6
    assert (root / "labelled.png").read_bytes()[:4] == b"\x89PNG"
    assert (root / "seen.png").read_bytes()[:4] == b"\x89PNG"
    # The default-version example made the "retrained" version 2 the default.
    models = httpx.get(f"http://{server}/v1/models/mnist-lenet5").json()
    assert models["default_version"] == 2 and models["pinned"] is True


def _training_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang == "bash"
            and any(line.startswith(TRAINING_WORDS) for line in b.lines())]


@pytest.mark.parametrize("page", [README, REPO_ROOT / "docs" / "training.md"],
                         ids=lambda p: p.name)
def test_training_examples_run_as_written(page: Path, tmp_path: Path,
                                          env: dict[str, str]) -> None:
    """Each page's training lines in order, in a scratch directory of their own (runs/ is made
    there); a line whose block is followed by an ``error:`` is refused with exactly that."""
    stderr: dict[str, str] = {}  # by the line's subcommand and first argument
    for block in _training_blocks(page):
        for line in block.lines():
            done = _run(["bash", "-c", line], tmp_path, {**env, "OMP_NUM_THREADS": "1"})
            if block.answer is not None and block.answer[1].startswith("error:"):
                assert done.returncode == 2, (line, done.stderr[-2000:])
                assert done.stderr.strip() == block.answer[1].strip()
                continue
            assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-3000:])
            stderr[" ".join(line.split()[3:5])] = done.stderr
    runs = tmp_path / "runs"
    meta = json.loads((runs / "models" / "mnist-lenet5" / "2" / "model.json").read_text())
    assert meta["name"] == "mnist-lenet5"
    if page == README:
        return
    assert meta["metrics"]["measured"]["images"] == 500
    assert load_checkpoint(runs / "quick-more")["init_from"] == {"checkpoint": "runs/quick",
                                                                  "epoch": 1}
    assert "new 1-epoch schedule from the weights" in stderr["train --init-from"]
    # Fashion-MNIST has no validation split: the per-epoch numbers are the test split's.
    row = json.loads((runs / "quick-finetune" / "log.jsonl").read_text())
    assert "test_top1" in row and "val_top1" not in row and set(row["lr"]) == {"head",
                                                                              "backbone"}
    assert "no validation split" in stderr["finetune --config"]
    assert not (runs / "mnist-lenet5").exists()  # the refused alexnet config wrote nothing


def test_the_readme_reads_in_five_minutes() -> None:
    text = README.read_text()
    assert 150 <= len(text.splitlines()) <= 250
    for guide in re.findall(r"\]\((docs/[\w.-]+\.md)", text):
        assert (REPO_ROOT / guide).is_file(), guide
    for page in DOCS:  # links between the guides resolve
        for target in re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]+)?\)", page.read_text()):
            assert (page.parent / target).is_file(), (page.name, target)


def test_the_pages_describe_the_software_not_how_it_was_made() -> None:
    words = re.compile(r"\b(this session|other sessions|sessions? kept|lent (?:for|to)|"
                       r"was lent|agents?)\b", re.I)
    for page in DOCS:
        found = words.findall(page.read_text())
        assert not found, (page.name, found)
