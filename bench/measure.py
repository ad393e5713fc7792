"""One measurement: check one answer, warm up, then load for a fixed time while the server's
process tree is charged for its CPU time."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import grpc_load, http_load, payloads
from bench.scenarios import Scenario
from bench.targets import Target, tree_cpu_seconds, tree_rss_bytes


def check_answer(target: Target, model: str, scenario: Scenario) -> int:
    """One request before the load: the right status, shape and (for identity) values.
    Returns the size of the good gRPC answer as framed on the wire (0 for HTTP)."""
    spec = scenario.spec
    payload = payloads.build(scenario.protocol, model, spec.input_size)
    expected = payloads.expected_output(spec.input_size)
    size = 0
    if scenario.protocol == "grpc":
        output, size = _grpc_once(target, payload.body)
    else:
        output = _http_once(target, model, payload)
    if output.shape != (1, spec.output_size):
        raise AssertionError(f"{target.name} {scenario.key}: output shape {output.shape}")
    if spec.onnx_file == "identity" and not np.array_equal(output, expected):
        raise AssertionError(f"{target.name} {scenario.key}: identity changed the values")
    return size


def _http_once(target: Target, model: str, payload: payloads.Payload) -> np.ndarray:
    headers = {"Content-Type": payload.content_type}
    if payload.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(payload.header_length)
    url = f"http://127.0.0.1:{target.http_port}/v2/models/{model}/infer"
    request = urllib.request.Request(url, data=payload.body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        length = response.headers.get("Inference-Header-Content-Length")
    if length is None:
        document = orjson.loads(body)
        out = document["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    document = orjson.loads(body[: int(length)])
    out = document["outputs"][0]
    return np.frombuffer(body[int(length) :], dtype="<f4").reshape(out["shape"])


def _grpc_once(target: Target, body: bytes) -> tuple[np.ndarray, int]:
    import grpc

    from server.protocol.generated import grpc_service_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
        raw = channel.unary_unary(grpc_load.METHOD)(body, timeout=30)
    response = pb.ModelInferResponse.FromString(raw)
    out = response.outputs[0]
    if response.raw_output_contents:
        data = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    else:
        data = np.asarray(out.contents.fp32_contents, dtype=np.float32)
    return data.reshape(tuple(out.shape)), len(grpc_load.frame(raw))


def model_counts(target: Target, model: str) -> tuple[int, int]:
    """The model's (inference_count, execution_count) from the server's statistics extension
    (on ``target.stats_port`` where a layout serves them apart from its HTTP port)."""
    port = getattr(target, "stats_port", target.http_port)
    url = f"http://127.0.0.1:{port}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=60) as response:
        stats = orjson.loads(response.read())["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def load_runner(
    target: Target, model: str, scenario: Scenario, workdir: Path, good_bytes: int = 0
) -> Callable[[float], dict[str, Any]]:
    """The scenario's load generator against ``target``: called with a number of seconds,
    it runs that long and returns its summary."""
    payload = payloads.build(scenario.protocol, model, scenario.spec.input_size)
    name = f"{target.name}-{model}-{scenario.protocol}-c{scenario.concurrency}".replace("/", "_")
    if scenario.protocol == "grpc":
        body = workdir / "load" / f"{name}.grpc"
        body.parent.mkdir(parents=True, exist_ok=True)
        body.write_bytes(grpc_load.frame(payload.body))
        log = workdir / "load" / f"{name}.log"

        def grpc_once(seconds: float) -> dict[str, Any]:
            return grpc_load.run_h2load(
                target.grpc_port, body, log, scenario.concurrency, seconds, good_bytes
            )

        return grpc_once
    script = http_load.write_script(workdir / "load", name, payload)
    url = f"http://127.0.0.1:{target.http_port}/v2/models/{model}/infer"

    def http_once(seconds: float) -> dict[str, Any]:
        return http_load.run_wrk(url, script, scenario.concurrency, seconds)

    return http_once


def run(
    target: Target,
    model: str,
    scenario: Scenario,
    workdir: Path,
    duration: float,
    warmup: float,
    good_bytes: int = 0,
) -> dict[str, Any]:
    once = load_runner(target, model, scenario, workdir, good_bytes)
    if warmup > 0:
        once(warmup)
    cpu0 = tree_cpu_seconds(target.pid)
    result = once(duration)
    cpu = tree_cpu_seconds(target.pid) - cpu0
    requests = max(result["requests"], 1)
    result["server_cpu_us_per_req"] = cpu / requests * 1e6
    result["client_cpu_us_per_req"] = result["client_cpu_s"] / requests * 1e6
    result["server_rss_mb"] = tree_rss_bytes(target.pid) / 2**20
    return result
