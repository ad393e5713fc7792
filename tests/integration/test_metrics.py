"""The metrics listener of a running server: Triton's families agree with the statistics
extension and with the requests sent, follow loads and unloads, and obey the flags."""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.harness import run_server
from tests.models import write_onnx_add_sub, write_python_model

PY_MODELS = Path(__file__).resolve().parents[1] / "python_models"
DURATIONS = {
    "nv_inference_request_duration_us": "success",
    "nv_inference_queue_duration_us": "queue",
    "nv_inference_compute_input_duration_us": "compute_input",
    "nv_inference_compute_infer_duration_us": "compute_infer",
    "nv_inference_compute_output_duration_us": "compute_output",
}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return response.read().decode()


def values(text: str, model: str) -> dict[str, float]:
    """Sample name (as written, without the parser's ``_total``) -> value, for ``model``;
    failures keyed ``nv_inference_request_failure:<reason>``."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model or "quantile" in sample.labels:
                continue
            name = family.name if sample.name == family.name + "_total" else sample.name
            if "reason" in sample.labels:
                name = f"{name}:{sample.labels['reason']}"
            out[name] = sample.value
    return out


def infer_json(http_url: str, model: str, inputs: list[dict[str, Any]]) -> int:
    body = json.dumps({"inputs": inputs}).encode()
    request = urllib.request.Request(
        f"http://{http_url}/v2/models/{model}/infer", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def add_sub_inputs(rows: int) -> list[httpclient.InferInput]:
    data = np.arange(16 * rows, dtype=np.int32).reshape(rows, 16)
    inputs = [httpclient.InferInput(n, [rows, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for item in inputs:
        item.set_data_from_numpy(data)
    return inputs


def poll(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)  # between polls of a real endpoint
        delay = min(delay * 2, 0.2)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_onnx_add_sub(tmp_path, "simple")
    for name in ("py_raise", "py_sleep"):
        shutil.copytree(PY_MODELS / name, tmp_path / name)
    return tmp_path


def test_metrics_agree_with_statistics_and_requests(repo: Path) -> None:
    with run_server(["--model-repository", str(repo)]) as srv:
        client = httpclient.InferenceServerClient(srv.http_url)
        for rows in (1, 2, 3, 1, 1):
            client.infer("simple", add_sub_inputs(rows))
        for value in (5, 6, 7, -1, -2, 0):
            payload = [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [value]}]
            infer_json(srv.http_url, "py_raise", payload)
        text = scrape(srv.metrics_url)
        for line in text.splitlines():
            if line.startswith("nv_"):
                assert not line.split("{")[0].endswith(("_total", "_created")), line
        for model in ("simple", "py_raise"):
            got = values(text, model)
            stats = client.get_inference_statistics(model)["model_stats"][0]
            inference = stats["inference_stats"]
            assert got["nv_inference_request_success"] == inference["success"]["count"]
            assert got["nv_inference_count"] == stats["inference_count"]
            assert got["nv_inference_exec_count"] == stats["execution_count"]
            for name, key in DURATIONS.items():
                assert got[name] == inference[key]["ns"] // 1000, name
            failures = sum(
                got[f"nv_inference_request_failure:{r}"]
                for r in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
            )
            assert failures == inference["fail"]["count"]
            assert got["nv_inference_pending_request_count"] == 0
            assert got["nv_model_load_duration_secs"] > 0
        simple = values(text, "simple")
        assert simple["nv_inference_request_success"] == 5
        assert simple["nv_inference_count"] == 8  # rows sent
        raising = values(text, "py_raise")
        # As in Triton: the error response the model gave for 0 is a success, the two
        # executions that raised are failures, yet all six count as executions.
        assert raising["nv_inference_request_success"] == 4
        assert raising["nv_inference_request_failure:BACKEND"] == 2
        assert raising["nv_inference_request_failure:OTHER"] == 0
        assert raising["nv_inference_count"] == 4
        assert raising["nv_inference_exec_count"] == 6
        assert raising["nv_inference_request_failure:REJECTED"] == 0
        assert raising["nv_inference_request_failure:CANCELED"] == 0
        # A scrape is not a request: the counters stay where they were.
        assert values(scrape(srv.metrics_url), "simple")["nv_inference_request_success"] == 5


def test_series_appear_on_load_and_disappear_on_unload(repo: Path) -> None:
    args = [
        "--model-repository",
        str(repo),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "simple",
    ]
    with run_server(args) as srv:
        client = httpclient.InferenceServerClient(srv.http_url)
        text = scrape(srv.metrics_url)
        assert values(text, "simple")["nv_inference_request_success"] == 0
        assert 'model="py_sleep"' not in text
        client.load_model("py_sleep")
        assert values(scrape(srv.metrics_url), "py_sleep")["nv_inference_request_success"] == 0
        client.unload_model("simple")
        text = scrape(srv.metrics_url)
        assert 'model="simple"' not in text
        assert values(text, "py_sleep")["nv_inference_request_success"] == 0


def test_pending_count_rises_while_requests_wait(repo: Path) -> None:
    with run_server(["--model-repository", str(repo)]) as srv:
        payload = [{"name": "SECONDS", "shape": [1], "datatype": "FP32", "data": [0.4]}]

        def pending() -> float:
            return values(scrape(srv.metrics_url), "py_sleep")["nv_inference_pending_request_count"]

        with ThreadPoolExecutor(4) as pool:
            sent = [pool.submit(infer_json, srv.http_url, "py_sleep", payload) for _ in range(4)]
            # One executes; the rest wait in the queue and count as pending.
            poll(lambda: pending() >= 2, 10, "pending requests")
            assert [f.result() for f in sent] == [200] * 4
        assert pending() == 0
        got = values(scrape(srv.metrics_url), "py_sleep")
        assert got["nv_inference_request_success"] == 4
        # The later requests queued behind 0.4 s executions.
        assert got["nv_inference_queue_duration_us"] >= 400_000


def test_flags_switch_families(repo: Path) -> None:
    args = [
        "--model-repository",
        str(repo),
        "--allow-cpu-metrics=false",
        "--metrics-config",
        "summary_latencies=true",
        "--metrics-config",
        "counter_latencies=false",
        "--metrics-address",
        "127.0.0.1",
    ]
    with run_server(args) as srv:
        srv.wait_for_log(r"Started Metrics Service at 127\.0\.0\.1:")
        client = httpclient.InferenceServerClient(srv.http_url)
        for _ in range(3):
            client.infer("simple", add_sub_inputs(1))
        text = scrape(srv.metrics_url)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert "nv_cpu_utilization" not in families
        assert "nv_inference_queue_duration_us" not in families
        summary = families["nv_inference_request_summary_us"]
        assert summary.type == "summary"
        count = [
            s.value
            for s in summary.samples
            if s.name.endswith("_count") and s.labels["model"] == "simple"
        ]
        assert count == [3]


def test_metrics_listener_routes_and_off_switch(repo: Path) -> None:
    with run_server(["--model-repository", str(repo)]) as srv:
        request = urllib.request.Request(srv.metrics_url, b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 405
        assert "nv_inference_count" in scrape(srv.metrics_url + "/")
        assert "nv_cpu_memory_total_bytes" in scrape(srv.metrics_url)
    with run_server(
        ["--model-repository", str(repo), "--allow-metrics=false"], services=("http", "grpc")
    ) as srv:
        assert "metrics" not in srv.ports
        assert "Started Metrics Service" not in srv.log()


SLOW_FIRST = """\
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            delay = float(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0]) / 1000
            sender = request.get_response_sender()
            threading.Thread(target=self.answer, args=(delay, sender)).start()
        return None

    def answer(self, delay, sender):
        time.sleep(delay)
        for index in range(2):
            out = pb_utils.Tensor("OUT", np.array([index], dtype=np.int32))
            idx = pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out, idx]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""


def stream_one(grpc_url: str, model: str, value: int) -> int:
    """One request on a ModelStreamInfer call; the number of messages that came back."""
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="IN", datatype="INT32", shape=[1])],
        raw_input_contents=[np.array([value], dtype=np.int32).tobytes()],
    )
    with grpc.insecure_channel(grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return len(list(stub.ModelStreamInfer(iter([request]), timeout=30)))


def test_first_response_histogram_for_decoupled_models(tmp_path: Path) -> None:
    config = (PY_MODELS / "py_repeat" / "config.pbtxt").read_text()
    write_python_model(
        tmp_path, "slow_first", SLOW_FIRST, config.replace("py_repeat", "slow_first")
    )
    write_onnx_add_sub(tmp_path, "simple")
    args = ["--model-repository", str(tmp_path), "--metrics-config", "histogram_latencies=true"]
    with run_server(args) as srv:
        # First responses after about 0, 0, 150 and 700 ms.
        for delay_ms in (0, 0, 150, 700):
            assert stream_one(srv.grpc_url, "slow_first", delay_ms) == 2
        httpclient.InferenceServerClient(srv.http_url).infer("simple", add_sub_inputs(1))
        families = {f.name: f for f in text_string_to_metric_families(scrape(srv.metrics_url))}
        family = families["nv_inference_first_response_histogram_ms"]
        assert family.type == "histogram"
        samples = {
            (
                s.name.rsplit("_", 1)[-1],
                float(s.labels["le"]) if "le" in s.labels else None,
            ): s.value
            for s in family.samples
            if s.labels["model"] == "slow_first"
        }
        assert samples[("count", None)] == 4
        assert samples[("bucket", 100.0)] == 2
        assert samples[("bucket", 500.0)] == 3
        assert samples[("bucket", 2000.0)] == 4
        assert samples[("bucket", math.inf)] == 4
        assert 850 <= samples[("sum", None)] < 4000
        # Only decoupled models have the histogram, as in Triton.
        assert {s.labels["model"] for s in family.samples} == {"slow_first"}
