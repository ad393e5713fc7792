"""The servers under test, each started on free ports with the benchmark's models:

- ``ours``: ``python -m server`` from this repository.
- ``mlserver``: Seldon MLServer 1.7.1 from ``bench/.venv-mlserver`` with the small ONNX Runtime
  runtime in ``bench/mlserver``.
- ``triton``: NVIDIA's tritonserver (``/work/shared/tools/real-triton``), which serves only
  Python-backend models, so it gets the Python-backend identity twin.

Each target knows which protocols it speaks and which model answers a scenario, and exposes
the server's process tree for CPU and memory accounting.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from bench import models

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MLSERVER_VENV = BENCH / ".venv-mlserver"
REAL_TRITON = Path(os.environ.get("REAL_TRITON", "/work/shared/tools/real-triton"))
_STARTED = re.compile(r"Started (HTTPService|GRPCInferenceService|Metrics Service) at \S+:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def start_reported(target: Target) -> None:
    """Start ``target`` and print how long it took to become ready."""
    started = time.monotonic()
    target.start()
    print(
        f"  {target.name} ready in {time.monotonic() - started:.1f}s (pid {target.pid})", flush=True
    )


def tree_cpu_seconds(pid: int) -> float:
    """User + system time of the process and all its descendants (threads included)."""
    total = 0.0
    for proc in tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class Target:
    name = ""
    protocols: tuple[str, ...] = ("http-json", "http-binary", "grpc")

    def __init__(self, workdir: Path, cache: Path) -> None:
        self.workdir = workdir / self.name
        self.cache = cache
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.log_path = self.workdir / "server.log"

    # -- what it serves ---------------------------------------------------------
    def available(self) -> str | None:
        """None when this target can run here, else why not."""
        return None

    def serves(self) -> tuple[models.ModelSpec, ...]:
        raise NotImplementedError

    def model_for(self, model: str, concurrency: int) -> str | None:
        names = {spec.name for spec in self.serves()}
        return model if model in names else None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(
        self, command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        procs = tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()
        self.proc = None


class Ours(Target):
    name = "ours"

    def __init__(
        self,
        workdir: Path,
        cache: Path,
        only: tuple[models.ModelSpec, ...] = (),
        prefix: tuple[str, ...] = (),
    ) -> None:
        """``only`` serves just these models; ``prefix`` runs the server under another
        program (``valgrind ...``)."""
        super().__init__(workdir, cache)
        self.only = only
        self.prefix = prefix

    def serves(self) -> tuple[models.ModelSpec, ...]:
        if self.only:
            return self.only
        specs = [models.IDENTITY, models.MLP, models.MLP_NOBATCH, models.HEAVY]
        if importlib.util.find_spec("server.backends.python") is not None:
            specs.append(models.IDENTITY_PY)
        return tuple(specs)

    def start(self) -> None:
        repo = models.write_repository(self.workdir / "models", self.serves(), self.cache)
        expected = {"HTTPService"}
        if importlib.util.find_spec("server.grpc.server") is not None:
            expected.add("GRPCInferenceService")
        else:
            self.protocols = ("http-json", "http-binary")
        if importlib.util.find_spec("server.metrics.endpoint") is not None:
            expected.add("Metrics Service")
        command = [
            *self.prefix,
            sys.executable,
            "-m",
            "server",
            "--model-repository",
            str(repo),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ]
        # BENCH_OURS_ROOT runs the server from another source tree (e.g. an exported older
        # commit), for before/after comparisons on the same machine in the same minutes.
        source = Path(os.environ.get("BENCH_OURS_ROOT", ROOT))
        self._spawn(command + _extra_args(), env={"PYTHONPATH": str(source)}, cwd=source)
        ports = self._read_ports(expected)
        self.http_port = ports["HTTPService"]
        self.grpc_port = ports.get("GRPCInferenceService", 0)
        self._wait_ready()

    def _read_ports(self, expected: set[str], timeout: float = 120.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = {
                m.group(1): int(m.group(2))
                for m in _STARTED.finditer(self.log_path.read_text(errors="replace"))
            }
            if expected <= found.keys():
                return found
            assert self.proc is not None
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"ours did not start {sorted(expected)}:\n{self.log_tail()}")


def _extra_args() -> list[str]:
    """Extra server flags for experiments, e.g. BENCH_SERVER_ARGS='--log-verbose=0'."""
    return os.environ.get("BENCH_SERVER_ARGS", "").split()


class MLServer(Target):
    name = "mlserver"
    protocols = ("http-json", "grpc")  # MLServer has no binary tensor extension
    BATCH_TIME_S = 0.001

    def available(self) -> str | None:
        if not (MLSERVER_VENV / "bin" / "mlserver").exists():
            return "bench/.venv-mlserver is missing (run bash bench/setup.sh)"
        return None

    def serves(self) -> tuple[models.ModelSpec, ...]:
        return (models.IDENTITY, _IDENTITY_NOBATCH, models.MLP, models.MLP_NOBATCH, models.HEAVY)

    def model_for(self, model: str, concurrency: int) -> str | None:
        if model == "identity" and concurrency == 1:
            return _IDENTITY_NOBATCH.name
        return super().model_for(model, concurrency)

    def start(self) -> None:
        root = self.workdir / "repo"
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        self.http_port, self.grpc_port = free_port(), free_port()
        settings = json.loads((BENCH / "mlserver" / "settings.json").read_text())
        settings.update(
            http_port=self.http_port, grpc_port=self.grpc_port, metrics_port=free_port()
        )
        (root / "settings.json").write_text(json.dumps(settings, indent=2))
        for spec in self.serves():
            folder = root / spec.name
            folder.mkdir()
            model_settings: dict[str, object] = {
                "name": spec.name,
                "implementation": "onnx_runtime.OnnxModel",
                "parameters": {
                    "uri": str(models.onnx_path(self.cache, spec.onnx_file)),
                    "version": "1",
                },
            }
            if spec.batching:
                model_settings.update(
                    max_batch_size=models.MAX_BATCH, max_batch_time=self.BATCH_TIME_S
                )
            (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        env = {"PYTHONPATH": str(BENCH / "mlserver")}
        self._spawn(
            [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)], env=env, cwd=root
        )
        self._wait_ready()


_IDENTITY_NOBATCH = models.ModelSpec("identity_nobatch", "identity", 16, 16, batching=False)


class Triton(Target):
    name = "triton"

    def available(self) -> str | None:
        if not REAL_TRITON.exists():
            return f"{REAL_TRITON} is missing"
        return None

    def serves(self) -> tuple[models.ModelSpec, ...]:
        return (models.IDENTITY_PY,)

    def start(self) -> None:
        repo = models.write_repository(self.workdir / "models", self.serves(), self.cache)
        self.http_port, self.grpc_port = free_port(), free_port()
        command = [
            str(REAL_TRITON),
            f"--model-repository={repo}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={free_port()}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
        ]
        self._spawn(command)
        self._wait_ready()


TARGETS: dict[str, type[Target]] = {"ours": Ours, "mlserver": MLServer, "triton": Triton}
