"""What the manifests promise: probes, shutdown budget, security, accelerators, autoscaling."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import (
    APP,
    K8S,
    OVERLAYS,
    PORT_FLAGS,
    Resource,
    container_port_numbers,
    flag_values,
    listener_for_port,
    one,
    probe_port,
    render,
    renderer,
    server_container,
)

GPU_RESOURCES = {"gpu": "nvidia.com/gpu", "mig": "nvidia.com/mig-1g.5gb"}
# The server's defaults for the shutdown flags, used where the manifest leaves them out.
DEFAULT_EXIT_GRACE_SECS = 5
DEFAULT_EXIT_TIMEOUT_SECS = 30


def _overlay(name: str) -> list[Resource]:
    return render(f"overlays/{name}")


def _pod_spec(resources: list[Resource]) -> dict[str, Any]:
    return one(resources, "Deployment")["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_runs_three_replicas_selected_by_its_own_labels(overlay: str) -> None:
    deployment = one(_overlay(overlay), "Deployment")
    assert deployment["spec"]["replicas"] == 3
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/name"] == APP
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_health_endpoints_on_the_http_listener(overlay: str) -> None:
    container = server_container(one(_overlay(overlay), "Deployment"))
    args = container["args"]
    expected = {
        "livenessProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
        "startupProbe": "/v2/health/ready",
    }
    for probe_name, path in expected.items():
        probe = container[probe_name]
        assert probe["httpGet"]["path"] == path
        assert listener_for_port(args, probe_port(container, probe)) == "http"
    # Slow model loads: the startup probe must allow minutes, the others stay quick to react.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_ports_are_the_ports_the_args_open(overlay: str) -> None:
    container = server_container(one(_overlay(overlay), "Deployment"))
    flags = flag_values(container["args"])
    ports = container_port_numbers(container)
    assert set(ports) == set(PORT_FLAGS)
    for name, flag in PORT_FLAGS.items():
        assert int(flags[flag]) == ports[name]
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_exposes_named_ports_that_exist_on_the_container(overlay: str) -> None:
    resources = _overlay(overlay)
    service = one(resources, "Service")
    container = server_container(one(resources, "Deployment"))
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert {name: port["port"] for name, port in ports.items()} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    for name, port in ports.items():
        assert port["targetPort"] == name
        assert name in container_port_numbers(container)
    labels = one(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_grace_and_drain(overlay: str) -> None:
    pod = _pod_spec(_overlay(overlay))
    container = server_container(one(_overlay(overlay), "Deployment"))
    flags = flag_values(container["args"])
    grace = int(flags.get("--exit-grace-secs", DEFAULT_EXIT_GRACE_SECS))
    drain = int(flags.get("--exit-timeout-secs", DEFAULT_EXIT_TIMEOUT_SECS))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = int(command[1])
    # The kubelet's clock starts at the preStop hook; SIGKILL at the end of the period would
    # cut the drain short, so it must outlast all three phases with room to close.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + drain + 5
    assert 0 < pre_stop <= 15 and 0 < grace <= 15


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_unprivileged_and_read_only(overlay: str) -> None:
    pod = _pod_spec(_overlay(overlay))
    container = server_container(one(_overlay(overlay), "Deployment"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_comes_from_a_read_only_volume(overlay: str) -> None:
    resources = _overlay(overlay)
    pod = _pod_spec(resources)
    container = server_container(one(resources, "Deployment"))
    repository = flag_values(container["args"])["--model-repository"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == repository]
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim == one(resources, "PersistentVolumeClaim")["metadata"]["name"]
    # A read-only root file system still needs somewhere to write temporary files.
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/dev/shm"}


@pytest.mark.parametrize("overlay", GPU_RESOURCES)
def test_gpu_overlays_request_their_device_and_tolerate_the_gpu_taint(overlay: str) -> None:
    resources = _overlay(overlay)
    pod = _pod_spec(resources)
    container = server_container(one(resources, "Deployment"))
    limits = container["resources"]["limits"]
    assert limits[GPU_RESOURCES[overlay]] == 1
    # Exactly one accelerator resource: a whole GPU or a MIG slice, never both.
    assert [name for name in limits if name.startswith("nvidia.com/")] == [GPU_RESOURCES[overlay]]
    assert pod["nodeSelector"]["nvidia.com/gpu.product"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert container["image"].endswith(":0.1.0")


def test_cpu_overlay_has_nothing_gpu_related() -> None:
    resources = _overlay("cpu")
    assert "nvidia" not in yaml.safe_dump(resources).lower()
    container = server_container(one(resources, "Deployment"))
    assert container["image"].endswith("-cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budget_and_autoscaler_target_the_deployment(overlay: str) -> None:
    resources = _overlay(overlay)
    deployment = one(resources, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = one(resources, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    autoscaler = one(resources, "HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert autoscaler["spec"]["minReplicas"] == deployment["spec"]["replicas"]


def _component_hpa(name: str) -> Resource:
    (hpa,) = [
        res
        for res in renderer().render(K8S / "base")
        + list(yaml.safe_load_all((K8S / "components" / name / "hpa.yaml").read_text()))
        if res["kind"] == "HorizontalPodAutoscaler"
    ]
    return hpa


@pytest.mark.parametrize(
    ("component", "metric", "value"),
    [
        ("hpa-queue-time", "nv_inference_queue_duration_us", "50000"),
        ("hpa-pending-requests", "nv_inference_pending_request_count", "16"),
    ],
)
def test_autoscalers_scale_on_a_per_pod_metric(component: str, metric: str, value: str) -> None:
    hpa = _component_hpa(component)
    (spec,) = hpa["spec"]["metrics"]
    assert spec["type"] == "Pods"
    assert spec["pods"]["metric"]["name"] == metric
    # A quoted quantity, as users write it: a bare number would be an int in YAML.
    assert spec["pods"]["target"] == {"type": "AverageValue", "averageValue": value}


def _adapter_rules() -> dict[str, dict[str, Any]]:
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["default"] is False
    return {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}


def _adapter_query_for_all_pods(rule: dict[str, Any]) -> str:
    """The rule's query as the adapter sends it when asked for every pod, without filters."""
    query = rule["metricsQuery"].replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "pod")
    return " ".join(query.replace("{}", "").split())


@pytest.mark.parametrize(
    ("metric", "promql_file"),
    [
        ("nv_inference_queue_duration_us", "queue-time.promql"),
        ("nv_inference_pending_request_count", "pending-requests.promql"),
    ],
)
def test_adapter_rule_serves_each_autoscaler_metric_with_the_stored_query(
    metric: str, promql_file: str
) -> None:
    rules = _adapter_rules()
    rule = rules[metric]
    assert rule["name"]["matches"] == f"^{metric}$"
    assert rule["seriesQuery"].startswith(metric + "{")
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    stored = " ".join((K8S / "monitoring" / promql_file).read_text().split())
    assert _adapter_query_for_all_pods(rule) == stored
    # Every selector in the rule narrows to the pods asked for, so no pod sees another's load.
    selectors = re.findall(r"nv_inference_\w+(\{[^}]*\})?", rule["metricsQuery"])
    assert selectors and all(sel == "{<<.LabelMatchers>>}" for sel in selectors)


def test_queue_time_query_is_queue_microseconds_per_successful_request() -> None:
    query = " ".join((K8S / "monitoring" / "queue-time.promql").read_text().split())
    numerator, denominator = query.split(" / ", 1)
    assert numerator == "sum(rate(nv_inference_queue_duration_us[1m])) by (pod)"
    assert denominator == "clamp_min(sum(rate(nv_inference_request_success[1m])) by (pod), 1)"
