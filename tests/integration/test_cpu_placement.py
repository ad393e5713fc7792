"""Where the server's threads run: a Python model whose runs are short shares the event
loop's CPU, one whose runs are long keeps every CPU (``server.affinity``). Each model
answers with the native id of the thread that ran it; the test reads that thread's and the
event loop's (the main thread's) CPU lists from /proc. And no thread, ONNX Runtime's
included, runs outside the CPU set the server was started with."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from server import affinity
from tests.harness import ServerProcess, run_server
from tests.models import write_onnx_identity, write_python_probe

pytestmark = pytest.mark.skipif(
    not Path("/proc/thread-self/stat").exists(), reason="CPU placement is Linux's"
)

_REPORTS_THREAD = """
import threading, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        busy_until = time.thread_time() + {busy}
        while time.thread_time() < busy_until:
            pass
        tid = np.array([threading.get_native_id()], dtype=np.int64)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", tid)]) for _ in requests]
"""


def _cpus(pid: int, thread_id: int) -> set[int]:
    with open(f"/proc/{pid}/task/{thread_id}/status") as status:
        line = next(x for x in status if x.startswith("Cpus_allowed_list:"))
    cpus: set[int] = set()
    for part in line.split(":", 1)[1].strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _thread_of(client: grpcclient.InferenceServerClient, model: str, runs: int) -> int:
    tensor = grpcclient.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.zeros(1, dtype=np.int32))
    ids = {int(client.infer(model, [tensor]).as_numpy("OUT")[0]) for _ in range(runs)}
    assert len(ids) == 1, ids  # one instance, one thread
    return ids.pop()


def _repository(root: Path) -> Path:
    write_python_probe(root, "short_runs", _REPORTS_THREAD.format(busy=0), output="INT64")
    # 20 ms of processor time per run: twenty times the limit for sharing the loop's CPU.
    write_python_probe(root, "long_runs", _REPORTS_THREAD.format(busy=0.02), output="INT64")
    return root


def _serve(root: Path, *extra: str) -> Iterator[ServerProcess]:
    with run_server(
        ["--model-repository", str(_repository(root)), *extra], services=("http", "grpc")
    ) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory.mktemp("placement"))


ALLOWED = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


def test_a_python_model_with_short_runs_shares_the_event_loops_cpu(server: ServerProcess) -> None:
    pid = server.proc.pid
    assert _cpus(pid, pid) == ALLOWED  # nothing placed before a Python model has run
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        thread = _thread_of(client, "short_runs", runs=6)
        loop_cpus, model_cpus = _cpus(pid, pid), _cpus(pid, thread)
        if len(ALLOWED) > 1:
            assert len(loop_cpus) == 1 and loop_cpus <= ALLOWED
            assert model_cpus == loop_cpus
        else:
            assert loop_cpus == model_cpus == ALLOWED  # one CPU: nothing to choose

        # A model whose runs compute for long keeps every CPU, though its thread was
        # started by the loop's thread while the loop was on one CPU.
        long_thread = _thread_of(client, "long_runs", runs=5)
        assert _cpus(pid, long_thread) == ALLOWED
        # The short one still shares the loop's CPU at its next run.
        assert _thread_of(client, "short_runs", runs=1) == thread
        # (A review may have released both meanwhile, and placed them on another CPU.)
        assert _cpus(pid, thread) == _cpus(pid, pid) and len(_cpus(pid, pid)) == 1
        # Nothing else the server runs (executor, poller, libraries' threads) is placed.
        others = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - {pid, thread}
        placed = {t: _cpus(pid, t) for t in others if os.path.exists(f"/proc/{pid}/task/{t}")}
        assert placed and all(cpus == ALLOWED for cpus in placed.values()), placed


def test_the_loop_and_the_thread_get_every_cpu_back_once_the_model_is_idle(
    server: ServerProcess,
) -> None:
    pid = server.proc.pid
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        thread = _thread_of(client, "short_runs", runs=6)
    if len(ALLOWED) > 1:
        assert len(_cpus(pid, pid)) == 1
    # Reviewed every REVIEW_S: the first review after the last run may still count it.
    deadline = time.monotonic() + 4 * affinity.REVIEW_S + 5
    while _cpus(pid, pid) != ALLOWED:
        assert time.monotonic() < deadline, "an idle model still holds the loop's CPU"
        time.sleep(0.05)
    assert _cpus(pid, thread) == ALLOWED


def test_share_event_loop_cpu_false_leaves_every_thread_on_every_cpu(tmp_path: Path) -> None:
    for server in _serve(tmp_path, "--backend-config=python,share-event-loop-cpu=false"):
        pid = server.proc.pid
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            thread = _thread_of(client, "short_runs", runs=6)
        assert _cpus(pid, pid) == ALLOWED
        assert _cpus(pid, thread) == ALLOWED


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs a CPU outside the server's set")
def test_no_thread_runs_outside_the_cpu_set_the_server_was_started_with(tmp_path: Path) -> None:
    # ONNX Runtime's own default pins a pool thread per further physical core of the
    # machine, whatever CPU set the process has: under one CPU it put one on another CPU.
    write_onnx_identity(tmp_path, "onnx_identity")  # beside the Python models of _serve
    cpu = min(ALLOWED)
    os.sched_setaffinity(0, {cpu})  # the server inherits this thread's set
    try:
        servers = _serve(tmp_path)
        server = next(servers)
    finally:
        os.sched_setaffinity(0, ALLOWED)
    try:
        pid = server.proc.pid
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
            data = np.arange(4, dtype=np.float32).reshape(1, 4)
            tensor.set_data_from_numpy(data)
            result = client.infer("onnx_identity", [tensor]).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(result, data)
            _thread_of(client, "short_runs", runs=6)
        threads = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        cpus = {t: _cpus(pid, t) for t in threads if os.path.exists(f"/proc/{pid}/task/{t}")}
        assert len(cpus) > 3 and all(c == {cpu} for c in cpus.values()), cpus
    finally:
        servers.close()
