"""A cheap closed-loop gRPC load generator: one pre-serialized ModelInferRequest sent by N
asyncio tasks, spread over a few worker processes, each with its own channel.

The request bytes are built once and handed to grpcio untouched (no serializer), and the
response is not parsed (its status is what counts), so the client's per-call cost is grpcio's
own. Each worker reports its CPU time so the runner can show that the generator is not the
bottleneck. Usage (prints one JSON object):

    python bench/grpc_load.py --target 127.0.0.1:8001 --request req.bin -c 32 -d 10 -w 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _worker(
    target: str, body: bytes, tasks: int, start_at: float, warm_end: float, end: float, out: Any
) -> None:
    import asyncio

    import grpc

    async def run() -> dict[str, Any]:
        latencies: list[int] = []
        errors = 0
        messages: dict[str, int] = {}
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            call = channel.unary_unary(METHOD)
            await channel.channel_ready()
            while time.time() < start_at:
                await asyncio.sleep(0.001)
            cpu0 = [0.0]

            async def loop() -> None:
                nonlocal errors
                measuring = False
                while True:
                    t0 = time.perf_counter_ns()
                    now = time.time()
                    if now >= end:
                        return
                    if not measuring and now >= warm_end:
                        measuring = True
                    try:
                        await call(body)
                        ok = True
                    except grpc.aio.AioRpcError as exc:
                        ok = False
                        if measuring:
                            key = f"{exc.code().name}: {exc.details()}"[:200]
                            messages[key] = messages.get(key, 0) + 1
                    if measuring and time.time() <= end:
                        if ok:
                            latencies.append(time.perf_counter_ns() - t0)
                        else:
                            errors += 1

            async def cpu_mark() -> None:
                await asyncio.sleep(max(0.0, warm_end - time.time()))
                cpu0[0] = time.process_time()

            marker = asyncio.ensure_future(cpu_mark())
            await asyncio.gather(*(loop() for _ in range(tasks)))
            await marker
            cpu = time.process_time() - cpu0[0]
        return {
            "latencies": np.asarray(latencies, dtype=np.int64).tobytes(),
            "errors": errors,
            "cpu_s": cpu,
            "messages": messages,
        }

    out.put(asyncio.run(run()))


def run_load(
    target: str,
    body: bytes,
    concurrency: int,
    duration: float,
    warmup: float,
    procs: int,
    start_at: float = 0.0,
) -> dict[str, Any]:
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    context = mp.get_context("spawn")
    queue = context.Queue()
    start_at = start_at or time.time() + 3.0  # let every worker import grpc and connect first
    warm_end = start_at + warmup
    end = warm_end + duration
    workers = [
        context.Process(
            target=_worker, args=(target, body, share, start_at, warm_end, end, queue), daemon=True
        )
        for share in shares
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=duration + warmup + 60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    latencies = np.concatenate([np.frombuffer(r["latencies"], dtype=np.int64) for r in results])
    errors = sum(r["errors"] for r in results)
    messages: dict[str, int] = {}
    for r in results:
        for key, count in r["messages"].items():
            messages[key] = messages.get(key, 0) + count
    count = int(latencies.size)
    summary: dict[str, Any] = {
        "requests": count,
        "errors": errors,
        "duration_s": duration,
        "rps": count / duration,
        "client_cpu_s": sum(r["cpu_s"] for r in results),
        "error_messages": messages,
    }
    if count:
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) / 1000.0
        summary.update(
            p50_us=float(p50),
            p90_us=float(p90),
            p99_us=float(p99),
            mean_us=float(latencies.mean() / 1000.0),
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True)
    parser.add_argument(
        "--request", type=Path, required=True, help="a serialized ModelInferRequest"
    )
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("-w", "--warmup", type=float, default=3.0)
    parser.add_argument(
        "-p", "--procs", type=int, default=0, help="worker processes (default: by concurrency)"
    )
    args = parser.parse_args(argv)
    procs = args.procs or default_procs(args.concurrency)
    summary = run_load(
        args.target, args.request.read_bytes(), args.concurrency, args.duration, args.warmup, procs
    )
    print(json.dumps(summary))
    return 0


def default_procs(concurrency: int) -> int:
    """One process up to 8 streams; two beyond, which measured enough on two cores."""
    return 1 if concurrency <= 8 else min(2, os.cpu_count() or 1)


if __name__ == "__main__":
    sys.exit(main())
