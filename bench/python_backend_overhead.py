"""Per-request overhead of the Python backend: in-process threads vs worker processes, and this
server vs NVIDIA's tritonserver (whose Python backend runs each instance in a stub process).

    .venv/bin/python bench/python_backend_overhead.py [--requests 2000] [--no-e2e]

Part 1 runs one identity ``model.py`` three ways from an asyncio loop, as the scheduler would:
a direct call (the model's own cost), a hand-off to an executor thread (what this server
does), and a round trip to a worker process over a pipe (the alternative design). Part 2
sends the same HTTP requests to this server and to ``real-triton`` serving the same model.
Results are medians (and p90) in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REAL_TRITON = ROOT.parent / "shared" / "tools" / "real-triton"
IDENTITY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]
            )
            for r in requests
        ]
"""
CONFIG = """
name: "identity"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
SIZES = {"16 B": 4, "64 KiB": 16384, "4 MiB": 1 << 20}


def write_repo(root: Path) -> Path:
    model = root / "identity"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(IDENTITY)
    (model / "config.pbtxt").write_text(CONFIG)
    return root


def load_instance(repo: Path) -> Any:
    from server.backends.base import InstanceSpec
    from server.backends.python.backend import PythonBackend
    from server.repository.config import load_model_config
    from server.repository.view import build_view

    config = load_model_config(repo / "identity", "identity")
    view = build_view(config, "1", {})
    return PythonBackend().load(
        config, view, repo / "identity" / "1", InstanceSpec("identity_0", "identity", "CPU")
    )


def make_request(array: np.ndarray) -> Any:
    from server.types import InferInput, InferRequest

    return InferRequest(
        "identity", inputs=[InferInput("INPUT0", "FP32", array.shape, array)], batch_size=1
    )


def worker_main(conn: Any, repo: str) -> None:
    from server.backends.base import Timing

    instance = load_instance(Path(repo))
    while True:
        array = conn.recv()
        if array is None:
            return
        conn.send(instance.execute([make_request(array)], Timing())[0])


def summarize(samples_ns: list[int]) -> str:
    micros = sorted(s / 1000 for s in samples_ns)
    p90 = micros[int(len(micros) * 0.9)]
    return f"median {statistics.median(micros):9.1f} us   p90 {p90:9.1f} us"


async def time_async(call: Callable[[], Any], count: int) -> list[int]:
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - start)
    return samples


async def in_process(repo: Path, count: int) -> None:
    from server.backends.base import Timing

    instance = load_instance(repo)
    executor = ThreadPoolExecutor(1)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    worker = context.Process(target=worker_main, args=(child, str(repo)), daemon=True)
    worker.start()
    loop = asyncio.get_running_loop()

    def round_trip(array: np.ndarray) -> Any:
        parent.send(array)
        return parent.recv()

    print("Part 1: one identity model.py, request dispatched from an asyncio loop")
    for label, elements in SIZES.items():
        array = np.arange(elements, dtype=np.float32)
        n = count if elements < 100_000 else max(count // 10, 50)

        async def direct(a: np.ndarray = array) -> Any:
            return instance.execute([make_request(a)], Timing())

        async def thread(a: np.ndarray = array) -> Any:
            return await loop.run_in_executor(
                executor, instance.execute, [make_request(a)], Timing()
            )

        async def process(a: np.ndarray = array) -> Any:
            return await loop.run_in_executor(executor, round_trip, a)

        await process()  # the worker imports the server on its first request
        for name, call in (
            ("direct call", direct),
            ("executor thread", thread),
            ("worker process", process),
        ):
            print(f"  {label:>7}  {name:<16} {summarize(await time_async(call, n))}")
    parent.send(None)
    worker.join(10)
    executor.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(command: list[str], http_port: int) -> Iterator[None]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2
                ) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not become ready")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _totals(client: Any) -> tuple[int, ...]:
    stats = client.get_inference_statistics("identity")["model_stats"][0]["inference_stats"]
    return tuple(int(stats[k][f]) for k in ("success", "compute_infer") for f in ("count", "ns"))


def http_latencies(port: int, count: int) -> dict[str, tuple[list[int], float, float]]:
    """Per size: client-side latencies, and the server's own mean request and compute_infer
    durations (statistics extension) over the same requests."""
    import tritonclient.http as httpclient

    results: dict[str, tuple[list[int], float, float]] = {}
    with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        for label, elements in SIZES.items():
            array = np.arange(elements, dtype=np.float32)
            tensor = httpclient.InferInput("INPUT0", [elements], "FP32")
            tensor.set_data_from_numpy(array)
            n = count if elements < 100_000 else max(count // 10, 50)
            for _ in range(20):
                client.infer("identity", [tensor])
            before = _totals(client)
            samples = []
            for _ in range(n):
                start = time.perf_counter_ns()
                client.infer("identity", [tensor])
                samples.append(time.perf_counter_ns() - start)
            after = _totals(client)
            d = [a - b for a, b in zip(after, before, strict=True)]
            results[label] = (samples, d[1] / max(d[0], 1) / 1000, d[3] / max(d[2], 1) / 1000)
    return results


def end_to_end(repo: Path, count: int, triton: Path) -> None:
    ports = [free_port() for _ in range(3)]
    flags = [
        f"--model-repository={repo}",
        f"--http-port={ports[0]}",
        f"--grpc-port={ports[1]}",
        f"--metrics-port={ports[2]}",
    ]
    ours_command = [sys.executable, "-m", "server", *flags, "--http-address=127.0.0.1"]
    print("\nPart 2: HTTP round trip (tritonclient, binary tensors, one request at a time)")
    with serve(ours_command, ports[0]):
        ours = http_latencies(ports[0], count)
    theirs: dict[str, tuple[list[int], float, float]] = {}
    if triton.exists():
        with serve([str(triton), *flags], ports[0]):
            theirs = http_latencies(ports[0], count)
    else:
        print(f"  ({triton} not found: Triton not measured)")
    theirs = theirs or {}
    for label in SIZES:
        for name, result in (("this server", ours), ("tritonserver", theirs)):
            if label not in result:
                continue
            samples, request_us, infer_us = result[label]
            print(f"  {label:>7}  {name:<14} client {summarize(samples)}")
            print(
                f"  {'':>7}  {'':<14} server mean request {request_us:8.1f} us, compute_infer {infer_us:8.1f} us"
            )
        if label in theirs:
            ratio = statistics.median(theirs[label][0]) / statistics.median(ours[label][0])
            print(f"  {label:>7}  client median ratio tritonserver / this server: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-e2e", action="store_true", help="skip the HTTP comparison")
    parser.add_argument("--triton", type=Path, default=REAL_TRITON)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repo(Path(tmp))
        asyncio.run(in_process(repo, args.requests))
        if not args.no_e2e:
            end_to_end(repo, args.requests // 2, args.triton)


if __name__ == "__main__":
    main()
