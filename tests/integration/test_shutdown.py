"""SIGTERM under load: readiness falls first, accepted requests all finish, exit code 0."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.harness import run_server, server_command
from tests.models import copy_bundled_model, write_python_model

SLOW_MODEL = """
import time
import urllib.request
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.2)
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
"""

SLOW_CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def _status(url: str, path: str) -> int | None:
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def _infer(url: str, value: float) -> np.ndarray:
    client = httpclient.InferenceServerClient(url, network_timeout=60)
    data = np.full((1, 4), value, dtype=np.float32)
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    return client.infer("slow", [tensor]).as_numpy("OUTPUT0")


@pytest.fixture()
def slow_repo(tmp_path: Path) -> Path:
    write_python_model(tmp_path, "slow", SLOW_MODEL, SLOW_CONFIG)
    return tmp_path


def test_sigterm_drains_accepted_requests_after_readiness_falls(slow_repo: Path) -> None:
    args = [
        "--model-repository",
        str(slow_repo),
        "--exit-grace-secs",
        "1.5",
        "--exit-timeout-secs",
        "30",
    ]
    with run_server(args) as server:
        url = server.http_url
        results: dict[int, object] = {}

        def worker(index: int) -> None:
            try:
                results[index] = _infer(url, float(index))
            except Exception as exc:  # recorded, asserted below
                results[index] = exc

        # Eight requests on one instance that takes 0.2 s per execution: about 1.6 s of work.
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        # One request executes and the other seven wait in the queue before SIGTERM.
        _wait_pending(server.metrics_url, 7)
        server.proc.send_signal(signal.SIGTERM)

        # Readiness falls while the listener still answers.
        deadline = time.monotonic() + 5
        ready_status = _status(url, "/v2/health/ready")
        while ready_status == 200 and time.monotonic() < deadline:
            ready_status = _status(url, "/v2/health/ready")
        assert ready_status is not None and ready_status != 200

        # During the grace period a new request is still accepted and served.
        late = _infer(url, 42.0)
        np.testing.assert_array_equal(late, np.full((1, 4), 42.0, dtype=np.float32))

        for thread in threads:
            thread.join(60)
        for index in range(8):
            outcome = results[index]
            assert not isinstance(outcome, Exception), outcome
            np.testing.assert_array_equal(outcome, np.full((1, 4), float(index), dtype=np.float32))
        assert server.proc.wait(60) == 0


def _wait_pending(metrics_url: str, count: int, timeout: float = 20.0) -> None:
    """Poll the pending-request gauge until ``count`` requests wait in the queue."""
    pattern = re.compile(
        r'^nv_inference_pending_request_count\{[^}]*model="slow"[^}]*\} (\S+)$', re.M
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            found = pattern.search(response.read().decode())
        if found and float(found.group(1)) >= count:
            return
    raise AssertionError(f"fewer than {count} requests were queued within {timeout} s")


def test_new_requests_are_refused_after_the_grace_period(slow_repo: Path) -> None:
    args = [
        "--model-repository",
        str(slow_repo),
        "--exit-grace-secs",
        "0",
        "--exit-timeout-secs",
        "30",
    ]
    with run_server(args) as server:
        url = server.http_url
        holder: list[object] = []
        # Four requests keep the single instance busy for about 0.8 s of draining.
        threads = [
            threading.Thread(target=lambda: holder.append(_infer(url, 1.0))) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        _wait_pending(server.metrics_url, 3)
        server.proc.send_signal(signal.SIGTERM)
        # While the first request drains, new work gets Triton's 503 "Server exiting".
        client = httpclient.InferenceServerClient(url)
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        refused = None
        deadline = time.monotonic() + 5
        while refused is None and time.monotonic() < deadline:
            try:
                client.infer("slow", [tensor])
            except Exception as exc:
                refused = exc
        for thread in threads:
            thread.join(30)
        assert len(holder) == 4 and all(isinstance(item, np.ndarray) for item in holder)
        assert refused is not None
        assert "Server exiting" in str(refused), refused
        assert server.proc.wait(60) == 0


@pytest.mark.parametrize(
    ("flag", "service"),
    [("--http-port", "HTTP"), ("--grpc-port", "GRPC"), ("--metrics-port", "Metrics")],
)
def test_a_port_in_use_stops_the_server_with_tritons_words(
    tmp_path: Path, flag: str, service: str
) -> None:
    """A port taken by another process stops the server with exit code 1 and the line
    tritonserver prints, after closing whatever it had started; no traceback."""
    copy_bundled_model(tmp_path, "identity_fp32")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--model-repository", str(tmp_path), "--exit-grace-secs", "0"]
        for other in ("--http-port", "--grpc-port", "--metrics-port"):
            args += [other, str(port) if other == flag else "0"]
        for address in ("--http-address", "--grpc-address", "--metrics-address"):
            args += [address, "127.0.0.1"]
        result = subprocess.run(
            server_command(args), capture_output=True, text=True, timeout=120, check=False
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert (
        f"failed to start {service} service: Unavailable - Socket '127.0.0.1:{port}' "
        "already in use" in output
    )
    assert "Traceback" not in output
