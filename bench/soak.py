"""Memory under steady load, and memory per loaded model; a separate command from run.py.

    .venv/bin/python bench/soak.py --minutes 10        # RSS of the server's tree under load
    .venv/bin/python bench/soak.py --model-memory      # server RSS per model vs ORT's own

The soak drives HTTP JSON (wrk) or gRPC (h2load, ``--protocol grpc``) at concurrency 32 on
the identity model in one-minute slices and samples the resident memory of the server's whole process tree after each; the
first minute is warm-up, and the verdict compares every later sample with the first one after
it (flat means within 5%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import grpc_load, http_load, measure, models, payloads  # noqa: E402
from bench.scenarios import Scenario  # noqa: E402
from bench.targets import Ours, tree_rss_bytes  # noqa: E402

MB = 2**20


class _Only(Ours):
    """Our server with a chosen set of models."""

    def __init__(self, workdir: Path, cache: Path, specs: tuple[models.ModelSpec, ...]) -> None:
        super().__init__(workdir, cache)
        self._specs = specs

    def serves(self) -> tuple[models.ModelSpec, ...]:
        return self._specs


def soak(minutes: int, workdir: Path, cache: Path, protocol: str = "http-json") -> dict[str, Any]:
    server = _Only(workdir, cache, (models.IDENTITY,))
    server.start()
    try:
        payload = payloads.build(protocol, "identity", 16)
        if protocol == "grpc":
            scenario = Scenario("identity", "identity", protocol, 32, ())
            good = measure.check_answer(server, "identity", scenario)
            body = workdir / "load" / "soak.grpc"
            body.parent.mkdir(parents=True, exist_ok=True)
            body.write_bytes(grpc_load.frame(payload.body))

            def slice_of_load() -> dict[str, Any]:
                log = workdir / "load" / "soak.log"
                return grpc_load.run_h2load(server.grpc_port, body, log, 32, 60, good)
        else:
            script = http_load.write_script(workdir / "load", "soak", payload)
            url = f"http://127.0.0.1:{server.http_port}/v2/models/identity/infer"

            def slice_of_load() -> dict[str, Any]:
                return http_load.run_wrk(url, script, 32, 60)

        samples = []
        for minute in range(minutes):
            result = slice_of_load()
            rss = tree_rss_bytes(server.pid) / MB
            samples.append(
                {
                    "minute": minute + 1,
                    "rss_mb": rss,
                    "rps": result["rps"],
                    "errors": result["errors"],
                }
            )
            print(json.dumps(samples[-1]), flush=True)
    finally:
        server.stop()
    steady = samples[1:] or samples
    base = steady[0]["rss_mb"]
    drift = max(abs(s["rss_mb"] - base) / base for s in steady)
    return {
        "protocol": protocol,
        "samples": samples,
        "baseline_mb": base,
        "max_drift": drift,
        "flat_within_5pct": drift <= 0.05,
    }


def _ort_session_mb(path: Path) -> float:
    """RSS added by creating one ONNX Runtime session, in a fresh interpreter."""
    code = (
        "import psutil, onnxruntime as ort, sys\n"
        "p = psutil.Process()\n"
        "before = p.memory_info().rss\n"
        "o = ort.SessionOptions(); o.log_severity_level = 3\n"
        "s = ort.InferenceSession(sys.argv[1], sess_options=o, providers=['CPUExecutionProvider'])\n"
        "print((p.memory_info().rss - before) / 2**20)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip())


def model_memory(workdir: Path, cache: Path) -> dict[str, Any]:
    """Server RSS with the identity model only, and with the heavy model added; the
    difference is what the heavy model costs in the server."""
    rss = {}
    for label, specs in (
        ("identity", (models.IDENTITY,)),
        ("identity+heavy", (models.IDENTITY, models.HEAVY)),
    ):
        server = _Only(workdir / label.replace("+", "_"), cache, specs)
        server.start()
        try:
            rss[label] = tree_rss_bytes(server.pid) / MB
        finally:
            server.stop()
    heavy_in_server = rss["identity+heavy"] - rss["identity"]
    session = _ort_session_mb(models.onnx_path(cache, "heavy"))
    return {
        "server_rss_mb": rss,
        "heavy_in_server_mb": heavy_in_server,
        "heavy_ort_session_mb": session,
        "ratio": heavy_in_server / session if session else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--protocol", choices=("http-json", "grpc"), default="http-json")
    parser.add_argument("--model-memory", action="store_true", help="only measure memory per model")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench-models" / models.fingerprint(),
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-soak"
    if args.model_memory:
        result = model_memory(workdir, args.cache)
        name = "model_memory.json"
    else:
        result = soak(args.minutes, workdir, args.cache, args.protocol)
        name = "soak.json" if args.protocol == "http-json" else f"soak-{args.protocol}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
