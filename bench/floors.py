"""What the front-end stacks cost with no model and no server logic behind them.

    .venv/bin/python bench/floors.py          # 3 repeats of 5 s after 2 s of warm-up, c=32

Each stack answers every request with the same canned identity response, under the same load
generators as bench/run.py (wrk for HTTP, h2load for gRPC), and is charged the CPU time of its
process per answered request:

- ``asyncio+httptools``: a bare asyncio Protocol feeding httptools, one write per response;
  the least any Python HTTP/1.1 server on this event loop can spend.
- ``uvicorn ASGI``: uvicorn with httptools and a minimal ASGI app (no framework).
- ``server listener``: this server's own HTTP listener (``server.http.server``) with an infer
  handler that returns the canned reply.
- ``grpcio aio``: grpcio's asyncio server with a generic unary handler returning canned bytes.
- ``server gRPC listener``: this server's own gRPC listener (``server.grpc.listener``) with a
  ModelInfer that neither parses the request nor serializes a reply, as the grpcio one.

The gap between the floor of a stack and the server's figure in bench/run.py is what the
server's own decoding, scheduling, model and encoding cost. Results go to
bench/results/floors.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import grpc_load, http_load, payloads  # noqa: E402
from bench.targets import free_port, tree_cpu_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONNECTIONS = 32
_REPLY = (
    b'{"model_name":"identity","model_version":"1","outputs":[{"name":"OUTPUT0",'
    b'"datatype":"FP32","shape":[1,16],"data":[0.0,1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0,9.0,'
    b"10.0,11.0,12.0,13.0,14.0,15.0]}]}"
)

# Each stack as a small program: argv[1] is the port; it serves until killed.
PROGRAMS = {
    "asyncio+httptools": """
import asyncio, socket, sys, httptools, uvloop
BODY = %(reply)r
RESPONSE = (b"HTTP/1.1 200 OK\\r\\ncontent-length: %%d\\r\\ncontent-type: application/json\\r\\n\\r\\n"
            %% len(BODY) + BODY)
class Connection(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_message_complete(self):
        self.transport.write(RESPONSE)
async def main():
    server = await asyncio.get_running_loop().create_server(Connection, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
""",
    "uvicorn ASGI": """
import sys, uvicorn
BODY = %(reply)r
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
async def app(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            access_log=False, log_level="warning", server_header=False, date_header=False,
            lifespan="off")
""",
    "server listener": """
import asyncio, sys, uvloop
from server.app import bind_socket
from server.http.server import HttpServer, Reply
BODY = %(reply)r
async def infer(request, model, version):
    request.body()
    return Reply(200, BODY)
async def main():
    listener = HttpServer(None, infer=infer)
    await listener.start(bind_socket("127.0.0.1", int(sys.argv[1])))
    await asyncio.Event().wait()
uvloop.run(main())
""",
    "grpcio aio": """
import asyncio, sys, grpc, uvloop
from server.protocol.generated import grpc_service_pb2 as pb
from bench import payloads
REPLY = pb.ModelInferResponse(model_name="identity", model_version="1")
out = REPLY.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 16])
REPLY.raw_output_contents.append(payloads.input_array(16).astype("<f4").tobytes())
BODY = REPLY.SerializeToString()
async def infer(request, context):
    return BODY
async def main():
    server = grpc.aio.server()
    method = grpc.unary_unary_rpc_method_handler(infer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": method}),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
uvloop.run(main())
""",
    "server gRPC listener": """
import asyncio, sys, uvloop
from server.app import bind_socket
from server.grpc.listener import GrpcListener, method_table
from server.protocol.generated import grpc_service_pb2 as pb
from bench import payloads
REPLY = pb.ModelInferResponse(model_name="identity", model_version="1")
out = REPLY.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 16])
REPLY.raw_output_contents.append(payloads.input_array(16).astype("<f4").tobytes())
class Canned:
    def SerializeToString(self):
        return BODY
BODY, CANNED = REPLY.SerializeToString(), Canned()
async def infer(request, context):
    return CANNED
class Service:
    def __getattr__(self, name):
        return infer
async def main():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = method_table([(service, Service())])
    methods[b"/inference.GRPCInferenceService/ModelInfer"].decode = bytes
    listener = GrpcListener(methods)
    await listener.start(bind_socket("127.0.0.1", int(sys.argv[1])))
    await asyncio.Event().wait()
uvloop.run(main())
""",
}


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the stack exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout:.0f}s")


def measure(name: str, seconds: float, warmup: float, workdir: Path) -> dict[str, Any]:
    port = free_port()
    source = PROGRAMS[name] % {"reply": _REPLY}
    proc = subprocess.Popen(
        [sys.executable, "-c", source, str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        _wait_listening(port, proc)
        if "grpc" in name.lower():
            payload = payloads.build("grpc", "identity", 16)
            body = workdir / "floor.grpc"
            body.write_bytes(grpc_load.frame(payload.body))
            log = workdir / "floor.log"

            def once(duration: float) -> dict[str, Any]:
                return grpc_load.run_h2load(port, body, log, CONNECTIONS, duration, 0)
        else:
            script = http_load.write_script(
                workdir, "floor", payloads.build("http-json", "identity", 16)
            )
            url = f"http://127.0.0.1:{port}/v2/models/identity/infer"

            def once(duration: float) -> dict[str, Any]:
                return http_load.run_wrk(url, script, CONNECTIONS, duration)

        once(warmup)
        cpu0 = tree_cpu_seconds(proc.pid)
        result = once(seconds)
        cpu = tree_cpu_seconds(proc.pid) - cpu0
    finally:
        proc.kill()
        proc.wait()
    requests = max(result["requests"], 1)
    return {
        "stack": name,
        "rps": result["rps"],
        "errors": result["errors"],
        "cpu_us_per_req": cpu / requests * 1e6,
        "client_cpu_us_per_req": result["client_cpu_s"] / requests * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-floors"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for repeat in range(args.repeats):
        for name in PROGRAMS:
            row = measure(name, args.duration, args.warmup, args.workdir)
            row["repeat"] = repeat
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [
        "# Front-end floors (canned reply, 32 connections)",
        "",
        f"Command: `bench/floors.py --repeats {args.repeats} --duration {args.duration:g}`; "
        "medians.",
        "",
        "| stack | req/s | CPU-us/req | client CPU-us/req | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in PROGRAMS:
        mine = [r for r in rows if r["stack"] == name]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.median(r[key] for r in mine)

        lines.append(
            f"| {name} | {med('rps'):,.0f} | {med('cpu_us_per_req'):,.0f} | "
            f"{med('client_cpu_us_per_req'):,.0f} | {sum(r['errors'] for r in mine)} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "floors.json").write_text(json.dumps(rows, indent=1))
    (args.out / "floors.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
