"""Instructions per request of the server's own request path, counted by valgrind's callgrind.

    .venv/bin/python bench/instructions.py [--model identity_py] [--protocol http-json]
    .venv/bin/python bench/instructions.py --root /tmp/base     # an exported older tree

Timings on a shared two-core machine move by tens of percent between runs (bench/run.py
reports the spread); an instruction count does not, so a change of a few percent in the
request path can be measured before and after. In process and without sockets, one
request at a time, the body of the benchmark's scenario is decoded by the server's codec,
inferred by its core (validation, scheduler, the model's instance) and its answer encoded.
The same program runs twice under callgrind, with N and 4N requests after the same warm-up,
and the difference of the two totals over 3N is one request: start-up, imports and model
loading cancel out. What it leaves out: the listeners, the event loop's I/O and the kernel
(bench/run.py and bench/floors.py measure those), and a model's own threads where they run
(ONNX Runtime's pool), whose counts are less steady.

Needs valgrind (apt-get install -y valgrind). ``--root`` runs the request path of another
source tree against this one's benchmark models.
"""

from __future__ import annotations

import argparse
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

from bench import models, payloads  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
WARMUP = 50


def collected(valgrind_output: str) -> int:
    """The instruction total of a callgrind run, from its summary on stderr."""
    match = _COLLECTED.search(valgrind_output)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{valgrind_output}")
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
    repository: Path, model: str, answer: Callable[..., Any], count: int
) -> bytes:
    """Load ``model`` from ``repository`` and send it ``WARMUP`` + ``count`` requests; the
    last reply."""
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
        reply = await answer(core)
    return reply


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(args.root))
    import uvloop

    payload = payloads.build(args.protocol, args.model, models.BY_NAME[args.model].input_size)
    answer = request_path(args.protocol, args.model, payload.body, payload.header_length)
    uvloop.run(serve_requests(args.repository, args.model, answer, args.requests))


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
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=args.root)
    if done.returncode != 0:
        raise RuntimeError(f"the counted run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return collected(done.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="identity_py", choices=sorted(models.BY_NAME))
    parser.add_argument("--protocol", default="http-json", choices=payloads.PROTOCOLS)
    parser.add_argument("--requests", type=int, default=1000, help="N: the runs send N and 4N")
    parser.add_argument("--root", type=Path, default=ROOT, help="the server's source tree")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench-models" / models.fingerprint(),
    )
    parser.add_argument("--repository", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    if args.child:
        child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as workdir:
        spec = models.BY_NAME[args.model]
        repository = models.write_repository(Path(workdir), (spec,), args.cache)
        few = count_instructions(args, repository, args.requests)
        many = count_instructions(args, repository, 4 * args.requests)
    per_request = (many - few) / (3 * args.requests)
    print(
        f"{args.model} {args.protocol} ({args.root}): {per_request:,.0f} instructions per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
