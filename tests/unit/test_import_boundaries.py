"""The package boundaries, proven in fresh interpreters, and the import graph without cycles.

* Training (export, quantize, ship, the command line) and the model format import no web
  framework: a ``.[train]`` install has none (``tests/e2e/test_install.py`` runs it for real).
* Serving imports no torch: a ``.[serve]`` install has none.
* The framework-free core of the service (everything below ``service/http/`` that is not an
  adapter) imports no web framework either: FastAPI lives at the edge (docs/STYLE: the framework
  at the edge).
* ``convserve`` without the serving extras (a bare ``pip install .``) names them in one line.
* No module of ``service/``, ``model_format/`` or ``training/`` reaches itself through its
  imports, counting every import: top-level, inside functions and under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "model_format", "training")
WEB = ("fastapi", "starlette", "uvicorn")
TORCH = ("torch", "torchvision")

TRAINING = ["model_format", "training.export", "training.export_run", "training.quantize",
            "training.quantize_data", "training.quantize_eval", "training.ship",
            "training.ship_faces", "training.ship_imagenet", "training.cam", "training.cli"]
SERVING = ["model_format", "service.repository", "service.engine", "service.http.app"]
CORE = ["model_format", "service.errors", "service.imaging", "service.batching",
        "service.repository", "service.model_version", "service.faces", "service.detection",
        "service.settings", "service.pipeline", "service.engine"]


def present(modules: list[str]) -> list[str]:
    """``modules`` less those not written yet (``service.engine`` is new)."""
    return [m for m in modules if (REPO / (m.replace(".", "/") + ".py")).is_file()
            or (REPO / m.replace(".", "/") / "__init__.py").is_file()]


def loaded(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    """The top-level packages of ``forbidden`` that importing ``modules`` in a fresh
    interpreter loads."""
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({forbidden!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", present(TRAINING))
def test_training_imports_no_web_framework(module: str) -> None:
    assert loaded([module], WEB) == [], f"{module} imports a web framework"


def test_serving_imports_no_torch() -> None:
    """The schema is shared with training, but loading it, the repository, the engine and the
    HTTP application must not pull torch into the serving install."""
    assert loaded(present(SERVING), TORCH) == []


@pytest.mark.parametrize("module", present(CORE))
def test_the_core_imports_no_web_framework(module: str) -> None:
    assert loaded([module], WEB) == [], f"{module} imports a web framework"


def test_the_guard_sees_a_web_framework() -> None:
    """The probe itself: the HTTP adapter does import FastAPI."""
    assert loaded(["service.http.app"], WEB) != []


HIDDEN = """
import sys
sys.modules[{module!r}] = None  # a bare `pip install .`: the serving extras are not there
sys.argv[0] = "convserve"
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("module", "args"), [("fastapi", ["--help"]),
                                              ("uvicorn", ["serve", "--port", "1"]),
                                              ("onnxruntime", ["predict", "--help"])])
def test_convserve_without_the_serving_extras_names_them(module: str, args: list[str]) -> None:
    """``convserve`` without FastAPI (or the rest of ``serve``) says in one line which extra to
    install and exits 2, even for ``--help``; ``convserve-train`` does the same without torch."""
    result = subprocess.run([sys.executable, "-c", HIDDEN.format(module=module), *args],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"convserve: serving needs the 'serve' or 'serve-cpu' extra, which is not installed "
        f"here (no module {module!r}); install it with: pip install '.[serve]' (NVIDIA GPU or "
        "CPU: onnxruntime-gpu, CUDA as wheels) or pip install '.[serve-cpu]' (CPU only: plain "
        "onnxruntime)\n")


def test_convserve_with_the_serving_extras_answers_help() -> None:
    result = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: convserve"), result.stderr


# --- import cycles ------------------------------------------------------------------------

def module_files(root: Path = REPO) -> dict[str, Path]:
    """Every module of :data:`PACKAGES` under ``root``, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file: at the top, inside
    functions, under ``if TYPE_CHECKING:``. ``from package import name`` counts as importing
    ``package.name`` when that is a module, else ``package``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module c
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module
    (Tarjan's algorithm, then a path back to the component's first module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_back(graph, component) for component in components]


def _path_back(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first inside the component: the shortest way round
        node = queue.pop(0)
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle in {component}")  # pragma: no cover - SCCs have one


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_sees_function_local_and_type_checking_imports(tmp_path: Path) -> None:
    """A cycle closed only by a function-local import, and one closed only under
    ``if TYPE_CHECKING:``, are both named (so the test above can fail)."""
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "__init__.py").write_text("")
    (tmp_path / "service" / "a.py").write_text("from service import b\n")
    (tmp_path / "service" / "b.py").write_text("def f():\n    from service.a import x\n")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "__init__.py").write_text("")
    (tmp_path / "training" / "c.py").write_text("from . import d\n")
    (tmp_path / "training" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from training.c import C\n")
    (tmp_path / "model_format").mkdir()
    (tmp_path / "model_format" / "__init__.py").write_text("import json\n")
    assert sorted(cycles(import_graph(tmp_path))) == [
        ["service.a", "service.b", "service.a"], ["training.c", "training.d", "training.c"]]
