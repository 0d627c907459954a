"""The Kubernetes manifests (``deploy/kubernetes``), rendered and checked offline.

* ``kubectl kustomize`` renders the base, the CPU and GPU overlays, the Prometheus Operator
  component and the KServe files; every object validates against Kubernetes' schemas (PyPI
  ``kubernetes-validate``, strict: unknown fields fail) for the oldest and newest Kubernetes we
  claim, and KServe's and the Prometheus Operator's resources against ``k8s_crd_schemas``;
* what the manifests name is what the app has, read from the app: probe and scrape paths are
  routes of ``create_app`` and behave as their probe needs (liveness 200 while models load,
  readiness 503 until they are ready, none behind the API key); ports match ``CONVSERVE_PORT``;
  every ``CONVSERVE_*`` variable is a ``Settings`` field and its value passes ``Settings``; the
  HPA's custom metric is one the app exports; the pod runs as the Dockerfile's user and mounts the
  models where ``CONVSERVE_MODELS_DIR`` says, copied from where the image keeps them;
* the shutdown budget covers the preStop pause and ``CONVSERVE_GRACEFUL_SHUTDOWN_S``.

Without kubectl the tests skip, or fail when ``CONVSERVE_REQUIRE_SYSTEM_TOOLS=1`` (CI).
"""

from __future__ import annotations

import copy
import math
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from k8s_tools import DEPLOY, only, overlay, render, validate

from service.http.app import create_app
from service.metrics import Metrics
from service.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = ("base", "overlays/cpu", "overlays/gpu")
PREFIX = str(Settings.model_config["env_prefix"])
KSERVE_MODELS_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri's files
KSERVE_HTTP_PORT = 8080  # where KServe sends HTTP when the runtime declares no port


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container.get("env", [])}


def settings_from(container: dict[str, Any], models_dir: Path) -> Settings:
    """``Settings`` from the container's ``CONVSERVE_*`` variables, as the app would read them
    (``CONVSERVE_CPUS`` resolved from the CPU request; the API key and models_dir replaced)."""
    values: dict[str, Any] = {}
    for name, var in env_of(container).items():
        assert name.startswith(PREFIX), f"{name}: not a convserve setting"
        field = name.removeprefix(PREFIX).lower()
        assert field in Settings.model_fields, f"{name} is not a setting the service has"
        if "value" in var:
            values[field] = var["value"]
        elif "resourceFieldRef" in var:
            ref = var["resourceFieldRef"]
            assert ref["containerName"] == container["name"] and ref["resource"] == "requests.cpu"
            values[field] = math.ceil(cpu_cores(container["resources"]["requests"]["cpu"]))
    return load_settings(**{**values, "models_dir": models_dir, "api_key": None})


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def app_paths(method: str = "get") -> set[str]:
    """The paths the app answers ``method`` on (from its OpenAPI document: FastAPI's routes
    nest included routers)."""
    app = create_app(Settings(models_dir=REPO / "models", providers="CPU"))
    return {path for path, operations in app.openapi()["paths"].items() if method in operations}


def dockerfile_serve_stage() -> tuple[str, dict[str, str]]:
    """(USER, ENV) of the Dockerfile's ``serve`` stage."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stage = re.split(r"(?m)^FROM ", text)
    serve = next(part for part in stage if re.match(r"\S+ AS serve\b", part, re.IGNORECASE))
    user = re.findall(r"(?m)^USER\s+(\S+)", serve)[-1]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"(?m)^ENV\s+(.*)$", serve))))
    return user, env


@pytest.mark.parametrize("variant", [*WORKLOADS, "kserve", "kserve-grpc"])
def test_every_object_validates_offline(variant: str) -> None:
    objects = render(DEPLOY / variant)
    assert objects
    for obj in objects:
        validate(obj)
    broken = copy.deepcopy(objects[-1])  # the validation is not vacuous
    broken["spec"]["replicasTypo"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_the_prometheus_operator_component_and_a_retargeted_image(tmp_path: Path) -> None:
    objects = overlay(tmp_path, "resources: [{deploy}/overlays/gpu]\n"
                      "components: [{deploy}/components/prometheus-operator]\n"
                      "images: [{{name: convserve, newName: registry.example.com/convserve, "
                      "newTag: '1.2.3'}}]\n")
    for obj in objects:
        validate(obj)
    monitor, pod = only(objects, "PodMonitor"), only(objects, "Deployment")["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    assert {e["path"] for e in monitor["spec"]["podMetricsEndpoints"]} <= app_paths()
    images = {c["image"] for c in pod["spec"]["containers"] + pod["spec"]["initContainers"]}
    assert images == {"registry.example.com/convserve:1.2.3"}


@pytest.mark.parametrize("variant", WORKLOADS)
def test_the_deployment_names_what_the_app_has(variant: str, tmp_path: Path) -> None:
    objects = render(DEPLOY / variant)
    deployment, service = only(objects, "Deployment"), only(objects, "Service")
    pod = deployment["spec"]["template"]
    (server,) = pod["spec"]["containers"]
    settings = settings_from(server, tmp_path)
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}
    paths = app_paths()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["port"] == "http"
        assert server[probe]["httpGet"]["path"] in paths, probe
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.port
    assert annotations["prometheus.io/path"] in paths
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http", "grpc"]
    grpc_port = service["spec"]["ports"][1]
    assert grpc_port["name"] == "grpc" and grpc_port["appProtocol"] == "kubernetes.io/h2c"
    key = env_of(server)[f"{PREFIX}API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["name"] and key["key"] and not key.get("optional")  # no key, no start


@pytest.mark.parametrize("variant", WORKLOADS)
def test_the_models_volume_and_the_pod_security(variant: str) -> None:
    pod = only(render(DEPLOY / variant), "Deployment")["spec"]["template"]["spec"]
    (server,), (init,) = pod["containers"], pod["initContainers"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    models = mounts[env_of(server)[f"{PREFIX}MODELS_DIR"]["value"]]
    assert models["readOnly"] is True
    user, image_env = dockerfile_serve_stage()
    (init_mount,) = [m for m in init["volumeMounts"] if m["name"] == models["name"]]
    source, target = init["command"][-2:]
    assert source.rstrip("/.") == image_env[f"{PREFIX}MODELS_DIR"]
    assert target.rstrip("/") == init_mount["mountPath"]
    volume = next(v for v in pod["volumes"] if v["name"] == models["name"])
    assert "emptyDir" in volume
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
    assert pod["automountServiceAccountToken"] is False
    for container in (server, init):
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]


@pytest.mark.parametrize("variant", WORKLOADS)
def test_scaling_disruption_and_shutdown(variant: str, tmp_path: Path) -> None:
    objects = render(DEPLOY / variant)
    deployment = only(objects, "Deployment")
    hpa, pdb = only(objects, "HorizontalPodAutoscaler"), only(objects, "PodDisruptionBudget")
    pod = deployment["spec"]["template"]
    (server,) = pod["spec"]["containers"]
    labels = pod["metadata"]["labels"].items()
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    for selector in (deployment["spec"]["selector"], pdb["spec"]["selector"]):
        assert selector["matchLabels"].items() <= labels
    assert only(objects, "Service")["spec"]["selector"].items() <= labels
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    settings = settings_from(server, tmp_path)
    exported = {metric.name for metric in Metrics().registry.collect()}
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":  # utilisation is relative to the request
            assert metric["resource"]["name"] in server["resources"]["requests"]
        else:
            assert metric["pods"]["metric"]["name"] in exported
            assert float(metric["pods"]["target"]["averageValue"]) < settings.max_queue_size
    # SIGTERM comes after preStop; then uvicorn waits graceful_shutdown_s for requests, then the
    # batcher runs what is queued: leave it 5 s at least before the kubelet's SIGKILL.
    pause = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pause + settings.graceful_shutdown_s + 5
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_the_overlays_pick_their_devices(tmp_path: Path) -> None:
    cpu, gpu = (only(render(DEPLOY / v), "Deployment")["spec"]["template"]["spec"]
                for v in ("overlays/cpu", "overlays/gpu"))
    assert settings_from(cpu["containers"][0], tmp_path).providers == ["CPUExecutionProvider"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert settings_from(gpu["containers"][0], tmp_path).providers[0] == "CUDAExecutionProvider"
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    # int8 helps on CPUs only: the GPU overlay leaves those models out, the CPU one loads all.
    assert settings_from(gpu["containers"][0], tmp_path).models == ["*", "-*-int8"]
    assert settings_from(cpu["containers"][0], tmp_path).models == []


def test_kserve_runs_convserve_as_a_v2_runtime(tmp_path: Path) -> None:
    objects = render(DEPLOY / "kserve")
    runtime, isvc = only(objects, "ServingRuntime"), only(objects, "InferenceService")
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [{k: f[k] for k in ("name", "version")}
                                    for f in runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] == "v2"
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    assert "/v2/models/{name}/infer" in app_paths("post")  # the protocol's inference route
    settings = settings_from(container, tmp_path)
    assert env_of(container)[f"{PREFIX}MODELS_DIR"]["value"] == KSERVE_MODELS_DIR
    user, _ = dockerfile_serve_stage()
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == user.split(":")[0]
    assert "ports" not in container and settings.port == KSERVE_HTTP_PORT
    assert int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"]) == settings.port
    paths = app_paths()
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/path"] in paths
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == settings.port
        assert container[probe]["httpGet"]["path"] in paths


def test_kserve_grpc_variant_names_the_runtimes_grpc_port(tmp_path: Path) -> None:
    objects = render(DEPLOY / "kserve-grpc")
    runtime, isvc = only(objects, "ServingRuntime"), only(objects, "InferenceService")
    settings = settings_from(runtime["spec"]["containers"][0], tmp_path)
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2" in runtime["spec"]["protocolVersions"]
    # Knative takes the port named h2c as HTTP/2 cleartext: gRPC
    assert model["ports"] == [{"name": "h2c", "containerPort": settings.grpc_port,
                               "protocol": "TCP"}]
    assert settings.grpc_port not in (0, settings.port)


def probe_paths() -> dict[str, set[str]]:
    """Every liveness, readiness/startup and scrape path the manifests name, by what it needs."""
    paths: dict[str, set[str]] = {"live": set(), "ready": set(), "open": set()}
    containers = [c for v in WORKLOADS for c in
                  only(render(DEPLOY / v), "Deployment")["spec"]["template"]["spec"]["containers"]]
    runtime = only(render(DEPLOY / "kserve"), "ServingRuntime")
    containers += runtime["spec"]["containers"]
    for container in containers:
        paths["live"].add(container["livenessProbe"]["httpGet"]["path"])
        for probe in ("readinessProbe", "startupProbe"):
            if probe in container:
                paths["ready"].add(container[probe]["httpGet"]["path"])
    pod = only(render(DEPLOY / "base"), "Deployment")["spec"]["template"]
    paths["open"] = {pod["metadata"]["annotations"]["prometheus.io/path"],
                     runtime["spec"]["annotations"]["prometheus.kserve.io/path"]}
    return paths


def test_probes_behave_as_kubernetes_needs_and_skip_the_api_key(tmp_path: Path) -> None:
    (tmp_path / "mnist-lenet5").symlink_to(REPO / "models" / "mnist-lenet5")
    paths = probe_paths()
    app = create_app(Settings(models_dir=tmp_path, providers="CPU", api_key="k8s-test-key"))
    client = TestClient(app)  # no lifespan yet: the models have not loaded
    assert client.get("/v1/models").status_code == 401  # the key is on
    for path in paths["live"] | paths["open"]:
        assert client.get(path).status_code == 200, path
    for path in paths["ready"]:
        answer = client.get(path)
        assert answer.status_code == 503 and "loading" in answer.text, path
    with TestClient(app) as client:  # the lifespan loads the model in the background
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(client.get(path).status_code == 200 for path in paths["ready"]):
                break
            time.sleep(0.05)
        for path in paths["ready"] | paths["live"] | paths["open"]:
            assert client.get(path).status_code == 200, path
