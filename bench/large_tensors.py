"""Large tensors through this server and NVIDIA's tritonserver, on a Python-backend identity.

    .venv/bin/python bench/large_tensors.py           # 3 repeats of 4 s after 1 s warm-up
    .venv/bin/python bench/large_tensors.py --sizes 150528 --seconds 2 --repeats 1

The other scenarios send 16 floats, so they measure the per-request path; here the tensor is
the cost: a 3x224x224 FP32 image (150,528 elements, 588 KiB) and 4 MiB (1,048,576 elements),
shape [1, N], through the model ``identity_large`` (max_batch_size 8, dims [-1], no dynamic
batching), which returns its input. What a large tensor costs shows up as copies and as
memory the allocator maps and gives back, so beside requests/s and p50 latency each cell
charges the server's process tree for its CPU time and its minor page faults per request,
and records its resident memory.

Load comes from NVIDIA's own client, ``tritonclient``: HTTP with binary tensors both ways and
gRPC; concurrency N is N synchronous clients, each on a thread of its own, in a closed loop
(tritonclient's asyncio HTTP client sends a large body at a small fraction of the
synchronous one's rate, to either server, so it would measure itself). Each repeat starts each server afresh and runs them one
after the other, the first of them alternating between repeats. Before each cell one answer
must equal its input. Results go to bench/results/large_tensors.{json,md}: medians over
repeats, each repeat's figures in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import models  # noqa: E402
from bench.run import machine  # noqa: E402
from bench.targets import (
    Ours,
    Target,
    Triton,
    start_reported,
    tree,
    tree_cpu_seconds,
    tree_rss_bytes,
)  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "identity_large"
SIZES = (150528, 1048576)
PROTOCOLS = ("http-binary", "grpc")
CONCURRENCIES = (1, 8)
MAX_MESSAGE = 2**30
SERVER_ORDER = {"ours": 0, "triton": 1}
METRICS = ("rps", "p50_ms", "server_cpu_us_per_req", "faults_per_req", "server_rss_mb")

CONFIG = f"""\
name: "{MODEL}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def write_repository(root: Path) -> Path:
    """A model repository holding only ``identity_large`` (bench/models.py's identity model.py)."""
    version = root / MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    (root / MODEL / "config.pbtxt").write_text(CONFIG)
    (version / "model.py").write_text(models.PYTHON_IDENTITY)
    return root


def _fresh_repository(root: Path) -> None:
    """The target's own repository folder, emptied of anything a run before left there."""
    shutil.rmtree(root, ignore_errors=True)
    write_repository(root)


class _LargeIdentityOnly(Target):
    """A server with ``identity_large`` alone in its repository, written afresh at start."""

    def serves(self) -> tuple[models.ModelSpec, ...]:
        return ()

    def start(self) -> None:
        _fresh_repository(self.workdir / "models")
        super().start()


class LargeOurs(_LargeIdentityOnly, Ours):
    """Our server with ``identity_large`` alone in its repository."""


class LargeTriton(_LargeIdentityOnly, Triton):
    """tritonserver with ``identity_large`` alone in its repository."""


# -- accounting -------------------------------------------------------------------------------


def minor_faults(stat: str) -> int:
    """Field 10 (minflt) of a /proc/<pid>/stat line; the command name may hold spaces."""
    return int(stat[stat.rindex(")") + 2 :].split()[7])


def tree_minor_faults(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += minor_faults(Path(f"/proc/{proc.pid}/stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return total


def size_label(elements: int) -> str:
    size = elements * 4
    if size % 2**20 == 0:
        return f"{elements} ({size // 2**20} MiB)"
    return f"{elements} ({size / 1024:.0f} KiB)"


# -- load -------------------------------------------------------------------------------------


def make_data(elements: int) -> np.ndarray:
    return np.random.default_rng(elements).random((1, elements), dtype=np.float32)


def _client_module(protocol: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as grpc_client

        return grpc_client
    import tritonclient.http as http_client

    return http_client


def _request(module: Any, protocol: str, data: np.ndarray) -> tuple[list[Any], list[Any]]:
    tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
    if protocol == "grpc":
        tensor.set_data_from_numpy(data)
        return [tensor], [module.InferRequestedOutput("OUTPUT0")]
    tensor.set_data_from_numpy(data, binary_data=True)
    return [tensor], [module.InferRequestedOutput("OUTPUT0", binary_data=True)]


def _sync_client(target: Target, protocol: str) -> Any:
    module = _client_module(protocol)
    if protocol == "grpc":
        return module.InferenceServerClient(f"127.0.0.1:{target.grpc_port}")
    return module.InferenceServerClient(
        f"127.0.0.1:{target.http_port}", connection_timeout=60.0, network_timeout=60.0
    )


def check_answer(target: Target, protocol: str, data: np.ndarray) -> None:
    """One request before the load; its answer must equal the input."""
    module = _client_module(protocol)
    inputs, outputs = _request(module, protocol, data)
    client = _sync_client(target, protocol)
    try:
        output = client.infer(MODEL, inputs, outputs=outputs).as_numpy("OUTPUT0")
    finally:
        client.close()
    if output is None or not np.array_equal(output, data):
        shape = None if output is None else output.shape
        raise AssertionError(
            f"{target.name} {protocol} [1, {data.shape[1]}]: the identity's answer differs "
            f"from its input (output shape {shape})"
        )


class Window:
    """What one measured window saw: latencies of completed requests, errors, wall time."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.seconds = 0.0


def _one(call: Callable[[], Any], shape: tuple[int, ...], window: Window) -> None:
    started = time.perf_counter()
    try:
        output = call().as_numpy("OUTPUT0")
        if output is None or output.shape != shape:
            raise AssertionError(f"output {None if output is None else output.shape}")
    except Exception:
        window.errors += 1
        return
    window.latencies.append(time.perf_counter() - started)


def _load(
    target: Target,
    protocol: str,
    data: np.ndarray,
    phases: list[float],
    mark: Callable[[], None],
    concurrency: int,
) -> Window:
    """``concurrency`` synchronous clients in a closed loop, each with a client of its own on
    a thread of its own (the asyncio HTTP client sends a large body at a small fraction of
    the synchronous one's rate, to either server, so it would measure itself). Every phase
    starts when all clients have finished the one before; the server is charged from the
    start of the last phase to the moment its last client is done. The last phase's window
    is returned."""
    clock: list[float] = []

    def boundary() -> None:
        mark()
        clock.append(time.perf_counter())

    barrier = threading.Barrier(concurrency, action=boundary)
    windows = [[Window() for _ in phases] for _ in range(concurrency)]

    def client_loop(mine: list[Window]) -> None:
        try:
            module = _client_module(protocol)
            inputs, outputs = _request(module, protocol, data)
            client = _sync_client(target, protocol)
        except BaseException:
            barrier.abort()  # the other clients stop waiting for this one
            raise
        try:
            for seconds, window in zip(phases, mine, strict=True):
                barrier.wait()
                deadline = clock[-1] + seconds
                while time.perf_counter() < deadline:
                    _one(lambda: client.infer(MODEL, inputs, outputs=outputs), data.shape, window)
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(mine,)) for mine in windows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(clock) != len(phases) + 1:
        raise RuntimeError(f"{target.name} {protocol}: a client failed before the load ended")
    last = Window()
    for mine in windows:
        last.latencies.extend(mine[-1].latencies)
        last.errors += mine[-1].errors
    last.seconds = clock[-1] - clock[-2]
    return last


def measure_cell(
    target: Target,
    protocol: str,
    elements: int,
    concurrency: int,
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    """Check one answer, warm up, then load for ``seconds`` while the server's process tree
    is charged for its CPU time and minor page faults."""
    data = make_data(elements)
    check_answer(target, protocol, data)
    phases = [warmup, seconds] if warmup > 0 else [seconds]
    marks: list[tuple[float, int]] = []

    def mark() -> None:
        marks.append((tree_cpu_seconds(target.pid), tree_minor_faults(target.pid)))

    window = _load(target, protocol, data, phases, mark, concurrency)
    (cpu0, faults0), (cpu1, faults1) = marks[-2], marks[-1]
    done = len(window.latencies)
    return {
        "server": target.name,
        "protocol": protocol,
        "size": elements,
        "concurrency": concurrency,
        "requests": done,
        "errors": window.errors,
        "seconds": window.seconds,
        "rps": done / window.seconds if window.seconds > 0 else 0.0,
        "p50_ms": statistics.median(window.latencies) * 1000 if done else None,
        "server_cpu_us_per_req": (cpu1 - cpu0) / max(done, 1) * 1e6,
        "faults_per_req": (faults1 - faults0) / max(done, 1),
        "server_rss_mb": tree_rss_bytes(target.pid) / 2**20,
    }


# -- report -----------------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (size, protocol, concurrency, server): medians over repeats; errors are
    the total over repeats, so one bad repeat is not hidden by two good ones."""
    cells: dict[tuple[int, str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["size"], row["protocol"], row["concurrency"], row["server"])
        cells.setdefault(key, []).append(row)
    summary = []
    for key in sorted(
        cells, key=lambda k: (k[0], PROTOCOLS.index(k[1]), k[2], SERVER_ORDER.get(k[3], 9))
    ):
        runs = cells[key]
        size, protocol, concurrency, server = key
        entry: dict[str, Any] = {
            "size": size,
            "protocol": protocol,
            "concurrency": concurrency,
            "server": server,
        }
        entry["repeats"] = len(runs)
        entry["errors"] = sum(r["errors"] for r in runs)
        for metric in METRICS:
            entry[metric] = _median(r.get(metric) for r in runs)
        summary.append(entry)
    return summary


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or not theirs:
        return "-"
    return f"{mine / theirs:.2f}"


def table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| size | protocol | concurrency | server | req/s | p50 ms | server CPU-us/req "
        "| faults/req | RSS MB | errors |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in summary:
        lines.append(
            f"| {size_label(e['size'])} | {e['protocol']} | {e['concurrency']} | {e['server']} "
            f"| {_fmt(e['rps'])} | {_fmt(e['p50_ms'], 2)} | {_fmt(e['server_cpu_us_per_req'])} "
            f"| {_fmt(e['faults_per_req'], 1)} | {_fmt(e['server_rss_mb'])} | {e['errors']} |"
        )
    return "\n".join(lines)


def ratios(summary: list[dict[str, Any]]) -> list[str]:
    """Per (size, protocol, concurrency): ours against tritonserver, where both ran."""
    by_key = {(e["size"], e["protocol"], e["concurrency"], e["server"]): e for e in summary}
    lines = []
    for e in summary:
        if e["server"] != "ours":
            continue
        theirs = by_key.get((e["size"], e["protocol"], e["concurrency"], "triton"))
        if theirs is None:
            continue
        lines.append(
            f"- {size_label(e['size'])} {e['protocol']} c={e['concurrency']}: "
            f"req/s {_ratio(e['rps'], theirs['rps'])}, "
            f"CPU-us/req {_ratio(e['server_cpu_us_per_req'], theirs['server_cpu_us_per_req'])}"
        )
    return lines


def markdown(info: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    m = info["machine"]
    s = info["settings"]
    lines = [
        "# Large tensors (Python identity, FP32 [1, N])",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}; "
        f"commit {m['commit']}.",
        f"Command: `{info['command']}`; medians of {s['repeats']} "
        f"{'repeat' if s['repeats'] == 1 else 'repeats'} of "
        f"{s['seconds']:g} s after {s['warmup_s']:g} s of warm-up.",
        f"Settings: model `{MODEL}` (backend python, max_batch_size 8, dims [-1], no dynamic "
        f"batching); sizes {', '.join(size_label(n) for n in s['sizes'])}; protocols "
        f"{', '.join(s['protocols'])} (tritonclient, binary tensors over HTTP); concurrency "
        f"{', '.join(map(str, s['concurrencies']))} (as many synchronous clients, each on its "
        "own thread, closed loop); servers run one after the other, each started afresh every "
        "repeat, the first alternating.",
    ]
    if "load_start" in info and "load_end" in info:
        lines.append(
            f"Load average (1 min) at start {info['load_start']:.2f}, "
            f"at end {info['load_end']:.2f}."
        )
    for name, reason in info.get("skipped", {}).items():
        lines.append(f"Not run: {name} ({reason}).")
    lines += [
        "",
        "Server CPU-us/req and faults/req are the server's whole process tree (user + system "
        "time; minor page faults, /proc/<pid>/stat field 10) over the measured window divided "
        "by completed requests; RSS is the tree's at the end of the cell; errors are the total "
        "over repeats.",
        "",
        table(summary),
    ]
    compared = ratios(summary)
    if compared:
        lines += [
            "",
            "Ours / tritonserver (req/s: above 1 is faster; CPU: below 1 is cheaper):",
            "",
        ]
        lines += compared
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value:g}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument(
        "--sizes",
        type=_positive_int,
        nargs="+",
        default=list(SIZES),
        metavar="N",
        help="FP32 elements per tensor, shape [1, N] (default: 150528 1048576)",
    )
    parser.add_argument("--seconds", type=_non_negative, default=4.0, help="measured seconds")
    parser.add_argument("--warmup", type=_non_negative, default=1.0, help="warm-up seconds")
    parser.add_argument("--repeats", type=_positive_int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-large"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be above 0")
    return args


def _targets(workdir: Path) -> tuple[list[Target], dict[str, str]]:
    cache = workdir / "cache"  # unused: the repositories hold no ONNX model
    targets: list[Target] = [LargeOurs(workdir, cache)]
    skipped: dict[str, str] = {}
    triton = LargeTriton(workdir, cache)
    reason = triton.available()
    if reason:
        print(f"skipping triton: {reason}", flush=True)
        skipped["triton"] = reason
    else:
        targets.append(triton)
    return targets, skipped


def run_target(target: Target, args: argparse.Namespace, repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    start_reported(target)
    try:
        for elements in args.sizes:
            for protocol in PROTOCOLS:
                if protocol not in target.protocols:
                    print(f"    {target.name} does not serve {protocol}: skipped", flush=True)
                    continue
                for concurrency in CONCURRENCIES:
                    row = measure_cell(
                        target, protocol, elements, concurrency, args.seconds, args.warmup
                    )
                    row["repeat"] = repeat
                    rows.append(row)
                    print("    " + json.dumps(row), flush=True)
    finally:
        target.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets, skipped = _targets(args.workdir)
    info: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "settings": {
            "repeats": args.repeats,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "sizes": args.sizes,
            "protocols": list(PROTOCOLS),
            "concurrencies": list(CONCURRENCIES),
            "model": MODEL,
        },
        "skipped": skipped,
        "load_start": os.getloadavg()[0],
    }
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        order = targets if repeat % 2 == 0 else targets[::-1]
        for target in order:
            rows += run_target(target, args, repeat)
    info["load_end"] = os.getloadavg()[0]
    summary = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"info": info, "summary": summary, "rows": rows}
    (args.out / "large_tensors.json").write_text(json.dumps(document, indent=1))
    text = markdown(info, summary)
    (args.out / "large_tensors.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
