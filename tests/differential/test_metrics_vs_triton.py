"""Our /metrics against NVIDIA's tritonserver for the same models and requests: the same
families, types and label sets, and counters that move by the same amounts.

Triton runs the Python-backend twins; this server runs the ONNX add/sub model and the same
Python models.
"""

from __future__ import annotations

import json
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
from tests.models import write_onnx_add_sub, write_python_add_sub, write_python_model

pytestmark = pytest.mark.triton

PY_MODELS = Path(__file__).resolve().parents[1] / "python_models"
FLAGS = ["--metrics-config", "summary_latencies=true"]
# Families newer than the tritonserver the oracle runs (2.51): ours may have them, its not.
NEWER_THAN_ORACLE = {"nv_model_load_duration_secs"}
COUNTS = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count")
DURATIONS = (
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
Key = tuple[str, str, tuple[tuple[str, str], ...]]


def scrape(url: str, timeout: float = 10.0) -> dict[str, Any]:
    # tritonserver logs "Started Metrics Service" a moment before its socket listens.
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            break
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # between attempts to reach a real endpoint
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("nv_")}


def series(families: dict[str, Any]) -> dict[Key, float]:
    """(family, sample name, labels without gpu_uuid) -> value."""
    out: dict[Key, float] = {}
    for name, family in families.items():
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "gpu_uuid"))
            out[(name, sample.name, labels)] = sample.value
    return out


def model_value(
    values: dict[Key, float], family: str, model: str, suffix: str = "", **extra: str
) -> float:
    wanted = {"model": model, "version": "1", **extra}
    matches = [
        v
        for (name, sample, labels), v in values.items()
        if name == family
        and sample.removesuffix("_total") == family + suffix
        and dict(labels) == wanted
    ]
    assert len(matches) == 1, (family, model, extra, matches)
    return matches[0]


def send_requests(http_url: str, raise_values: tuple[int, ...]) -> None:
    client = httpclient.InferenceServerClient(http_url)
    for rows in (1, 2, 1):
        data = np.arange(16 * rows, dtype=np.int32).reshape(rows, 16)
        inputs = [httpclient.InferInput(n, [rows, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for item in inputs:
            item.set_data_from_numpy(data)
        client.infer("addsub", inputs)
    for value in raise_values:
        infer_json(
            http_url,
            "py_raise",
            [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [value]}],
        )


def infer_json(http_url: str, model: str, inputs: list[dict[str, Any]]) -> int:
    request = urllib.request.Request(
        f"http://{http_url}/v2/models/{model}/infer",
        json.dumps({"inputs": inputs}).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code  # failures are compared through the metrics


def settled(url: str, sent: dict[str, int], timeout: float = 10.0) -> dict[str, Any]:
    """A scrape in which every request sent has been counted, as a success or a failure
    (tritonserver records a request's statistics just after its response goes out)."""
    deadline = time.monotonic() + timeout
    while True:
        families = scrape(url)
        values = series(families)
        counted = {
            model: model_value(values, "nv_inference_request_success", model)
            + sum(
                model_value(values, "nv_inference_request_failure", model, reason=reason)
                for reason in REASONS
            )
            for model in sent
        }
        if counted == sent or time.monotonic() > deadline:
            return families
        time.sleep(0.05)  # between scrapes of a real endpoint


def model_stats(http_url: str, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]


def stat_counts(stats: dict[str, Any]) -> dict[str, Any]:
    """The counts of a statistics extension entry (durations differ between servers)."""
    return {
        "inference_count": stats["inference_count"],
        "execution_count": stats["execution_count"],
        **{key: value["count"] for key, value in stats["inference_stats"].items()},
        "batch_stats": [
            (b["batch_size"], b["compute_input"]["count"], b["compute_infer"]["count"])
            for b in stats["batch_stats"]
        ],
    }


def label_sets(families: dict[str, Any]) -> dict[str, set[frozenset[str]]]:
    return {
        name: {frozenset(k for k in s.labels if k != "gpu_uuid") for s in family.samples}
        for name, family in families.items()
    }


def repos(tmp_path: Path) -> tuple[Path, Path]:
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    write_python_add_sub(theirs, "addsub")
    write_onnx_add_sub(ours, "addsub")
    for repo in (theirs, ours):
        for name in ("py_raise", "py_sleep"):
            shutil.copytree(PY_MODELS / name, repo / name)
    return theirs, ours


class Pair:
    """Both servers' scrapes before and after the same requests."""

    def __init__(self, tmp_path: Path, triton_server: Any, raise_values: tuple[int, ...]) -> None:
        theirs_repo, ours_repo = repos(tmp_path)
        sent = {"addsub": 3, "py_raise": len(raise_values)}
        triton = triton_server(theirs_repo, FLAGS)
        with run_server(["--model-repository", str(ours_repo), *FLAGS]) as ours:
            urls = {
                "ours": (ours.metrics_url, ours.http_url),
                "theirs": (triton.metrics_url, triton.http_url),
            }
            self.before = {side: scrape(metrics) for side, (metrics, _) in urls.items()}
            for _, http in urls.values():
                send_requests(http, raise_values)
            self.after = {side: settled(metrics, sent) for side, (metrics, _) in urls.items()}
            self.stats = {side: model_stats(http, "py_raise") for side, (_, http) in urls.items()}

    def value(self, side: str, family: str, model: str, suffix: str = "", **labels: str) -> float:
        return model_value(series(self.after[side]), family, model, suffix, **labels)

    def delta(self, side: str, family: str, model: str, **labels: str) -> float:
        start = model_value(series(self.before[side]), family, model, **labels)
        return self.value(side, family, model, **labels) - start

    def assert_same_movement(self, family: str, model: str, **labels: str) -> None:
        ours, theirs = (
            self.delta("ours", family, model, **labels),
            self.delta("theirs", family, model, **labels),
        )
        assert ours == theirs, (family, model, labels, ours, theirs)


def test_metrics_match_tritonserver(tmp_path: Path, triton_server: Any) -> None:
    pair = Pair(tmp_path, triton_server, raise_values=(4, 9))
    after, before = pair.after, pair.before

    # Families and their types.
    ours_types = {
        name: f.type for name, f in after["ours"].items() if name not in NEWER_THAN_ORACLE
    }
    assert ours_types == {name: f.type for name, f in after["theirs"].items()}

    # Label sets, per family (GPU labels aside: neither side has a GPU here).
    ours_labels = {k: v for k, v in label_sets(after["ours"]).items() if k not in NEWER_THAN_ORACLE}
    assert ours_labels == label_sets(after["theirs"])

    # The series that exist before any request are the same series.
    def keys(families: dict[str, Any]) -> set[Key]:
        return {key for key in series(families) if key[0] not in NEWER_THAN_ORACLE}

    assert keys(before["ours"]) == keys(before["theirs"])

    # Value movements for the same requests.
    for model in ("addsub", "py_raise"):
        for family in COUNTS:
            pair.assert_same_movement(family, model)
        for reason in REASONS:
            pair.assert_same_movement("nv_inference_request_failure", model, reason=reason)
        for family in DURATIONS:
            for side in ("ours", "theirs"):
                assert pair.delta(side, family, model) > 0, (side, model, family)
        for side in ("ours", "theirs"):
            assert pair.value(side, "nv_inference_pending_request_count", model) == 0
            count = pair.value(side, "nv_inference_request_summary_us", model, "_count")
            assert count == pair.value(side, "nv_inference_request_success", model), side


def test_failure_accounting_matches_tritonserver(tmp_path: Path, triton_server: Any) -> None:
    # -1 makes execute() raise; 0 makes the model return an error response; 3 succeeds.
    pair = Pair(tmp_path, triton_server, raise_values=(-1, 0, 3))
    for family in COUNTS:
        pair.assert_same_movement(family, "py_raise")
    for reason in REASONS:
        pair.assert_same_movement("nv_inference_request_failure", "py_raise", reason=reason)
    for family in ("nv_inference_queue_summary_us", "nv_inference_request_summary_us"):
        for side in ("ours", "theirs"):
            count = pair.value(side, family, "py_raise", "_count")
            # Only the requests the model answered: the error response and the success.
            assert count == 2, (side, family, count)
    ours, theirs = (stat_counts(pair.stats[side]) for side in ("ours", "theirs"))
    assert ours == theirs
    # The raising execution counts as one, but neither its inference nor its queue time.
    assert (ours["execution_count"], ours["inference_count"], ours["queue"]) == (3, 2, 2)
    assert (ours["success"], ours["fail"]) == (2, 1)


DECOUPLED_RAISE = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if values[0] < 0:
                raise ValueError("negative first value")
            sender = request.get_response_sender()
            for value in values.tolist():
                out = pb_utils.Tensor("OUT", np.array([value], dtype=np.int32))
                idx = pb_utils.Tensor("IDX", np.array([0], dtype=np.uint32))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out, idx]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def stream(grpc_url: str, model: str, values: list[int]) -> list[str]:
    """One request on a ModelStreamInfer call; the error messages it brought."""
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="IN", datatype="INT32", shape=[len(values)])],
        raw_input_contents=[np.array(values, dtype=np.int32).tobytes()],
    )  # fmt: skip
    with grpc.insecure_channel(grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return [r.error_message for r in stub.ModelStreamInfer(iter([request]), timeout=30)]


def settled_stats(http_url: str, model: str, sent: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = model_stats(http_url, model)
        done = sum(stats["inference_stats"][k]["count"] for k in ("success", "fail"))
        if done == sent or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)  # between polls of a real endpoint


def test_decoupled_failure_accounting_matches_tritonserver(
    tmp_path: Path, triton_server: Any
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(PY_MODELS / "py_repeat", repo / "py_repeat")
    config = (PY_MODELS / "py_repeat" / "config.pbtxt").read_text()
    write_python_model(
        repo, "py_stream_raise", DECOUPLED_RAISE, config.replace("py_repeat", "py_stream_raise")
    )
    triton = triton_server(repo, FLAGS)
    with run_server(["--model-repository", str(repo), *FLAGS]) as ours:
        seen: dict[str, Any] = {}
        for side, server in (("ours", ours), ("theirs", triton)):
            # An error response in the stream, then a raising execute(), then a success.
            errors = [
                stream(server.grpc_url, "py_repeat", [4, -2, 6]),
                stream(server.grpc_url, "py_stream_raise", [-1]),
                stream(server.grpc_url, "py_stream_raise", [5]),
            ]
            seen[side] = {
                "errors": [[bool(e) for e in call] for call in errors],
                "py_repeat": stat_counts(settled_stats(server.http_url, "py_repeat", 1)),
                "py_stream_raise": stat_counts(
                    settled_stats(server.http_url, "py_stream_raise", 2)
                ),
            }
            failures = series(scrape(server.metrics_url))
            seen[side]["failures"] = {
                (model, reason): model_value(
                    failures, "nv_inference_request_failure", model, reason=reason
                )
                for model in ("py_repeat", "py_stream_raise")
                for reason in REASONS
            }
    assert seen["ours"]["py_repeat"] == seen["theirs"]["py_repeat"]
    assert seen["ours"]["py_stream_raise"] == seen["theirs"]["py_stream_raise"]
    assert seen["ours"]["failures"] == seen["theirs"]["failures"]
    assert seen["ours"]["errors"] == seen["theirs"]["errors"]
    assert seen["ours"]["py_repeat"]["success"] == 1
    assert seen["ours"]["py_stream_raise"]["fail"] == 1


def test_pending_count_moves_like_tritonserver(tmp_path: Path, triton_server: Any) -> None:
    theirs_repo, ours_repo = repos(tmp_path)
    triton = triton_server(theirs_repo, FLAGS)
    with run_server(["--model-repository", str(ours_repo), *FLAGS]) as ours:
        for server in (ours, triton):
            payload = [{"name": "SECONDS", "shape": [1], "datatype": "FP32", "data": [0.3]}]

            def pending(url: str = server.metrics_url) -> float:
                return model_value(
                    series(scrape(url)), "nv_inference_pending_request_count", "py_sleep"
                )

            with ThreadPoolExecutor(3) as pool:
                sent = [
                    pool.submit(infer_json, server.http_url, "py_sleep", payload) for _ in range(3)
                ]
                deadline = time.monotonic() + 10
                peak = 0.0
                while peak < 1 and time.monotonic() < deadline and not all(f.done() for f in sent):
                    peak = max(peak, pending())
                assert [f.result() for f in sent] == [200] * 3
            # One instance: while one request sleeps, the others wait and count as pending.
            assert peak >= 1, server
            assert pending() == 0, server
