"""Thin front-end processes and one core process: the multi-process layout that keeps the
models, batchers and statistics in one place, built far enough to be measured.

    .venv/bin/python bench/frontends.py layout --fronts 2 --http-port P --grpc-port G \
        --core-http-port CP --core-grpc-port CG --model-repository DIR [server flags]

starts the core process (``core``, the server's flags after the layout's) and two front-end
processes (``front``) as its children.

The core process is the server as it runs alone (its own ports answer probes and the
statistics) and also accepts inference requests over a Unix socket. Each front-end process
binds the public HTTP and gRPC ports with SO_REUSEPORT, so the kernel spreads connections
over them. It parses HTTP, JSON and gRPC with the server's own listeners and codecs, and
forwards each decoded request to the core as one length-prefixed ``marshal`` message
(tensors as raw bytes), many in flight on one connection; the answer comes back the same
way and is encoded there. Only inference is forwarded (a prototype for the measurement in
``bench/multiprocess.py``, not a layout the server offers): the front end answers every
other HTTP route with 404 and serves no other gRPC method, and shared-memory inputs are not
resolved.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import marshal
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.errors import Code, ServerError  # noqa: E402
from server.tensors import from_buffer, to_bytes  # noqa: E402
from server.types import (  # noqa: E402
    InferInput,
    InferRequest,
    InferResponse,
    OutputTensor,
    RequestedOutput,
)

_HEAD = struct.Struct("<I")
READY = "front end listening"


def encode_request(key: int, request: InferRequest) -> bytes:
    outputs = None if request.outputs is None else [(o.name, o.parameters) for o in request.outputs]
    inputs = [
        (i.name, i.datatype, i.shape, i.parameters, bytes(to_bytes(i.data, i.datatype)))
        for i in request.inputs
    ]
    body = marshal.dumps(
        (
            key,
            request.model_name,
            request.model_version,
            request.id,
            request.parameters,
            inputs,
            outputs,
        )
    )
    return _HEAD.pack(len(body)) + body


def decode_request(body: bytes) -> tuple[int, InferRequest]:
    key, model, version, request_id, parameters, inputs, outputs = marshal.loads(body)
    return key, InferRequest(
        model_name=model,
        model_version=version,
        inputs=[
            InferInput(
                name, datatype, tuple(shape), from_buffer(data, datatype, shape, name), params
            )
            for name, datatype, shape, params, data in inputs
        ],
        outputs=None if outputs is None else [RequestedOutput(n, p) for n, p in outputs],
        id=request_id,
        parameters=parameters,
    )


def encode_response(key: int, result: InferResponse | ServerError) -> bytes:
    if isinstance(result, ServerError):
        message: Any = (key, False, result.code.name, result.message)
    else:
        message = (
            key,
            True,
            (result.model_name, result.model_version, result.id, result.parameters),
            [
                (o.name, o.datatype, o.shape, o.parameters, bytes(to_bytes(o.data, o.datatype)))
                for o in result.outputs
            ],
        )
    body = marshal.dumps(message)
    return _HEAD.pack(len(body)) + body


def decode_response(body: bytes) -> tuple[int, InferResponse | ServerError]:
    message = marshal.loads(body)
    key, ok = message[0], message[1]
    if not ok:
        return key, ServerError(Code[message[2]], message[3])
    (model, version, response_id, parameters), outputs = message[2], message[3]
    return key, InferResponse(
        model,
        version,
        [
            OutputTensor(name, datatype, tuple(shape), from_buffer(data, datatype, shape, name), p)
            for name, datatype, shape, p, data in outputs
        ],
        response_id,
        parameters,
    )


class _Framed(asyncio.Protocol):
    """Length-prefixed messages in, ``on_message`` per message; writes are the caller's."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self._buffer = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 4:
            (size,) = _HEAD.unpack_from(buffer, start)
            if len(buffer) - start - 4 < size:
                break
            self.on_message(bytes(buffer[start + 4 : start + 4 + size]))
            start += 4 + size
        del buffer[:start]

    def on_message(self, body: bytes) -> None:
        raise NotImplementedError


class _CoreSide(_Framed):
    def __init__(self, core: Any) -> None:
        super().__init__()
        self.core = core

    def on_message(self, body: bytes) -> None:
        key, request = decode_request(body)
        asyncio.ensure_future(self._answer(key, request))

    async def _answer(self, key: int, request: InferRequest) -> None:
        try:
            result: InferResponse | ServerError = await self.core.infer(request)
        except ServerError as exc:
            result = exc
        if not self.transport.is_closing():
            self.transport.write(encode_response(key, result))


class _FrontSide(_Framed):
    def __init__(self) -> None:
        super().__init__()
        self.waiting: dict[int, asyncio.Future[Any]] = {}

    def on_message(self, body: bytes) -> None:
        key, result = decode_response(body)
        future = self.waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        gone = ServerError(Code.UNAVAILABLE, "the core process closed its socket")
        for future in self.waiting.values():
            if not future.done():
                future.set_result(gone)
        self.waiting.clear()


class RemoteCore:
    """What the HTTP front end needs of the core: ``infer``, answered by the core process."""

    def __init__(self, side: _FrontSide) -> None:
        self.side = side
        self.keys = itertools.count()

    async def infer(self, request: InferRequest) -> InferResponse:
        key = next(self.keys)
        future = asyncio.get_running_loop().create_future()
        self.side.waiting[key] = future
        self.side.transport.write(encode_request(key, request))
        result = await future
        if isinstance(result, ServerError):
            raise result
        return result

    def model_view(self, model: str, version: str) -> Any:
        raise ServerError(Code.UNSUPPORTED, "raw binary requests are not forwarded")


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def run_core(argv: list[str], path: str) -> int:
    from server.app import ServerApp, build_core, load_initial_models
    from server.cli import parse_args

    settings = parse_args(argv)
    core = build_core(settings)
    core.activate()
    await load_initial_models(core, settings)
    core.started = True
    app = ServerApp(settings, core)
    await app.start()
    Path(path).unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    await loop.create_unix_server(lambda: _CoreSide(core), path)
    await asyncio.Event().wait()
    return 0


def _shared_port(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


async def run_front(path: str, http_port: int, grpc_port: int) -> int:
    from server.grpc.listener import GrpcListener, method_table
    from server.grpc.servicer import InferenceServicer
    from server.http.app import InferEndpoint
    from server.http.server import HttpServer
    from server.protocol.generated import grpc_service_pb2

    loop = asyncio.get_running_loop()
    _, side = await loop.create_unix_connection(_FrontSide, path)
    core: Any = RemoteCore(side)
    endpoint = InferEndpoint(core, 64 * 1024 * 1024)
    http = HttpServer(_not_found, infer=endpoint.answer_request, too_large=endpoint.too_large)
    await http.start(_shared_port(http_port))
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    grpc = GrpcListener(method_table([(service, InferenceServicer(core, None))]))
    await grpc.start(_shared_port(grpc_port), None)
    print(READY, flush=True)
    await asyncio.Event().wait()
    return 0


def run_layout(args: argparse.Namespace, rest: list[str]) -> int:
    """The core and ``--fronts`` front ends as children of this process, so that one process
    tree holds the layout's CPU time and memory; stops them all on SIGTERM."""
    socket_path = str(Path(tempfile.mkdtemp(prefix="frontends-")) / "core.sock")
    me = [sys.executable, str(Path(__file__).resolve())]
    core_ports = ["--http-port", str(args.core_http_port), "--grpc-port", str(args.core_grpc_port)]
    children = [subprocess.Popen([*me, "core", "--socket", socket_path, *core_ports, *rest])]
    deadline = time.monotonic() + 180
    while not Path(socket_path).exists():
        if children[0].poll() is not None or time.monotonic() > deadline:
            children[0].kill()
            return 1
        time.sleep(0.05)
    ports = ["--http-port", str(args.http_port), "--grpc-port", str(args.grpc_port)]
    for _ in range(args.fronts):
        children.append(subprocess.Popen([*me, "front", "--socket", socket_path, *ports]))
    signal.signal(signal.SIGTERM, lambda *_: [c.terminate() for c in children])
    for child in children:
        child.wait()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("core", "front", "layout"))
    parser.add_argument("--socket", help="the core's Unix socket (core, front)")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--fronts", type=int, default=2, help="front ends (layout)")
    parser.add_argument("--core-http-port", type=int, default=0, help="(layout)")
    parser.add_argument("--core-grpc-port", type=int, default=0, help="(layout)")
    args, rest = parser.parse_known_args()
    if args.role == "layout":
        return run_layout(args, rest)
    import uvloop

    if args.role == "core":
        ports = ["--http-port", str(args.http_port), "--grpc-port", str(args.grpc_port)]
        work = run_core([*rest, *ports], args.socket)
    else:
        work = run_front(args.socket, args.http_port, args.grpc_port)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work)


if __name__ == "__main__":
    sys.exit(main())
