"""HTTP load through wrk (Debian's package): one thread, N keep-alive connections, one fixed
POST body replayed by a small Lua script, latency percentiles reported from wrk's own
histogram. wrk is C and costs a few microseconds per request, so it leaves the cores to the
server."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.payloads import Payload

_SCRIPT = """\
local f = assert(io.open(%(body)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = %(content_type)s
%(extra)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@@{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk, or bash bench/setup.sh)")
    return path


def write_script(directory: Path, name: str, payload: Payload) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    body = directory / f"{name}.body"
    body.write_bytes(payload.body)
    extra = ""
    if payload.header_length is not None:
        extra = f'wrk.headers["Inference-Header-Content-Length"] = "{payload.header_length}"'
    script = directory / f"{name}.lua"
    script.write_text(
        _SCRIPT
        % {
            "body": json.dumps(str(body)),
            "content_type": json.dumps(payload.content_type),
            "extra": extra,
        }
    )
    return script


def run_wrk(
    url: str, script: Path, connections: int, seconds: float, timeout_s: float = 10.0
) -> dict[str, Any]:
    """One wrk run; returns its summary plus the CPU seconds wrk itself used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        wrk_path(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith("@@")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    summary = json.loads(lines[-1][2:])
    duration = summary["duration_us"] / 1e6
    errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "requests": summary["requests"] - summary["status"],
        "errors": errors,
        "duration_s": duration,
        "rps": (summary["requests"] - summary["status"]) / duration,
        "p50_us": float(summary["p50_us"]),
        "p90_us": float(summary["p90_us"]),
        "p99_us": float(summary["p99_us"]),
        "mean_us": float(summary["mean_us"]),
        "client_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "error_detail": {
            k: summary[k] for k in ("connect", "read", "write", "status", "timeout") if summary[k]
        },
    }
