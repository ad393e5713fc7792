"""Shared set-up for differential tests: NVIDIA's tritonserver as the oracle.

``triton_server(repo_path, extra_args)`` starts ``../shared/tools/real-triton`` (or the script
named by ``$REAL_TRITON``) on free ports, waits until it answers, and returns a handle with
``http_url``, ``grpc_url`` and ``metrics_url`` in the same forms as ``tests.harness``. Every
server a test starts is stopped when the test ends.

``our_server(repo_path, extra_args)`` is the same for ``python -m server``, so a test can write
``ours, theirs = our_server(onnx_repo), triton_server(python_repo)``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import ServerProcess, run_server

ROOT = Path(__file__).resolve().parents[2]
REAL_TRITON = Path(os.environ.get("REAL_TRITON", ROOT.parent / "shared" / "tools" / "real-triton"))
# The first start creates the tool's own environment, which can take minutes.
START_TIMEOUT = float(os.environ.get("REAL_TRITON_START_TIMEOUT", "300"))
_BIND_FAILED = re.compile(
    r"failed to start|Address already in use|Socket '.*' already in use", re.I
)


@dataclass
class TritonProcess:
    proc: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        with self._cond:
            return "".join(self.log_lines)

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.log_lines:
                    found = regex.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"no tritonserver log line matching {pattern!r}:\n{self.log()}"
                    )
                self._cond.wait(remaining)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.log_lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_http(self, path: str, timeout: float) -> None:
        """Poll ``path`` until it answers 200, backing off between real requests."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.proc.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver never answered 200 on {path}:\n{self.log()}")
            with self._cond:
                self._cond.wait(delay)
            delay = min(delay * 2, 0.25)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


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
    if not REAL_TRITON.exists():
        raise RuntimeError(
            f"differential tests need NVIDIA's tritonserver launcher at {REAL_TRITON} "
            "(set $REAL_TRITON, or deselect them with -m 'not triton')"
        )
    for attempt in range(3):
        http_port, grpc_port, metrics_port = free_ports(3)
        args = [
            str(REAL_TRITON),
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
        server = TritonProcess(proc, http_port, grpc_port, metrics_port)
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
