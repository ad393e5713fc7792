"""Instructions per request of the server's own request path, counted by valgrind's callgrind.

    .venv/bin/python bench/instructions.py [--model identity_py] [--protocol http-json]
    .venv/bin/python bench/instructions.py --root /tmp/base     # an exported older tree
    .venv/bin/python bench/instructions.py --concurrency 32     # the batched path
    .venv/bin/python bench/instructions.py --sockets --concurrency 32   # the whole server

Timings on a shared two-core machine move by tens of percent between runs (bench/run.py
reports the spread); an instruction count does not, so a change of a few percent in the
request path can be measured before and after. In process and without sockets, one
request at a time, the body of the benchmark's scenario is decoded by the server's codec,
inferred by its core (validation, scheduler, the model's instance) and its answer encoded.
With ``--concurrency K``, K such requests are sent at once, each as its own task as the
listeners make them, so a model with dynamic batching runs them as batches, as it does under
the load of the socket benchmarks.
The same program runs twice under callgrind, with N and 4N requests after the same warm-up,
and the difference of the two totals over 3N is one request: start-up, imports and model
loading cancel out. What it leaves out: the listeners, the event loop's I/O and the kernel
(bench/run.py and bench/floors.py measure those), and a model's own threads where they run
(ONNX Runtime's pool), whose counts are less steady.

With ``--sockets`` the whole server is counted instead: ``python -m server`` runs under
callgrind with the one model, the scenario's load generator (wrk or h2load) warms it up,
callgrind's counters are zeroed, the load runs for ``--seconds``, and the counters are dumped;
the total over the requests the model's statistics counted in between is one request with
everything the process does for it: the listener, the event loop's I/O, the model's thread,
and the requests per execution that the load gave (reported beside it). The server runs
about fifty times slower under valgrind, so its batches are those of a slower server; compare
counts taken with the same load.

Needs valgrind (apt-get install -y valgrind). ``--root`` runs the request path of another
source tree against this one's benchmark models.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure, models, payloads, targets  # noqa: E402
from bench.scenarios import Scenario  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
_DUMPED = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)
WARMUP = 50


def collected(valgrind_output: str) -> int:
    """The instruction total of a callgrind run, from its summary on stderr."""
    match = _COLLECTED.search(valgrind_output)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{valgrind_output}")
    return int(match.group(1))


def dumped(dump: str) -> int:
    """The instruction total of a callgrind dump file (``callgrind_control --dump``)."""
    match = _DUMPED.search(dump)
    if match is None:
        raise RuntimeError("no total in callgrind's dump")
    return int(match.group(1))


def request_path(protocol: str, model: str, body: bytes, header_length: int | None) -> Any:
    """One request's way through the server's codec and core, as a coroutine function (of
    the core) that answers with the encoded reply."""
    from server.protocol import grpc_codec, http_codec

    if protocol == "grpc":

        async def grpc_request(core: Any) -> bytes:
            message = grpc_codec.parse_infer_request(body)
            response = await core.infer(grpc_codec.decode_infer_request(message))
            return bytes(grpc_codec.encode_unary_response(response).SerializeToString())

        return grpc_request

    async def http_request(core: Any) -> bytes:
        request = http_codec.decode_infer_request(bytearray(body), header_length, model, "")
        reply, _ = http_codec.encode_infer_response(await core.infer(request), request)
        return reply

    return http_request


async def serve_requests(
    repository: Path, model: str, answer: Callable[..., Any], count: int, concurrency: int = 1
) -> bytes:
    """Load ``model`` from ``repository`` and send it ``WARMUP`` + ``count`` rounds of
    ``concurrency`` requests at once; the last reply."""
    from server.core import Core, CoreOptions
    from server.devices import FakeDeviceLayer
    from server.repository.manager import ModelManager
    from server.scheduler import create_scheduler

    # The benchmark's models run on the CPU: no device discovery (NVML) in the counted runs.
    manager = ModelManager([repository], create_scheduler, devices=FakeDeviceLayer())
    await manager.load(model)
    core = Core(manager, CoreOptions())
    reply = b""
    for _ in range(WARMUP + count):
        if concurrency == 1:
            reply = await answer(core)
        else:
            replies = await asyncio.gather(*(answer(core) for _ in range(concurrency)))
            reply = replies[-1]
    return reply


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(args.root))
    import uvloop

    payload = payloads.build(args.protocol, args.model, models.BY_NAME[args.model].input_size)
    answer = request_path(args.protocol, args.model, payload.body, payload.header_length)
    uvloop.run(serve_requests(args.repository, args.model, answer, args.requests, args.concurrency))


def count_instructions(args: argparse.Namespace, repository: Path, requests: int) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    command = [
        valgrind,
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--root",
        str(args.root),
        "--repository",
        str(repository),
        "--model",
        args.model,
        "--protocol",
        args.protocol,
        "--requests",
        str(requests),
        "--concurrency",
        str(args.concurrency),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=args.root)
    if done.returncode != 0:
        raise RuntimeError(f"the counted run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return collected(done.stderr)


def count_through_sockets(args: argparse.Namespace, workdir: Path) -> tuple[float, float]:
    """(instructions per request, requests per execution) of the whole server under load."""
    valgrind = shutil.which("valgrind")
    control = shutil.which("callgrind_control")
    if valgrind is None or control is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    spec = models.BY_NAME[args.model]
    dumps = workdir / "callgrind"
    dumps.mkdir()
    prefix = (valgrind, "--tool=callgrind", f"--callgrind-out-file={dumps}/callgrind.%p")
    target = targets.Ours(workdir, args.cache, only=(spec,), prefix=prefix)
    scenario = Scenario(args.model, args.model, args.protocol, args.concurrency, ("ours",))
    try:
        target.start()
        load = measure.load_runner(target, args.model, scenario, workdir)
        load(args.warmup)
        before = measure.model_counts(target, args.model)
        subprocess.run([control, "--zero", str(target.pid)], capture_output=True, check=True)
        load(args.seconds)
        subprocess.run(
            [control, "--dump=measured", str(target.pid)], capture_output=True, check=True
        )
        after = measure.model_counts(target, args.model)
    finally:
        target.stop()
    measured = [path for path in dumps.iterdir() if path.name.endswith(".1")]
    if len(measured) != 1:
        raise RuntimeError(f"expected one dump of the measured load, found {measured}")
    requests = after[0] - before[0]
    executions = after[1] - before[1]
    if requests <= 0 or executions <= 0:
        raise RuntimeError(f"no requests were served under valgrind:\n{target.log_tail()}")
    return dumped(measured[0].read_text()) / requests, requests / executions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="identity_py", choices=sorted(models.BY_NAME))
    parser.add_argument("--protocol", default="http-json", choices=payloads.PROTOCOLS)
    parser.add_argument("--requests", type=int, default=1000, help="N: the runs send N and 4N")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests sent at once (batches form)"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="the server's source tree")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench-models" / models.fingerprint(),
    )
    parser.add_argument(
        "--sockets", action="store_true", help="count the whole server under a load generator"
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="--sockets: measured load")
    parser.add_argument("--warmup", type=float, default=4.0, help="--sockets: load before it")
    parser.add_argument("--repository", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    if args.child:
        child(args)
        return 0
    if args.sockets:
        # The server starts from --root (targets.Ours reads BENCH_OURS_ROOT).
        os.environ["BENCH_OURS_ROOT"] = str(args.root)
        with tempfile.TemporaryDirectory(prefix="bench-instructions-") as workdir:
            per_request, batch = count_through_sockets(args, Path(workdir))
        print(
            f"{args.model} {args.protocol} c={args.concurrency} through the sockets: "
            f"{per_request:,.0f} instructions per request, {batch:.1f} requests per execution"
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as workdir:
        spec = models.BY_NAME[args.model]
        repository = models.write_repository(Path(workdir), (spec,), args.cache)
        few = count_instructions(args, repository, args.requests)
        many = count_instructions(args, repository, 4 * args.requests)
    per_request = (many - few) / (3 * args.requests * args.concurrency)
    print(
        f"{args.model} {args.protocol} c={args.concurrency} ({args.root}): "
        f"{per_request:,.0f} instructions per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
