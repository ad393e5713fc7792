"""Shared set-up for differential tests: NVIDIA's tritonserver as the oracle.

``triton_server(repo_path, extra_args)`` starts ``../shared/tools/real-triton`` (or the script
named by ``$REAL_TRITON``) on free ports, waits until it answers, and returns a handle with
``http_url``, ``grpc_url`` and ``metrics_url`` in the same forms as ``tests.harness``. Every
server a test starts is stopped when the test ends.

``our_server(repo_path, extra_args)`` is the same for ``python -m server``, so a test can write
``ours, theirs = our_server(onnx_repo), triton_server(python_repo)``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ServerProcess, real_triton, run_server

# The first start creates the tool's own environment, which can take minutes.
START_TIMEOUT = float(os.environ.get("REAL_TRITON_START_TIMEOUT", "300"))
_BIND_FAILED = re.compile(
    r"failed to start|Address already in use|Socket '.*' already in use", re.I
)


# tritonserver is driven through the same process wrapper as our server; its ports are
# chosen up front because it cannot report a port it picked itself.
TritonProcess = ServerProcess


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def start_triton(
    repo_path: Path | str,
    extra_args: Sequence[str] = (),
    *,
    ready_path: str | None = "/v2/health/ready",
    timeout: float = START_TIMEOUT,
) -> Iterator[TritonProcess]:
    """Run real tritonserver on ``repo_path``; ``ready_path`` None waits for the listeners only.

    A port taken between choosing it and binding it makes tritonserver exit at once; that start
    is retried on new ports.
    """
    launcher = real_triton()
    for attempt in range(3):
        http_port, grpc_port, metrics_port = free_ports(3)
        args = [
            str(launcher),
            f"--model-repository={repo_path}",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--exit-timeout-secs=5",
            *extra_args,
        ]
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        server = ServerProcess(proc, dict(ports))
        threading.Thread(target=server._pump, daemon=True).start()
        try:
            server.wait_for_log(r"Started HTTPService at", timeout)
            if ready_path is not None:
                server.wait_http(ready_path, timeout)
        except (AssertionError, RuntimeError):
            server.stop()
            if attempt < 2 and _BIND_FAILED.search(server.log()):
                continue
            raise
        try:
            yield server
        finally:
            server.stop()
        return


TritonFactory = Callable[..., TritonProcess]
OurFactory = Callable[..., ServerProcess]


@pytest.fixture
def triton_server() -> Iterator[TritonFactory]:
    """``triton_server(repo_path, extra_args=(), ready_path="/v2/health/ready")``."""
    with ExitStack() as stack:

        def start(
            repo_path: Path | str,
            extra_args: Sequence[str] = (),
            ready_path: str | None = "/v2/health/ready",
        ) -> TritonProcess:
            return stack.enter_context(start_triton(repo_path, extra_args, ready_path=ready_path))

        yield start


@pytest.fixture
def our_server() -> Iterator[OurFactory]:
    """``our_server(repo_path, extra_args=(), ready_path="/v2/health/ready")``."""
    with ExitStack() as stack:

        def start(
            repo_path: Path | str,
            extra_args: Sequence[str] = (),
            ready_path: str | None = "/v2/health/ready",
        ) -> ServerProcess:
            args = ["--model-repository", str(repo_path), *extra_args]
            return stack.enter_context(run_server(args, ready_path=ready_path, services=("http",)))

        yield start


def serve_side_by_side(
    our_server: OurFactory, triton_server: TritonFactory, repo: Path
) -> tuple[ServerProcess, TritonProcess]:
    """Both servers on a repository where some models are meant to fail to load: they go on
    serving the rest (``--exit-on-error=false``) and are waited for by liveness, since
    readiness stays false while a model is unavailable."""
    args = ["--exit-on-error=false"]
    live = "/v2/health/live"
    return our_server(repo, args, ready_path=live), triton_server(repo, args, ready_path=live)


def repository_index(url: str) -> dict[str, dict[str, str]]:
    """A server's repository index by model name."""
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(url) as client:
        return {row["name"]: row for row in client.get_model_repository_index()}


def assert_same_outcome(name: str, mine: dict[str, str], reference: dict[str, str]) -> None:
    """The same state, and the same reason where there is one: tritonserver's starts with its
    status code's name ("Invalid argument: "), ours is the message alone."""
    assert mine["state"] == reference["state"], (name, mine, reference)
    assert reference.get("reason", "").endswith(mine.get("reason", "")), (name, mine, reference)
    assert bool(mine.get("reason")) == bool(reference.get("reason")), (name, mine, reference)


def probe_answer(url: str, model: str) -> Any:
    """What a probe model (``tests.models.write_python_probe``) answered, as the JSON its
    BYTES output holds."""
    import numpy as np
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.array([1], dtype=np.int32))
        return json.loads(client.infer(model, [tensor]).as_numpy("OUT")[0])
