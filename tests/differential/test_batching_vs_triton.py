"""Side by side with NVIDIA's tritonserver: the same Python-backend models, the same request
patterns, the batcher held by TRITONSERVER_DELAY_SCHEDULER until every request is queued,
and then the same batches on both servers (batch_stats, execution and inference counts).

Each pattern sends requests of one size, so the arrival order among them cannot change the
batches; what is compared is the batch formation itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.differential.conftest import start_triton
from tests.harness import run_server
from tests.models import write_python_identity

pytestmark = pytest.mark.triton

# The hold: each model's batcher waits until this many requests are queued.
HELD = 12
ONE_INSTANCE = "instance_group [ { count: 1, kind: KIND_CPU } ]"


def batching(body: str) -> str:
    return f"dynamic_batching {{ {body} }}\n{ONE_INSTANCE}"


# name -> (rows per request, dynamic_batching body)
PATTERNS: dict[str, tuple[int, str]] = {
    "pref4_rows1": (1, "preferred_batch_size: [ 4 ]"),
    "default_pref_rows1": (1, ""),
    "pref4_6_rows2": (2, "preferred_batch_size: [ 4, 6 ]"),
    "pref4_rows3": (3, "preferred_batch_size: [ 4 ]"),
    "default_pref_rows3": (3, ""),
    "rows5": (5, ""),
    # A delay that cannot run out during the test, and one that always has.
    "pref2_8_rows1_delay": (
        1,
        "preferred_batch_size: [ 2, 8 ] max_queue_delay_microseconds: 5000000",
    ),
    "pref2_8_rows1_expired": (1, "preferred_batch_size: [ 2, 8 ] max_queue_delay_microseconds: 1"),
    "pref3_rows2": (2, "preferred_batch_size: [ 3 ]"),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batching_repo")
    for name, (_, body) in PATTERNS.items():
        write_python_identity(
            path,
            name,
            dims=(4,),
            max_batch_size=8,
            dynamic_batching=False,
            config_extra=batching(body),
        )
    write_python_identity(
        path,
        "unbatched",
        dims=(4,),
        max_batch_size=8,
        dynamic_batching=False,
        config_extra=ONE_INSTANCE,
    )
    return path


@contextmanager
def both_servers(repo: Path) -> Iterator[dict[str, str]]:
    env = {"TRITONSERVER_DELAY_SCHEDULER": str(HELD)}
    with ExitStack() as stack:
        ours = stack.enter_context(
            run_server(["--model-repository", str(repo)], services=("http",), env=env)
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TRITONSERVER_DELAY_SCHEDULER", str(HELD))
            theirs = stack.enter_context(start_triton(repo))
        yield {"ours": ours.http_url, "triton": theirs.http_url}


def send_held(url: str, model: str, rows: int) -> None:
    client = httpclient.InferenceServerClient(url, concurrency=HELD, network_timeout=60)
    try:
        pending = []
        for n in range(HELD):
            data = np.full((rows, 4), n, np.float32)
            tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            pending.append((n, client.async_infer(model, [tensor])))
        for n, request in pending:
            output = request.get_result().as_numpy("OUTPUT0")
            assert output is not None and output.shape == (rows, 4)
            assert (output == n).all()
    finally:
        client.close()


def batch_summary(url: str, model: str, requests: int, rows: int) -> dict[str, Any]:
    """The model's statistics once all ``requests`` of ``rows`` each are counted:
    tritonserver reports an execution's statistics just after its responses leave, so they
    are polled (a count that never arrives shows up as a mismatch)."""
    client = httpclient.InferenceServerClient(url)
    deadline = time.monotonic() + 30
    try:
        while True:
            stats = client.get_inference_statistics(model)["model_stats"][0]
            done = int(stats["inference_stats"]["success"]["count"])
            counted = done >= requests and int(stats["inference_count"]) >= requests * rows
            if counted or time.monotonic() > deadline:
                break
    finally:
        client.close()
    return {
        "inference_count": int(stats["inference_count"]),
        "execution_count": int(stats["execution_count"]),
        "batch_stats": {
            int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]
        },
        "success": done,
    }


def test_same_batches_as_triton(repo: Path) -> None:
    observed: dict[str, dict[str, Any]] = {}
    with both_servers(repo) as urls:
        for model, (rows, _) in [*PATTERNS.items(), ("unbatched", (1, ""))]:
            for server, url in urls.items():
                send_held(url, model, rows)
                observed[f"{server}:{model}"] = batch_summary(url, model, HELD, rows)
    mismatches = {
        model: (observed[f"ours:{model}"], observed[f"triton:{model}"])
        for model in [*PATTERNS, "unbatched"]
        if observed[f"ours:{model}"] != observed[f"triton:{model}"]
    }
    assert not mismatches, mismatches
    # Both sides agree; pin the easy ones so that agreeing on nothing cannot pass.
    assert observed["ours:pref4_rows1"]["batch_stats"] == {4: 3}
    assert observed["ours:default_pref_rows1"]["batch_stats"] == {8: 1, 4: 1}
    assert observed["ours:unbatched"]["batch_stats"] == {1: HELD}
    assert observed["ours:pref2_8_rows1_delay"]["batch_stats"] == {8: 1, 2: 2}
    assert observed["ours:pref2_8_rows1_expired"]["batch_stats"] == {8: 1, 4: 1}
    for model, (rows, _) in PATTERNS.items():
        summary = observed[f"ours:{model}"]
        assert summary["inference_count"] == HELD * rows
        assert summary["success"] == HELD
