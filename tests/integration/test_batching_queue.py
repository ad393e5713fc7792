"""Queue policies, priorities, cancellation, instance counts and error isolation through
the real server.

The model sleeps as many seconds as its input says (and fails its whole batch when an input
is negative), so one long request can hold the only instance busy while the test arranges
the queue behind it. Each test has its own model.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.harness import ServerProcess, run_server
from tests.models import model_config, write_python_model

SLEEP_SOURCE = """\
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        time.sleep(float(max(a.max() for a in arrays)))
        if any((a < 0).any() for a in arrays):
            raise ValueError("negative input")
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", a)])
            for a in arrays
        ]
"""

MODELS = {
    "bounded": "dynamic_batching { default_queue_policy { max_queue_size: 2 } }",
    "timed": (
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 400000 "
        "allow_timeout_override: true } }"
    ),
    "ranked": "dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
    "cancel": "dynamic_batching { }",
    "cancel_grpc": "dynamic_batching { }",
    "single": "dynamic_batching { }",
    "pair": "dynamic_batching { }",
}
ISOLATION = (
    'parameters { key: "dynamic_batching.error_isolation" value { string_value: "%s" } }\n'
    "dynamic_batching { preferred_batch_size: [ 4 ] }"
)


def write_sleeper(
    repo: Path, name: str, extra: str, count: int = 1, max_batch_size: int = 1
) -> None:
    config = model_config(
        name,
        inputs=[("INPUT0", "FP32", [1])],
        outputs=[("OUTPUT0", "FP32", [1])],
        max_batch_size=max_batch_size,
        backend="python",
        dynamic_batching=False,
        extra=f"{extra}\ninstance_group [ {{ count: {count}, kind: KIND_CPU }} ]",
    )
    write_python_model(repo, name, SLEEP_SOURCE, config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("queue")
    for name, extra in MODELS.items():
        write_sleeper(repo, name, extra, count=2 if name == "pair" else 1)
    write_sleeper(repo, "isolated", ISOLATION % "true", max_batch_size=4)
    write_sleeper(repo, "unisolated", ISOLATION % "false", max_batch_size=4)
    services = ("http", "grpc", "metrics")
    with run_server(["--model-repository", str(repo)], services=services) as srv:
        yield srv


def infer(url: str, model: str, seconds: float, **options: Any) -> tuple[float, Any]:
    """One request on its own client; returns (completion time, outputs or the error)."""
    client = httpclient.InferenceServerClient(url, network_timeout=60)
    data = np.array([[seconds]], np.float32)
    item = httpclient.InferInput("INPUT0", [1, 1], "FP32")
    item.set_data_from_numpy(data)
    try:
        result: Any = client.infer(model, [item], **options).as_numpy("OUTPUT0")
    except InferenceServerException as exc:
        result = exc
    finally:
        client.close()
    return time.monotonic(), result


def model_stats(url: str, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as reply:
        return json.loads(reply.read())["model_stats"][0]


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


def occupy(pool: ThreadPoolExecutor, url: str, model: str, seconds: float) -> Future[Any]:
    """Start a long request and return once it is executing (its queue time is recorded
    when its execution starts)."""
    busy = pool.submit(infer, url, model, seconds)
    poll(lambda: model_stats(url, model)["inference_stats"]["queue"]["count"] >= 1)
    return busy


def pending(server: ServerProcess, model: str) -> int:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(
        rf'nv_inference_pending_request_count\{{model="{model}",version="1"\}} (\S+)', text
    )
    assert found, text
    return int(float(found.group(1)))


def test_max_queue_size_rejects_the_overflow_with_503(server: ServerProcess) -> None:
    url = server.http_url
    with ThreadPoolExecutor(6) as pool:
        busy = occupy(pool, url, "bounded", 1.0)
        outcomes = [
            f.result()[1] for f in [pool.submit(infer, url, "bounded", 0.01) for _ in range(4)]
        ]
        assert not isinstance(busy.result()[1], Exception)
    rejected = [o for o in outcomes if isinstance(o, InferenceServerException)]
    assert len(rejected) == 2
    assert {(e.status(), e.message()) for e in rejected} == {("503", "Exceeds maximum queue size")}
    stats = model_stats(url, "bounded")
    assert (stats["execution_count"], stats["inference_stats"]["fail"]["count"]) == (3, 2)


def test_a_queue_timeout_rejects_without_waiting_for_the_running_execution(
    server: ServerProcess,
) -> None:
    url = server.http_url
    with ThreadPoolExecutor(3) as pool:
        busy = occupy(pool, url, "timed", 1.5)
        started = time.monotonic()
        default = pool.submit(infer, url, "timed", 0.01)
        shortened = pool.submit(infer, url, "timed", 0.01, timeout=20_000)
        (default_end, default_error), (short_end, short_error) = (
            default.result(),
            shortened.result(),
        )
        busy_end, _ = busy.result()
    for error in (default_error, short_error):
        assert isinstance(error, InferenceServerException)
        assert (error.status(), error.message()) == ("503", "Request timeout expired")
    assert 0.38 <= default_end - started < busy_end - started
    assert short_end - started < 0.3  # its own 20 ms, not the 400 ms default
    stats = model_stats(url, "timed")
    assert (stats["execution_count"], stats["inference_stats"]["fail"]["count"]) == (1, 2)


def test_a_higher_priority_request_overtakes(server: ServerProcess) -> None:
    url = server.http_url
    with ThreadPoolExecutor(4) as pool:
        occupy(pool, url, "ranked", 0.8)
        low_default = pool.submit(infer, url, "ranked", 0.1)
        low = pool.submit(infer, url, "ranked", 0.1, priority=2)
        poll(lambda: pending(server, "ranked") == 2)
        high = pool.submit(infer, url, "ranked", 0.1, priority=1)
        ends = {
            name: f.result()[0]
            for name, f in (("low_default", low_default), ("low", low), ("high", high))
        }
    assert ends["high"] < ends["low_default"] and ends["high"] < ends["low"]


def test_a_request_whose_client_disconnects_is_not_executed(server: ServerProcess) -> None:
    url = server.http_url
    host, port = url.split(":")
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [0.01]}]}
    ).encode()
    head = (
        f"POST /v2/models/cancel/infer HTTP/1.1\r\nHost: {url}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with ThreadPoolExecutor(2) as pool:
        busy = occupy(pool, url, "cancel", 0.8)
        with socket.create_connection((host, int(port))) as client:
            client.sendall(head + body)
            poll(lambda: pending(server, "cancel") == 1)
        poll(lambda: pending(server, "cancel") == 0)
        assert not busy.done()  # withdrawn at once, not when the instance came free
        busy.result()
    _, after = infer(url, "cancel", 0.01)
    assert not isinstance(after, Exception)
    stats = model_stats(url, "cancel")
    assert (stats["execution_count"], stats["inference_count"]) == (2, 2)
    assert stats["inference_stats"]["fail"]["count"] == 1


def test_a_grpc_call_that_times_out_in_the_queue_is_not_executed(server: ServerProcess) -> None:
    url = server.http_url
    with ThreadPoolExecutor(1) as pool:
        busy = occupy(pool, url, "cancel_grpc", 1.0)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        item = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
        item.set_data_from_numpy(np.array([[0.01]], np.float32))
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer("cancel_grpc", [item], client_timeout=0.2)
        client.close()
        poll(lambda: pending(server, "cancel_grpc") == 0)
        assert not busy.done()
        busy.result()
    stats = model_stats(url, "cancel_grpc")
    assert (stats["execution_count"], stats["inference_stats"]["fail"]["count"]) == (1, 1)


@pytest.mark.parametrize(
    ("model", "at_least", "below"), [("pair", 0.5, 0.95), ("single", 1.0, 3.0)]
)
def test_each_instance_runs_one_execution_at_a_time(
    server: ServerProcess, model: str, at_least: float, below: float
) -> None:
    url = server.http_url
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        ends = [f.result()[0] for f in [pool.submit(infer, url, model, 0.5) for _ in range(2)]]
    assert at_least <= max(ends) - started < below
    assert model_stats(url, model)["execution_count"] == 2


@pytest.mark.parametrize(
    ("model", "failures", "executions"), [("isolated", 1, 4), ("unisolated", 4, 2)]
)
def test_error_isolation_fails_only_the_faulty_request(
    server: ServerProcess, model: str, failures: int, executions: int
) -> None:
    url = server.http_url
    with ThreadPoolExecutor(5) as pool:
        occupy(pool, url, model, 0.8)
        batch = [pool.submit(infer, url, model, s) for s in (0.01, -1.0, 0.01, 0.01)]
        poll(lambda: pending(server, model) == 4)
        outcomes = [f.result()[1] for f in batch]
    failed = [n for n, o in enumerate(outcomes) if isinstance(o, InferenceServerException)]
    assert len(failed) == failures
    assert 1 in failed
    stats = model_stats(url, model)
    # The blocker, then with isolation the runs that were not split further: [0], [1] (which
    # raised; the Python backend counts a raising execution, as Triton's does) and [2, 3];
    # without isolation the one batch that raised.
    assert stats["execution_count"] == executions
    assert stats["inference_count"] == 1 + 4 - failures
