"""The autoscaling signal end to end: a real Prometheus scrapes the server while a slow
model is overloaded, and the queries that ``k8s/`` ships for the HorizontalPodAutoscaler
(the .promql files and the prometheus-adapter rules) rise under the overload and fall back
once it stops.

Prometheus is Debian's package; ``scripts/install_prometheus.sh`` installs it when missing.
The queries' one-minute windows are shortened to a few seconds so the test stays short;
everything else in them is used as shipped.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import ROOT, run_server

PY_MODELS = ROOT / "tests" / "python_models"
MONITORING = ROOT / "k8s" / "monitoring"
WINDOW = "6s"
POD, NAMESPACE = "server-0", "inference"
SLEEP_S = 0.1
CLIENTS = 6
# Six clients on one instance that needs 0.1 s per request: each waits about 0.5 s.
OVERLOADED_US = 150_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "install_prometheus.sh")], check=True, timeout=600
        )
        found = shutil.which("prometheus")
    assert found, "Debian's prometheus package did not provide a prometheus binary"
    return found


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class Prometheus:
    def __init__(self, base: str, proc: subprocess.Popen[bytes]) -> None:
        self.base = base
        self.proc = proc

    def query(self, promql: str) -> list[dict]:
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        body = _get_json(url)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The query's value for our pod, None while Prometheus has no sample for it."""
        for series in self.query(promql):
            if series["metric"].get("pod", POD) == POD:
                return float(series["value"][1])
        return None


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    binary = _prometheus_binary()
    procs: list[subprocess.Popen[bytes]] = []

    def start(metrics_port: int) -> Prometheus:
        config = {
            "global": {
                "scrape_interval": "1s",
                "evaluation_interval": "1s",
                "scrape_timeout": "900ms",
            },
            "scrape_configs": [
                {
                    "job_name": "inference-server",
                    "metrics_path": "/metrics",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{metrics_port}"],
                            "labels": {"pod": POD, "namespace": NAMESPACE},
                        }
                    ],
                }
            ],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        for _attempt in range(3):
            port = _free_port()
            log = (tmp_path / f"prometheus-{port}.log").open("wb")
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / f'data-{port}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            server = Prometheus(f"http://127.0.0.1:{port}", proc)
            if _wait_ready(server):
                return server
        raise AssertionError(f"prometheus did not start:\n{log.name}")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(server: Prometheus, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False  # most likely the port was taken meanwhile
        try:
            with urllib.request.urlopen(f"{server.base}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)  # between polls of a real endpoint
    return False


def _wait_for(
    read: Callable[[], float | None], accept: Callable[[float], bool], timeout: float, what: str
) -> float:
    deadline = time.monotonic() + timeout
    last: float | None = None
    while time.monotonic() < deadline:
        last = read()
        if last is not None and accept(last):
            return last
        time.sleep(0.25)  # one Prometheus evaluation is at least a second apart
    raise AssertionError(f"{what}: last value {last} after {timeout} s")


def _shorten(promql: str) -> str:
    windows = re.findall(r"\[\d+[smh]\]", promql)
    assert windows, f"no range window in {promql!r}"
    return re.sub(r"\[\d+[smh]\]", f"[{WINDOW}]", promql)


def _adapter_rules() -> dict[str, str]:
    values = yaml.safe_load((MONITORING / "prometheus-adapter-values.yaml").read_text())
    rules = {}
    for rule in values["rules"]["custom"]:
        query = rule["metricsQuery"]
        query = query.replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
        query = query.replace("<<.GroupBy>>", "pod")
        rules[rule["name"]["as"]] = _shorten(query)
    return rules


class Load:
    """Clients that keep the slow model busy until stopped."""

    def __init__(self, http_url: str) -> None:
        body = {
            "inputs": [{"name": "SECONDS", "shape": [1], "datatype": "FP32", "data": [SLEEP_S]}]
        }
        self._request = urllib.request.Request(
            f"http://{http_url}/v2/models/py_sleep/infer",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        self.sent = 0
        self.errors: list[str] = []

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self._request, timeout=30) as response:
                    response.read()
                self.sent += 1
            except Exception as exc:  # surfaced by the test, never swallowed
                self.errors.append(repr(exc))
                return

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_queue_time_and_pending_signals_rise_under_overload_and_fall_back(
    tmp_path: Path, prometheus_for: Callable[[int], Prometheus]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(PY_MODELS / "py_sleep", repo / "py_sleep")
    queue_time = _shorten((MONITORING / "queue-time.promql").read_text().strip())
    pending = _shorten((MONITORING / "pending-requests.promql").read_text().strip())
    assert (
        "nv_inference_queue_duration_us" in queue_time
        and "nv_inference_request_success" in queue_time
    )
    assert "nv_inference_pending_request_count" in pending
    rules = _adapter_rules()
    adapter_queue = rules["nv_inference_queue_duration_us"]
    adapter_pending = rules["nv_inference_pending_request_count"]

    with run_server(["--model-repository", str(repo)]) as srv:
        prom = prometheus_for(srv.metrics_port)
        _wait_for(
            lambda: prom.value('up{job="inference-server"}'), lambda v: v == 1, 30, "target up"
        )
        # Idle: a value of 0 once the counters have two samples in the window.
        idle = _wait_for(lambda: prom.value(queue_time), lambda v: v >= 0, 30, "idle queue time")
        assert idle < OVERLOADED_US

        with Load(srv.http_url) as load:
            peak = _wait_for(
                lambda: prom.value(queue_time),
                lambda v: v > OVERLOADED_US,
                45,
                "queue time under overload",
            )
            _wait_for(
                lambda: prom.value(adapter_queue),
                lambda v: v > OVERLOADED_US,
                15,
                "adapter queue time",
            )
            _wait_for(
                lambda: prom.value(pending), lambda v: v >= 2, 15, "pending requests under overload"
            )
            _wait_for(
                lambda: prom.value(adapter_pending),
                lambda v: v >= 2,
                15,
                "adapter pending requests",
            )
            assert not load.errors, load.errors
        assert load.sent > 0 and not load.errors, load.errors

        # With no traffic the rates go to 0 and the clamp keeps the quotient at 0.
        _wait_for(
            lambda: prom.value(queue_time), lambda v: v < peak / 10, 30, "queue time after the load"
        )
        _wait_for(
            lambda: prom.value(adapter_queue),
            lambda v: v < peak / 10,
            15,
            "adapter queue time after",
        )
        _wait_for(
            lambda: prom.value(pending), lambda v: v == 0, 30, "pending requests after the load"
        )
        _wait_for(
            lambda: prom.value(adapter_pending), lambda v: v == 0, 15, "adapter pending after"
        )
