"""One server process against several, on the Python-backend identity model, beside tritonserver.

    .venv/bin/python bench/multiprocess.py            # 3 repeats of 5 s after 2 s warm-up

A second process is what it would take to use the second core: one Python process is held to
about one core by its interpreter lock. Two layouts are measured against one process:

- ``ours x2``: two complete servers, each taking half of the 32 connections (what
  SO_REUSEPORT would do with one port); the figures are their sums.
- ``thin xN``: one core process that owns the models, batchers and statistics, and N
  front-end processes sharing the public ports that parse HTTP, JSON and gRPC and forward
  each request to it (``bench/frontends.py``); the figures are those of the whole tree.

The cost is measured beside the gain: CPU per request, resident memory, and batching
efficiency (requests per model execution, from the statistics). Results go to
bench/results/multiprocess.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import frontends, measure, models  # noqa: E402
from bench.scenarios import Scenario  # noqa: E402
from bench.targets import (  # noqa: E402
    Ours,
    Target,
    Triton,
    free_port,
    tree_cpu_seconds,
    tree_rss_bytes,
)

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = models.IDENTITY_PY
PROTOCOLS = ("http-json", "http-binary", "grpc")
CONNECTIONS = 32
# Front-end processes of the thin layouts (bench/frontends.py), beside one core process.
THIN_FRONTS = (1, 2, 3)


class OursSecond(Ours):
    name = "ours-second"


class Thin(Ours):
    """``bench/frontends.py``: one core process and ``fronts`` front-end processes."""

    def __init__(self, workdir: Path, cache: Path, fronts: int) -> None:
        self.name = f"thin{fronts}"
        super().__init__(workdir, cache)
        self.fronts = fronts
        self.stats_port = 0

    def start(self) -> None:
        repo = models.write_repository(self.workdir / "models", self.serves(), self.cache)
        self.http_port, self.grpc_port = free_port(), free_port()
        self.stats_port = free_port()
        command = [
            sys.executable,
            str(Path(__file__).resolve().parent / "frontends.py"),
            "layout",
            f"--fronts={self.fronts}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--core-http-port={self.stats_port}",
            f"--core-grpc-port={free_port()}",
            "--model-repository",
            str(repo),
            "--metrics-port=0",
        ]
        self._spawn(command)
        deadline = time.monotonic() + 180
        while self.log_path.read_text(errors="replace").count(frontends.READY) < self.fronts:
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.1)


def measure_layout(
    label: str, targets: list[Target], protocol: str, seconds: float, warmup: float, workdir: Path
) -> dict[str, Any]:
    share = CONNECTIONS // len(targets)
    scenario = Scenario("identity_py", MODEL.name, protocol, share, ())
    good = [measure.check_answer(t, MODEL.name, scenario) for t in targets]

    def together(duration: float) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{} for _ in targets]

        def one(index: int) -> None:
            target = targets[index]
            load = measure.load_runner(target, MODEL.name, scenario, workdir, good[index])
            results[index] = load(duration)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    if warmup > 0:
        together(warmup)
    counted = not label.startswith("triton")
    before = [measure.model_counts(t, MODEL.name) for t in targets] if counted else []
    cpu0 = sum(tree_cpu_seconds(t.pid) for t in targets)
    runs = together(seconds)
    cpu = sum(tree_cpu_seconds(t.pid) for t in targets) - cpu0
    requests = sum(r["requests"] for r in runs)
    row: dict[str, Any] = {
        "layout": label,
        "protocol": protocol,
        "rps": sum(r["rps"] for r in runs),
        "p50_ms": max(r.get("p50_us", 0.0) for r in runs) / 1000,
        "errors": sum(r["errors"] for r in runs),
        "server_cpu_us_per_req": cpu / max(requests, 1) * 1e6,
        "server_rss_mb": sum(tree_rss_bytes(t.pid) for t in targets) / 2**20,
    }
    if counted:
        after = [measure.model_counts(t, MODEL.name) for t in targets]
        inferences = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
        executions = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
        row["requests_per_execution"] = inferences / max(executions, 1)
    return row


def _layouts(workdir: Path, cache: Path) -> list[tuple[str, list[Target]]]:
    layouts: list[tuple[str, list[Target]]] = [
        ("ours x1", [Ours(workdir, cache)]),
        ("ours x2", [Ours(workdir, cache), OursSecond(workdir, cache)]),
        *((f"thin x{n}", [Thin(workdir, cache, n)]) for n in THIN_FRONTS),
    ]
    triton = Triton(workdir, cache)
    if triton.available() is None:
        layouts.append(("triton", [triton]))
    return layouts


def report(rows: list[dict[str, Any]]) -> str:
    keys = sorted({(r["layout"], r["protocol"]) for r in rows})
    lines = [
        "| layout | protocol | req/s | p50 ms | server CPU-us/req | RSS MB | requests/execution |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for layout, protocol in keys:
        mine = [r for r in rows if r["layout"] == layout and r["protocol"] == protocol]

        def med(key: str, rows: list[dict[str, Any]] = mine) -> float:
            return statistics.median(r[key] for r in rows if key in r)

        per_exec = (
            f"{med('requests_per_execution'):.1f}" if "requests_per_execution" in mine[0] else "-"
        )
        lines.append(
            f"| {layout} | {protocol} | {med('rps'):,.0f} | {med('p50_ms'):.2f} | "
            f"{med('server_cpu_us_per_req'):,.0f} | {med('server_rss_mb'):,.0f} | {per_exec} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-mp"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-models" / models.fingerprint(),
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    for stem in ("identity", "mlp", "heavy"):
        models.onnx_path(args.cache, stem)
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for label, targets in _layouts(args.workdir, args.cache):
            for target in targets:
                target.start()
            try:
                for protocol in PROTOCOLS:
                    row = measure_layout(
                        label, targets, protocol, args.duration, args.warmup, args.workdir
                    )
                    row["repeat"] = repeat
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                for target in targets:
                    target.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multiprocess.json").write_text(json.dumps(rows, indent=1))
    table = report(rows)
    (args.out / "multiprocess.md").write_text(
        "# One process or several (Python identity, 32 connections in all)\n\n"
        f"Command: `bench/multiprocess.py --repeats {args.repeats} --duration {args.duration:g}`; "
        "medians.\n\n" + table + "\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
