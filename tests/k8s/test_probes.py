"""The rendered manifests' own container args start the server, and it answers their probes.

The args come from the rendered objects unchanged except for the model repository (a test
repository) and the ports (0, so tests never collide); every probe, the ServiceMonitor and the
Service's gRPC port are then resolved from the manifests to the listener they point at.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient

from tests import models
from tests.harness import ServerProcess, run_server
from tests.k8s.manifests import (
    PORT_FLAGS,
    flag_values,
    listener_for_port,
    one,
    probe_port,
    render,
    server_container,
    with_flags,
)

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
# Metric families the autoscalers' adapter rules read; they must be on the scraped port.
AUTOSCALING_METRICS = (
    "nv_inference_queue_duration_us",
    "nv_inference_request_success",
    "nv_inference_pending_request_count",
)
MODEL = "identity"
# Upper bound for waiting on start-up in a test, whatever the manifest's startup probe allows.
TEST_START_BUDGET_S = 90.0


@pytest.fixture
def model_repository(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    repo.mkdir()
    models.write_onnx_identity(repo, MODEL, dims=(4,))
    return repo


def local_args(args: list[str], repository: Path) -> list[str]:
    replacements = {flag: "0" for flag in PORT_FLAGS.values()}
    replacements["--model-repository"] = str(repository)
    return with_flags(args, replacements)


def http_status(port: int, path: str, timeout: float) -> int | None:
    """The status of GET ``path``, or None when nothing accepts the connection."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def kubelet_success(status: int | None) -> bool:
    # An httpGet probe succeeds on any status from 200 up to 399.
    return status is not None and 200 <= status < 400


def wait_until(srv: ServerProcess, condition: Any, budget: float, what: str) -> None:
    """Poll ``condition`` until it holds; between polls, wait on the server's exit instead."""
    deadline = time.monotonic() + budget
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {budget} s:\n{srv.log()}")
        try:
            srv.proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        else:
            raise AssertionError(
                f"server exited ({srv.proc.returncode}) before {what}:\n{srv.log()}"
            )
        delay = min(delay * 2, 0.2)


def probe_target(container: dict[str, Any], probe: dict[str, Any], srv: ServerProcess) -> int:
    """The local port standing in for the container port a probe names."""
    listener = listener_for_port(container["args"], probe_port(container, probe))
    return srv.ports[listener]


def check_probes(container: dict[str, Any], srv: ServerProcess) -> None:
    startup = container["startupProbe"]
    budget = min(startup["periodSeconds"] * startup["failureThreshold"], TEST_START_BUDGET_S)
    port = probe_target(container, startup, srv)
    path = startup["httpGet"]["path"]
    wait_until(
        srv,
        lambda: kubelet_success(http_status(port, path, startup["timeoutSeconds"])),
        budget,
        f"startup probe GET {path}",
    )
    for name in PROBES:
        probe = container[name]
        port = probe_target(container, probe, srv)
        status = http_status(port, probe["httpGet"]["path"], probe["timeoutSeconds"])
        assert kubelet_success(status), (name, status, srv.log())


def infer_once(srv: ServerProcess) -> None:
    body = {
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    request = urllib.request.Request(
        f"http://{srv.http_url}/v2/models/{MODEL}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        outputs = json.loads(reply.read())["outputs"]
    assert outputs[0]["data"] == [1, 2, 3, 4]


def _cpu_deployment() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    resources = render("overlays/cpu")
    deployment = one(resources, "Deployment")
    return resources, deployment, server_container(deployment)


def test_cpu_deployment_answers_its_probes_and_shuts_down_within_the_grace_period(
    model_repository: Path,
) -> None:
    _, deployment, container = _cpu_deployment()
    args = local_args(container["args"], model_repository)
    # The probes reach only the HTTP listener; the other two have their own test below.
    with run_server(args, ready_path=None, services=("http",)) as srv:
        check_probes(container, srv)

        # Pod deletion: the kubelet runs preStop, then sends SIGTERM, and kills whatever is
        # left at terminationGracePeriodSeconds. The server must fail readiness while its
        # listener still answers, then exit 0 within what is left of the period.
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        budget = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] - pre_stop
        readiness = container["readinessProbe"]
        ready_port = probe_target(container, readiness, srv)
        ready_path = readiness["httpGet"]["path"]

        def readiness_failed_with_an_answer() -> bool:
            status = http_status(ready_port, ready_path, readiness["timeoutSeconds"])
            return status is not None and not kubelet_success(status)

        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        wait_until(srv, readiness_failed_with_an_answer, budget, "readiness failing after SIGTERM")
        assert srv.proc.wait(timeout=budget) == 0, srv.log()
        assert time.monotonic() - started < budget


def test_cpu_deployment_serves_metrics_and_grpc_where_the_manifests_point(
    model_repository: Path,
) -> None:
    resources, _, container = _cpu_deployment()
    args = local_args(container["args"], model_repository)
    service_ports = {p["name"]: p for p in one(resources, "Service")["spec"]["ports"]}

    def local_port(service_port: str) -> int:
        named = {"httpGet": {"port": service_ports[service_port]["targetPort"]}}
        return probe_target(container, named, srv)

    with run_server(args) as srv:
        endpoint = one(resources, "ServiceMonitor")["spec"]["endpoints"][0]
        infer_once(srv)
        url = f"http://127.0.0.1:{local_port(endpoint['port'])}{endpoint['path']}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            exposition = reply.read().decode()
        samples = [line for line in exposition.splitlines() if not line.startswith("#")]
        for family in AUTOSCALING_METRICS:
            assert any(
                line.startswith(family + "{") and f'model="{MODEL}"' in line for line in samples
            ), f"{family} for {MODEL} is not on the scraped port:\n{exposition}"

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{local_port('grpc')}")
        try:
            assert client.is_server_ready()
        finally:
            client.close()


def test_kserve_runtime_args_answer_its_probes(model_repository: Path) -> None:
    runtime = one(render("kserve"), "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    flags = flag_values(container["args"])
    # KServe sends REST to the declared container port; it must be the HTTP listener.
    (declared,) = container["ports"]
    assert listener_for_port(container["args"], declared["containerPort"]) == "http"
    assert int(flags["--grpc-port"]) == 9000
    args = local_args(container["args"], model_repository)
    probes = _with_default_timeouts(container)
    # The runtime declares no startup probe; stand one in on readiness for the first wait.
    probes["startupProbe"] = {**probes["readinessProbe"], "failureThreshold": 30}
    with run_server(args, ready_path=None, services=("http",)) as srv:
        check_probes(probes, srv)


def _with_default_timeouts(container: dict[str, Any]) -> dict[str, Any]:
    """The container with the kubelet's default probe timeout (1 s) written out."""
    probes = {
        name: {"timeoutSeconds": 1, **container[name]}
        for name in ("livenessProbe", "readinessProbe")
    }
    return {**container, **probes}
