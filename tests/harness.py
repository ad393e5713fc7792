"""Start the real server (``python -m server``) on free ports and wait until it answers.

The server logs one line per listener it bound, for example
``Started HTTPService at 127.0.0.1:41234``; the harness reads those lines from the
server's stderr to learn the ports, then polls the health endpoint. Nothing sleeps a
fixed time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# NVIDIA's tritonserver, the oracle of the tests marked ``triton``.
REAL_TRITON = Path(os.environ.get("REAL_TRITON", ROOT.parent / "shared" / "tools" / "real-triton"))


def real_triton() -> Path:
    """The tritonserver launcher, or a clear error where there is none."""
    if not REAL_TRITON.exists():
        raise RuntimeError(
            f"differential tests need NVIDIA's tritonserver launcher at {REAL_TRITON} "
            "(set $REAL_TRITON, or deselect them with -m 'not triton')"
        )
    return REAL_TRITON


_STARTED = re.compile(r"Started (HTTPService|GRPCInferenceService|Metrics Service) at (\S+):(\d+)")
_SERVICE_KEYS = {
    "HTTPService": "http",
    "GRPCInferenceService": "grpc",
    "Metrics Service": "metrics",
}


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    ports: dict[str, int] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    @property
    def grpc_port(self) -> int:
        return self.ports["grpc"]

    @property
    def metrics_port(self) -> int:
        return self.ports["metrics"]

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

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Block until a log line matches ``pattern`` (a regex) or the timeout passes."""
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
                        f"no log line matching {pattern!r}:\n{''.join(self.log_lines)}"
                    )
                self._cond.wait(remaining)

    def _pump(self) -> None:
        # Our server logs to stderr; a process started with stderr merged into stdout
        # (tritonserver in the differential tests) is read from stdout.
        stream = self.proc.stderr if self.proc.stderr is not None else self.proc.stdout
        assert stream is not None
        for line in stream:
            with self._cond:
                self.log_lines.append(line)
                match = _STARTED.search(line)
                if match:
                    self.ports[_SERVICE_KEYS[match.group(1)]] = int(match.group(3))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_ports(self, services: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(name in self.ports for name in services):
                remaining = deadline - time.monotonic()
                if self.proc.poll() is not None or remaining <= 0:
                    raise RuntimeError(
                        f"server did not start (exit code {self.proc.poll()}):\n{''.join(self.log_lines)}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_http(self, path: str, timeout: float) -> None:
        """Poll ``path`` on the HTTP port until it answers 200."""
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}{path}"
        delay = 0.01
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server never answered 200 on {path}:\n{self.log()}")
            # Back off between polls; each poll is a real request, not a fixed sleep.
            with self._cond:
                self._cond.wait(delay)
            delay = min(delay * 2, 0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def server_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "server", *args]


@contextmanager
def run_server(
    args: Sequence[str] = (),
    *,
    ready_path: str | None = "/v2/health/ready",
    services: Sequence[str] = ("http", "grpc", "metrics"),
    env: dict[str, str] | None = None,
    timeout: float = 90.0,
) -> Iterator[ServerProcess]:
    """Run ``python -m server`` with all ports at 0 unless ``args`` sets them.

    ``ready_path`` is polled until it answers 200 (use ``/v2/health/live`` when some model
    is expected to fail, or ``None`` to skip). ``services`` lists the listeners to wait for.
    """
    full_args = list(args)
    for flag in ("--http-port", "--grpc-port", "--metrics-port"):
        if not any(a == flag or a.startswith(flag + "=") for a in full_args):
            full_args += [flag, "0"]
    if not any(a.startswith("--exit-grace-secs") for a in full_args):
        # The shutdown grace is for load balancers; tests stop servers without waiting for it.
        full_args += ["--exit-grace-secs", "0"]
    if not any(a.startswith("--http-address") for a in full_args):
        full_args += ["--http-address", "127.0.0.1"]
    if not any(a.startswith("--grpc-address") for a in full_args):
        full_args += ["--grpc-address", "127.0.0.1"]
    proc_env = dict(os.environ)
    proc_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        proc_env.update(env)
    proc = subprocess.Popen(
        server_command(full_args),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=proc_env,
    )
    server = ServerProcess(proc)
    threading.Thread(target=server._pump, daemon=True).start()
    try:
        server.wait_ports(services, timeout)
        if ready_path is not None and "http" in services:
            server.wait_http(ready_path, timeout)
        yield server
    finally:
        server.stop()
