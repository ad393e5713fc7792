"""The dynamic batcher through the real server and tritonclient: delays, preferred sizes,
and batches formed under TRITONSERVER_DELAY_SCHEDULER. Timings carry tolerances for a
busy machine; what must hold exactly is checked in the statistics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.harness import run_server
from tests.models import write_onnx_identity

DELAY_US = 200_000


def dynamic(body: str) -> str:
    return f"dynamic_batching {{ {body} }}\ninstance_group [ {{ count: 1, kind: KIND_CPU }} ]"


def write_identity(repo: Path, name: str, extra: str) -> None:
    write_onnx_identity(
        repo, name, dims=(4,), max_batch_size=8, dynamic_batching=False, config_extra=extra
    )


def tensor(value: float, rows: int = 1) -> list[httpclient.InferInput]:
    data = np.full((rows, 4), value, np.float32)
    item = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    item.set_data_from_numpy(data)
    return [item]


def model_stats(url: str, model: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url)
    try:
        return client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()


def batch_sizes(stats: dict[str, Any]) -> dict[int, int]:
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}


def send_concurrently(url: str, model: str, count: int) -> float:
    """Send ``count`` requests at once, check each answer, return the seconds it took."""
    client = httpclient.InferenceServerClient(url, concurrency=count, network_timeout=60)
    try:
        started = time.monotonic()
        pending = [client.async_infer(model, tensor(n)) for n in range(count)]
        for n, request in enumerate(pending):
            output = request.get_result().as_numpy("OUTPUT0")
            assert output is not None and (output == n).all()
        return time.monotonic() - started
    finally:
        client.close()


@pytest.fixture(scope="module")
def delayed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("delayed")
    body = f"preferred_batch_size: [ 4 ] max_queue_delay_microseconds: {DELAY_US}"
    write_identity(repo, "lone", dynamic(body))
    write_identity(repo, "filled", dynamic(body))
    write_identity(repo, "eager", dynamic("preferred_batch_size: [ 4 ]"))
    with run_server(["--model-repository", str(repo)], services=("http",)) as server:
        yield server.http_url


def test_a_lone_request_waits_about_the_max_queue_delay(delayed_url: str) -> None:
    client = httpclient.InferenceServerClient(delayed_url)
    try:
        started = time.monotonic()
        client.infer("lone", tensor(1.0))
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert DELAY_US / 1e6 * 0.95 <= elapsed < DELAY_US / 1e6 + 0.4
    stats = model_stats(delayed_url, "lone")
    queue = stats["inference_stats"]["queue"]
    assert queue["count"] == 1
    assert DELAY_US * 1000 * 0.95 <= queue["ns"] < (DELAY_US + 100_000) * 1000
    assert batch_sizes(stats) == {1: 1}


def test_requests_filling_a_preferred_size_run_at_once(delayed_url: str) -> None:
    elapsed = send_concurrently(delayed_url, "filled", 4)
    assert elapsed < DELAY_US / 1e6 * 0.75
    stats = model_stats(delayed_url, "filled")
    assert batch_sizes(stats) == {4: 1}
    assert (stats["inference_count"], stats["execution_count"]) == (4, 1)


def test_a_zero_delay_never_waits(delayed_url: str) -> None:
    client = httpclient.InferenceServerClient(delayed_url)
    try:
        started = time.monotonic()
        client.infer("eager", tensor(2.0))
        assert time.monotonic() - started < DELAY_US / 1e6 * 0.75
    finally:
        client.close()


@pytest.fixture(scope="module")
def held_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("held")
    write_identity(repo, "batched", dynamic("preferred_batch_size: [ 4 ]"))
    write_identity(repo, "unbatched", "instance_group [ { count: 1, kind: KIND_CPU } ]")
    args = ["--model-repository", str(repo)]
    env = {"TRITONSERVER_DELAY_SCHEDULER": "16"}
    with run_server(args, services=("http",), env=env) as server:
        yield server.http_url


def test_sixteen_held_requests_run_as_four_batches_of_four(held_url: str) -> None:
    send_concurrently(held_url, "batched", 16)
    stats = model_stats(held_url, "batched")
    assert batch_sizes(stats) == {4: 4}
    assert (stats["inference_count"], stats["execution_count"]) == (16, 4)
    assert stats["inference_stats"]["success"]["count"] == 16
    assert stats["inference_stats"]["queue"]["count"] == 16


def test_without_dynamic_batching_every_request_runs_alone(held_url: str) -> None:
    send_concurrently(held_url, "unbatched", 16)
    stats = model_stats(held_url, "unbatched")
    assert batch_sizes(stats) == {1: 16}
    assert (stats["inference_count"], stats["execution_count"]) == (16, 16)
