"""Offline checks for the custom resources in ``deploy/kubernetes`` that Kubernetes' own schemas
(PyPI ``kubernetes-validate``) do not cover: KServe's ServingRuntime (``serving.kserve.io/
v1alpha1``) and InferenceService (``v1beta1``), and the Prometheus Operator's PodMonitor
(``monitoring.coreos.com/v1``).

What is checked, honestly: the schemas below are written by hand from those projects' Go API types
(KServe ``pkg/apis/serving/v1alpha1/servingruntime_types.go`` and ``v1beta1/predictor.go``,
``component.go``, ``model.go``; prometheus-operator ``monitoring/v1/podmonitor_types.go``), not
generated from the CRDs. They list the fields those types have at the levels our manifests use,
reject unknown fields there (a misspelt key fails) and check the enums KServe validates
(protocol versions, scale metric, storage URI schemes). The Kubernetes types embedded in them (a
runtime's containers, volumes and tolerations; a predictor's resources and env) are checked
against Kubernetes' real schemas by wrapping them in a Pod: see :func:`embedded_pod`.
"""

from __future__ import annotations

from typing import Any

import jsonschema

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": NAME, "namespace": NAME, "labels": STRING_MAP,
                           "annotations": STRING_MAP}}
ARRAY = {"type": "array"}
OBJECT = {"type": "object"}


def _resource(api_version: str, kinds: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": False,
            "properties": {"apiVersion": {"const": api_version}, "kind": {"enum": kinds},
                           "metadata": METADATA, "spec": spec}}


# ServingRuntimeSpec: SupportedModelFormats, MultiModel, Disabled, ProtocolVersions, WorkerSpec,
# ServingRuntimePodSpec (inline), GrpcEndpoint, GrpcDataEndpoint, HTTPDataEndpoint, Replicas,
# StorageHelper, BuiltInAdapter.
RUNTIME_KINDS = ["ServingRuntime", "ClusterServingRuntime"]
SERVING_RUNTIME = _resource("serving.kserve.io/v1alpha1", RUNTIME_KINDS, {
    "type": "object", "required": ["containers"], "additionalProperties": False,
    "properties": {
        "supportedModelFormats": {"type": "array", "items": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "minLength": 1},
                           "version": {"type": "string"}, "autoSelect": {"type": "boolean"},
                           "priority": {"type": "integer", "minimum": 1}}}},
        "protocolVersions": {"type": "array", "minItems": 1, "uniqueItems": True,
                             "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
        "multiModel": {"type": "boolean"}, "disabled": {"type": "boolean"},
        "containers": {"type": "array", "minItems": 1},
        "volumes": ARRAY, "nodeSelector": STRING_MAP, "affinity": OBJECT, "tolerations": ARRAY,
        "labels": STRING_MAP, "annotations": STRING_MAP, "imagePullSecrets": ARRAY,
        "schedulerName": {"type": "string"}, "hostIPC": {"type": "boolean"},
        "workerSpec": OBJECT, "grpcEndpoint": {"type": "string"},
        "grpcDataEndpoint": {"type": "string"}, "httpDataEndpoint": {"type": "string"},
        "replicas": {"type": "integer", "minimum": 0},
        "storageHelper": {"type": "object", "additionalProperties": False,
                          "properties": {"disabled": {"type": "boolean"}}},
        "builtInAdapter": OBJECT,
    }})

# The container fields a v1beta1 ModelSpec inlines (PredictorExtensionSpec embeds a Container).
CONTAINER_FIELDS = ["args", "command", "env", "envFrom", "image", "imagePullPolicy",
                    "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "ports",
                    "resources", "securityContext", "volumeMounts", "workingDir"]
MODEL = {
    "type": "object", "required": ["modelFormat"], "additionalProperties": False,
    "properties": {
        "modelFormat": {"type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": {"type": "string", "minLength": 1},
                                       "version": {"type": "string"}}},
        "runtime": NAME, "runtimeVersion": {"type": "string"},
        "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
        "storageUri": {"type": "string",
                       "pattern": r"^(gs|s3|pvc|https?|hdfs|webhdfs|oci|hf)://[^\s]+$"},
        "storage": OBJECT,
        **{field: {} for field in CONTAINER_FIELDS},
    }}
# PredictorSpec: the framework specs, Model, ComponentExtensionSpec and the PodSpec (inline); the
# pod fields listed are the ones a predictor is commonly given.
INFERENCE_SERVICE = _resource("serving.kserve.io/v1beta1", ["InferenceService"], {
    "type": "object", "required": ["predictor"], "additionalProperties": False,
    "properties": {"predictor": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "model": MODEL,
            "minReplicas": {"type": "integer", "minimum": 0},
            "maxReplicas": {"type": "integer", "minimum": 1},
            "scaleTarget": {"type": "integer", "minimum": 1},
            "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
            "containerConcurrency": {"type": "integer", "minimum": 0},
            "timeout": {"type": "integer", "minimum": 1},
            "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
            "deploymentStrategy": OBJECT, "logger": OBJECT, "batcher": OBJECT,
            "labels": STRING_MAP, "annotations": STRING_MAP,
            "serviceAccountName": NAME, "nodeSelector": STRING_MAP, "tolerations": ARRAY,
            "affinity": OBJECT, "volumes": ARRAY, "imagePullSecrets": ARRAY,
        }},
        "transformer": OBJECT, "explainer": OBJECT}})

# PodMonitorSpec (the fields used here) and PodMetricsEndpoint.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
POD_MONITOR = _resource("monitoring.coreos.com/v1", ["PodMonitor"], {
    "type": "object", "required": ["selector"], "additionalProperties": False,
    "properties": {
        "selector": {"type": "object", "additionalProperties": False,
                     "properties": {"matchLabels": STRING_MAP, "matchExpressions": ARRAY}},
        "namespaceSelector": OBJECT, "jobLabel": {"type": "string"},
        "podTargetLabels": ARRAY,
        "podMetricsEndpoints": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "properties": {"port": {"type": "string"}, "portNumber": {"type": "integer"},
                           "path": {"type": "string", "pattern": "^/"},
                           "scheme": {"enum": ["http", "https"]}, "interval": DURATION,
                           "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                           "relabelings": ARRAY, "metricRelabelings": ARRAY}}},
    }})

SCHEMAS = {("serving.kserve.io/v1alpha1", "ServingRuntime"): SERVING_RUNTIME,
           ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE,
           ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR}


def validate_custom(obj: dict[str, Any]) -> None:
    """Validate a custom resource against its hand-written schema.

    Raises:
        KeyError: no schema for the object's apiVersion and kind.
        jsonschema.ValidationError: the object does not fit it.
    """
    jsonschema.validate(obj, SCHEMAS[obj["apiVersion"], obj["kind"]])


def embedded_pod(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The Kubernetes types a custom resource embeds, as a Pod to validate with Kubernetes'
    schemas; None for a resource that embeds none."""
    spec = obj["spec"]
    if obj["kind"] == "ServingRuntime":
        pod = {key: spec[key] for key in ("containers", "volumes", "tolerations", "nodeSelector",
                                          "affinity", "imagePullSecrets") if key in spec}
    elif obj["kind"] == "InferenceService":
        model = spec["predictor"]["model"]
        container = {"name": "kserve-container", "image": "convserve",
                     **{key: model[key] for key in CONTAINER_FIELDS if key in model}}
        pod = {"containers": [container]}
    else:
        return None
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": obj["metadata"]["name"]},
            "spec": pod}
