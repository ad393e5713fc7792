"""gRPC load through h2load (Debian's nghttp2-client): N HTTP/2 connections with one stream
each, every request the same pre-serialized, length-prefixed ModelInferRequest. h2load is C,
so, like wrk for HTTP, it leaves the cores to the server; a grpcio client in Python spent about
as much CPU per call as the servers under test.

h2load sees HTTP statuses, not gRPC ones (a failed call is a 200 with a non-zero grpc-status
trailer and no message), so failures are counted from the response bytes: every good answer
to the fixed request has the same length, measured by the runner's check beforehand.
"""

from __future__ import annotations

import re
import resource
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"
_DONE = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_FINISHED = re.compile(r"finished in ([\d.]+)s")
_DATA = re.compile(r"traffic: .*?, ([\d.]+\w*) \((\d+)\) data")


def h2load_path() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise RuntimeError(
            "h2load is not installed (apt-get install -y nghttp2-client, or bash bench/setup.sh)"
        )
    return path


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: a compression flag and a big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def run_h2load(
    port: int, body_path: Path, log_path: Path, connections: int, seconds: float, good_bytes: int
) -> dict[str, Any]:
    log_path.unlink(missing_ok=True)  # h2load appends to an existing log
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        h2load_path(),
        f"-c{connections}",
        "-m1",
        f"-D{max(1, round(seconds))}",
        "-d",
        str(body_path),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        f"--log-file={log_path}",
        f"http://127.0.0.1:{port}{METHOD}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = _DONE.search(done.stdout)
    data = _DATA.search(done.stdout)
    if done.returncode != 0 or counts is None or data is None:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    total, finished, _succeeded, _failed, _errored, timeout = (int(g) for g in counts.groups())
    log = np.loadtxt(log_path, dtype=np.int64, ndmin=2)
    ok_http = log[log[:, 1] == 200] if log.size else log
    good = min(int(data.group(2)) // good_bytes, len(ok_http)) if good_bytes else len(ok_http)
    latencies = ok_http[:, 2] if len(ok_http) else np.zeros(0, dtype=np.int64)
    elapsed = _FINISHED.search(done.stdout)
    duration = float(elapsed.group(1)) if elapsed else seconds
    result: dict[str, Any] = {
        "requests": good,
        "errors": (finished - good) + timeout,
        "duration_s": duration,
        "rps": good / duration,
        "client_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    }
    if latencies.size:
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        result.update(
            p50_us=float(p50), p90_us=float(p90), p99_us=float(p99), mean_us=float(latencies.mean())
        )
    if total != finished:
        result["unfinished"] = total - finished
    return result
