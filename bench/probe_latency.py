"""Readiness-probe latency while large compressed inferences run.

    .venv/bin/python bench/probe_latency.py                       # this tree
    .venv/bin/python bench/probe_latency.py --root /tmp/older     # an exported older tree

One client keeps sending a 16 MB FP32 tensor (binary) to the bundled ``identity_fp32`` model and
asks for a gzip-compressed response; meanwhile another polls ``/v2/health/ready`` every 10 ms,
as a Kubernetes probe would, and its latencies are reported. A probe that waits behind the
compression of a large body is a probe that may time out and take the pod out of service.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.targets import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ELEMENTS = 4_000_000


def _ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not become ready")


def measure(root: Path, seconds: float) -> dict[str, float]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "server",
        "--model-repository",
        str(ROOT / "model_repository"),
        "--http-port",
        str(port),
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
    ]
    proc = subprocess.Popen(
        command,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _ready(port)
        data = np.random.default_rng(0).standard_normal((1, ELEMENTS)).astype(np.float32)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "INPUT0",
                        "datatype": "FP32",
                        "shape": [1, ELEMENTS],
                        "parameters": {"binary_data_size": data.nbytes},
                    }
                ],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
            }
        ).encode()
        body = header + data.tobytes()
        stop = threading.Event()
        inferences = 0

        def load() -> None:
            nonlocal inferences
            while not stop.is_set():
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v2/models/identity_fp32/infer",
                    data=body,
                    headers={
                        "Inference-Header-Content-Length": str(len(header)),
                        "Accept-Encoding": "gzip",
                    },
                )
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()
                inferences += 1

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(1.0)  # let the first large request get going
        latencies: list[float] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/health/ready", timeout=30
            ) as response:
                response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
        stop.set()
        loader.join()
    finally:
        proc.terminate()
        proc.wait()
    latencies.sort()
    return {
        "probes": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_ms": latencies[-1],
        "large_inferences": inferences,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="source tree of the server")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    print(json.dumps({"root": str(args.root), **measure(args.root, args.seconds)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
