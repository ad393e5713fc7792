"""Every rendered object validates: core kinds against the Kubernetes schemas, CRDs by structure."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest

from tests.k8s.manifests import K8S, KUSTOMIZATIONS, ROOT, Resource, by_kind, one, render

# The oldest Kubernetes the manifests promise to work on, and the newest schema available.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
}


def _core_resources() -> list[tuple[str, Resource]]:
    found = []
    for directory in KUSTOMIZATIONS:
        for resource in render(directory):
            if (resource["apiVersion"], resource["kind"]) not in CUSTOM_KINDS:
                found.append((directory, resource))
    return found


def _id(item: tuple[str, Resource]) -> str:
    directory, resource = item
    return f"{directory}:{resource['kind']}/{resource['metadata']['name']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", _core_resources(), ids=_id)
def test_core_objects_validate_strictly(item: tuple[str, Resource], version: str) -> None:
    kubernetes_validate.validate(item[1], version, strict=True)


def test_every_rendered_kind_is_checked_somewhere() -> None:
    kinds = {(res["apiVersion"], res["kind"]) for d in KUSTOMIZATIONS for res in render(d)}
    assert CUSTOM_KINDS <= kinds
    validated = {(res["apiVersion"], res["kind"]) for _, res in _core_resources()}
    assert kinds == validated | CUSTOM_KINDS


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = one(render("overlays/gpu"), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def _as_pod(spec: dict[str, Any]) -> Resource:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kserve_pod_fields_validate_as_core_types(version: str) -> None:
    # A ServingRuntime's containers and an InferenceService predictor's scheduling fields are
    # core types, so the core schema checks them even though the wrappers are CRDs.
    kserve = render("kserve")
    runtime = one(kserve, "ServingRuntime")
    kubernetes_validate.validate(
        _as_pod({"containers": runtime["spec"]["containers"]}), version, strict=True
    )
    predictor = one(kserve, "InferenceService")["spec"]["predictor"]
    model = predictor["model"]
    container = {"name": "kserve-container", "resources": model["resources"]}
    pod_fields = {k: predictor[k] for k in ("nodeSelector", "tolerations")}
    pod_spec = {
        "containers": [container],
        "terminationGracePeriodSeconds": predictor["terminationGracePeriodSeconds"],
        **pod_fields,
    }
    kubernetes_validate.validate(_as_pod(pod_spec), version, strict=True)


SERVICE_MONITOR_ENDPOINT_FIELDS = {"port", "path", "scheme", "interval", "scrapeTimeout"}


@pytest.mark.parametrize("overlay", ("overlays/gpu", "overlays/mig", "overlays/cpu"))
def test_service_monitor_scrapes_the_metrics_port_of_the_service(overlay: str) -> None:
    resources = render(overlay)
    monitor = one(resources, "ServiceMonitor")
    service = one(resources, "Service")
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT_FIELDS
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # Prometheus durations: the timeout must fit in the interval.
    interval = int(endpoint["interval"].removesuffix("s"))
    timeout = int(endpoint["scrapeTimeout"].removesuffix("s"))
    assert 0 < timeout <= interval


def test_serving_runtime_structure() -> None:
    runtime = one(render("kserve"), "ServingRuntime")
    spec = runtime["spec"]
    assert set(spec) == {
        "annotations",
        "supportedModelFormats",
        "protocolVersions",
        "multiModel",
        "containers",
    }
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    formats = {fmt["name"] for fmt in spec["supportedModelFormats"]}
    assert formats == {"onnx", "python", "pytorch"}
    for fmt in spec["supportedModelFormats"]:
        assert set(fmt) <= {"name", "version", "autoSelect", "priority"}
        assert isinstance(fmt["version"], str) and isinstance(fmt["autoSelect"], bool)
    (container,) = spec["containers"]
    # KServe finds the model server by this container name.
    assert container["name"] == "kserve-container"
    assert spec["annotations"]["prometheus.kserve.io/port"] in {
        arg.split("=", 1)[1] for arg in container["args"] if arg.startswith("--metrics-port=")
    }


def test_inference_service_uses_the_runtime() -> None:
    kserve = render("kserve")
    runtime = one(kserve, "ServingRuntime")
    service = one(kserve, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert set(model) <= {"runtime", "modelFormat", "protocolVersion", "storageUri", "resources"}
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].split("://", 1)[0] in {"pvc", "s3", "gs", "https", "hdfs"}
    claim = model["storageUri"].removeprefix("pvc://").split("/", 1)[0]
    base_claims = {
        res["metadata"]["name"] for res in by_kind(render("overlays/gpu"), "PersistentVolumeClaim")
    }
    assert claim in base_claims


def test_yamllint_passes_on_every_manifest() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(K8S / ".yamllint.yaml"), str(K8S)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_config_rejects_a_bad_file(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("---\nkey: yes\nkey: no\n")
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(K8S / ".yamllint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "truthy" in result.stdout and "key-duplicates" in result.stdout
