"""Rendering and validating ``deploy/kubernetes`` offline, for ``test_kubernetes``.

``kubectl kustomize`` renders; PyPI ``kubernetes-validate`` holds Kubernetes' own schemas; custom
resources go through ``k8s_crd_schemas``. Without a usable kubectl a test skips, or fails when
``CONVSERVE_REQUIRE_SYSTEM_TOOLS=1`` (CI).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from k8s_crd_schemas import embedded_pod, validate_custom

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests claim (the preStop `sleep` action is on by default from
# 1.30) and the newest kubernetes-validate has schemas for.
K8S_VERSIONS = ("1.30.0", "1.37.0")


@functools.cache
def _kubectl_problem() -> tuple[str, str]:
    """(kubectl's path, "") or ("", why it cannot render these kustomizations)."""
    path = shutil.which("kubectl")
    if not path:
        return "", "kubectl is not installed (Debian: apt-get install kubernetes-client)"
    version = subprocess.run([path, "version", "--client"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    found = re.search(r"Kustomize Version: v(\d+)\.(\d+)", version)
    # components and `patches` need kustomize 4.x; kubectl names its kustomize from 1.24 on
    # (Debian 12's kubernetes-client is 1.20, with kustomize 2.0.3).
    if not found or (int(found[1]), int(found[2])) < (4, 5):
        return "", f"{path} has no kustomize >= 4.5 (kubectl >= 1.24 needed):\n{version}"
    return path, ""


def kubectl() -> str:
    """kubectl's path; skip the test without a usable one, or fail where CI requires one."""
    path, problem = _kubectl_problem()
    if path:
        return path
    if os.environ.get("CONVSERVE_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(problem)
    pytest.skip(problem)


@functools.cache
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize directory`` renders (a fresh copy each call)."""
    return copy.deepcopy(list(_render(directory)))


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def overlay(tmp_path: Path, text: str) -> list[dict[str, Any]]:
    """Render a kustomization written in ``tmp_path``; ``{deploy}`` is deploy/kubernetes."""
    (tmp_path / "kustomization.yaml").write_text(
        text.format(deploy=os.path.relpath(DEPLOY, tmp_path)))
    return render(tmp_path)


def validate(obj: dict[str, Any]) -> None:
    """Kubernetes' schemas for core kinds; the hand-written ones (and the embedded core types
    as a Pod) for custom resources."""
    if obj["apiVersion"].split("/")[0].endswith((".kserve.io", ".coreos.com")):
        validate_custom(obj)
        pod = embedded_pod(obj)
        objects = [pod] if pod else []
    else:
        objects = [obj]
    for item in objects:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(item, version, strict=True)
