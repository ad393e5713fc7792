"""The HTTP/1.1 listener on the wire: keep-alive, pipelining, 100-continue, chunked bodies,
invalid requests, the input size limit, disconnects, routing between the direct infer path
and the application, HEAD, response headers and shutdown."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests import models
from tests.harness import ServerProcess, run_server

LIMIT = 4096
TOO_LARGE = "Request JSON size of"
TIMEOUT = 10.0


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class Wire:
    """A raw client connection that reads responses off the socket itself."""

    def __init__(self, url: str) -> None:
        host, port = url.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unread: {self.buffer!r}")
        self.buffer += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def response(self, *, head: bool = False) -> Response:
        version, status, *_ = self._line().split(b" ", 2)
        assert version == b"HTTP/1.1", version
        headers = []
        while line := self._line():
            name, _, value = line.partition(b":")
            headers.append((name.decode().lower(), value.decode().strip()))
        reply = Response(int(status), headers, b"")
        if head or reply.status < 200:
            return reply
        if reply.header("transfer-encoding") == "chunked":
            while size := int(self._line().split(b";")[0], 16):
                reply.body += self._exact(size)
                assert self._line() == b""
            while self._line():
                pass
        else:
            reply.body = self._exact(int(reply.header("content-length") or "0"))
        return reply

    def closed(self) -> bool:
        """True once the server has closed the connection and nothing else is unread."""
        if self.buffer:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def request(
    method: str, path: str, body: bytes = b"", headers: str = "", version: str = "1.1"
) -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    head = f"{method} {path} HTTP/{version}\r\nHost: test\r\n{length}{headers}\r\n"
    return head.encode() + body


def infer_body(start: int) -> bytes:
    data = list(range(start, start + 16))
    inputs = [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": data},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [3] * 16},
    ]
    return json.dumps({"inputs": inputs}).encode()


def check_infer(reply: Response, start: int) -> None:
    assert reply.status == 200, reply
    outputs = {out["name"]: out["data"] for out in reply.json()["outputs"]}
    data = range(start, start + 16)
    assert outputs == {"OUTPUT0": [x + 3 for x in data], "OUTPUT1": [x - 3 for x in data]}


def infer(start: int, path: str = "/v2/models/simple/infer", headers: str = "") -> bytes:
    return request("POST", path, infer_body(start), headers)


def chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def chunked_infer(body: bytes, size: int) -> bytes:
    head = "POST /v2/models/simple/infer HTTP/1.1\r\nHost: test\r\n"
    return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(body, size)


def repository(root: Path) -> Path:
    for name in ("simple", "identity_fp32"):
        models.copy_bundled_model(root, name)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = repository(tmp_path_factory.mktemp("repo"))
    args = ["--model-repository", str(repo), "--http-max-input-size", str(LIMIT)]
    with run_server(args, services=("http",)) as process:
        yield process


def answered(server: ServerProcess) -> None:
    """The listener still answers a fresh connection."""
    with Wire(server.http_url) as wire:
        wire.send(infer(7))
        check_infer(wire.response(), 7)
    assert server.proc.poll() is None


# --- keep-alive and closing -----------------------------------------------------------
def test_one_connection_answers_infer_and_other_requests_in_turn(server: ServerProcess) -> None:
    with Wire(server.http_url) as wire:
        for start in range(3):
            wire.send(request("GET", "/v2/health/ready"))
            assert wire.response().status == 200
            wire.send(infer(start))
            check_infer(wire.response(), start)
            wire.send(request("GET", "/v2/models/simple/config"))
            config = wire.response()
            assert config.status == 200 and config.json()["name"] == "simple"


@pytest.mark.parametrize("path", ["/v2/health/ready", "/v2/models/simple/infer"])
def test_connection_close_is_honoured(server: ServerProcess, path: str) -> None:
    method, body = ("POST", infer_body(0)) if path.endswith("infer") else ("GET", b"")
    with Wire(server.http_url) as wire:
        wire.send(request(method, path, body, "Connection: close\r\n"))
        reply = wire.response()
        assert reply.status == 200
        assert reply.header("connection") == "close"
        assert wire.closed()


@pytest.mark.parametrize("path", ["/v2/health/ready", "/v2/models/simple/infer"])
def test_http_1_0_closes_unless_kept_alive(server: ServerProcess, path: str) -> None:
    method, body = ("POST", infer_body(0)) if path.endswith("infer") else ("GET", b"")
    with Wire(server.http_url) as wire:
        wire.send(request(method, path, body, version="1.0"))
        reply = wire.response()
        assert reply.status == 200 and reply.header("connection") == "close"
        assert wire.closed()
    with Wire(server.http_url) as wire:
        for _ in range(2):
            wire.send(request(method, path, body, "Connection: keep-alive\r\n", "1.0"))
            assert wire.response().status == 200


# --- pipelining -------------------------------------------------------------------------
def test_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    with Wire(server.http_url) as wire:
        wire.send(
            infer(10)
            + request("GET", "/v2/health/ready")
            + infer(20)
            + request("GET", "/v2/models/simple/config")
            + infer(30)
        )
        check_infer(wire.response(), 10)
        assert wire.response().status == 200
        check_infer(wire.response(), 20)
        assert wire.response().json()["name"] == "simple"
        check_infer(wire.response(), 30)


def test_pipelined_requests_after_connection_close_are_dropped(server: ServerProcess) -> None:
    with Wire(server.http_url) as wire:
        wire.send(
            infer(40)
            + request("GET", "/v2/health/ready", headers="Connection: close\r\n")
            + infer(50)
        )
        check_infer(wire.response(), 40)
        last = wire.response()
        assert last.status == 200 and last.header("connection") == "close"
        assert wire.closed()


def test_more_pipelined_requests_than_the_queue_holds(server: ServerProcess) -> None:
    starts = list(range(0, 40 * 16, 16))
    with Wire(server.http_url) as wire:
        wire.send(b"".join(infer(start) for start in starts))
        for start in starts:
            check_infer(wire.response(), start)


def test_a_request_split_into_small_writes(server: ServerProcess) -> None:
    data = infer(5) + request("GET", "/v2/models/simple/config")
    with Wire(server.http_url) as wire:
        for i in range(0, len(data), 7):
            wire.send(data[i : i + 7])
        check_infer(wire.response(), 5)
        assert wire.response().status == 200


# --- request bodies -----------------------------------------------------------------------
def test_expect_100_continue_is_answered_before_the_body(server: ServerProcess) -> None:
    body = infer_body(1)
    head = request("POST", "/v2/models/simple/infer", headers="Expect: 100-continue\r\n")
    head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body))
    with Wire(server.http_url) as wire:
        wire.send(head)
        interim = wire.response()
        assert (interim.status, interim.headers) == (100, [])
        wire.send(body)
        check_infer(wire.response(), 1)


def test_expect_100_continue_behind_a_pipelined_request(server: ServerProcess) -> None:
    body = infer_body(2)
    head = request("POST", "/v2/models/simple/infer", headers="Expect: 100-continue\r\n")
    head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body))
    with Wire(server.http_url) as wire:
        # The 100 for the second request is due once the first has been answered.
        wire.send(infer(1) + head)
        check_infer(wire.response(), 1)
        assert wire.response().status == 100
        wire.send(body)
        check_infer(wire.response(), 2)


@pytest.mark.parametrize("size", [1, 100, 4000])
def test_chunked_request_body(server: ServerProcess, size: int) -> None:
    with Wire(server.http_url) as wire:
        wire.send(chunked_infer(infer_body(4), size))
        check_infer(wire.response(), 4)
        wire.send(request("GET", "/v2/health/ready"))
        assert wire.response().status == 200


def test_declared_body_over_the_limit_is_refused_and_the_connection_kept(
    server: ServerProcess,
) -> None:
    with Wire(server.http_url) as wire:
        wire.send(request("POST", "/v2/models/simple/infer", b"x" * (LIMIT + 1)))
        reply = wire.response()
        assert reply.status == 400
        assert reply.header("content-type") == "application/json"
        assert reply.json() == {
            "error": f"Request JSON size of {LIMIT + 1} bytes exceeds the maximum allowed "
            f"value of {LIMIT} bytes. Use --http-max-input-size to increase the limit."
        }
        wire.send(infer(3))
        check_infer(wire.response(), 3)
        # A body of exactly the limit is read and parsed (and fails as JSON, not on size).
        wire.send(request("POST", "/v2/models/simple/infer", b"x" * LIMIT))
        reply = wire.response()
        assert reply.status != 200 and "JSON" in reply.json()["error"]
        assert not reply.json()["error"].startswith(TOO_LARGE)


def test_chunked_body_over_the_limit_is_refused_and_the_connection_kept(
    server: ServerProcess,
) -> None:
    with Wire(server.http_url) as wire:
        wire.send(chunked_infer(b"y" * (3 * LIMIT), 1000))
        reply = wire.response()
        assert reply.status == 400
        error = reply.json()["error"]
        assert error.startswith(TOO_LARGE)
        assert f"exceeds the maximum allowed value of {LIMIT} bytes" in error
        wire.send(chunked_infer(infer_body(6), 50))
        check_infer(wire.response(), 6)


# --- invalid requests and disconnects -------------------------------------------------------
def test_invalid_http_gets_400_and_the_connection_closes(server: ServerProcess) -> None:
    with Wire(server.http_url) as wire:
        wire.send(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        reply = wire.response()
        assert reply.status == 400
        assert reply.body == b"Invalid HTTP request received."
        assert reply.header("connection") == "close"
        assert wire.closed()
    answered(server)


def test_a_request_head_without_end_is_refused(server: ServerProcess) -> None:
    # Headers that never end would otherwise be buffered without limit.
    with Wire(server.http_url) as wire:
        wire.send(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(40):
                wire.send(b"X-Filler: " + b"a" * 4000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: the server has already closed
        reply = wire.response()
        assert reply.status == 400
        assert reply.body == b"Invalid HTTP request received."
        assert wire.closed()
    answered(server)


def test_invalid_http_after_a_pipelined_request_is_answered_after_it(
    server: ServerProcess,
) -> None:
    with Wire(server.http_url) as wire:
        wire.send(infer(8) + b"NOT HTTP AT ALL\r\n\r\n")
        check_infer(wire.response(), 8)
        assert wire.response().status == 400
        assert wire.closed()


def test_client_disconnects_with_requests_queued_and_mid_body(server: ServerProcess) -> None:
    before = len(server.log_lines)
    with Wire(server.http_url) as wire:
        wire.send(b"".join(infer(start) for start in range(0, 80, 16)))
    with Wire(server.http_url) as wire:
        body = infer_body(0)
        wire.send(request("POST", "/v2/models/simple/infer", body)[: -len(body) // 2])
    with Wire(server.http_url) as wire:
        wire.send(b"GET /v2/health/re")
    answered(server)
    errors = [line for line in server.log_lines[before:] if "Traceback" in line]
    assert not errors, server.log()


def test_upgrade_requests_are_answered_as_http_1_1(server: ServerProcess) -> None:
    upgrade = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    with Wire(server.http_url) as wire:
        wire.send(request("GET", "/v2/health/ready", headers=upgrade))
        assert wire.response().status == 200
        wire.send(infer(9))
        check_infer(wire.response(), 9)
    with Wire(server.http_url) as wire:
        # Bytes after the upgrade request in the same packet are the next request.
        wire.send(request("GET", "/v2/health/ready", headers=upgrade) + infer(9))
        assert wire.response().status == 200
        check_infer(wire.response(), 9)


# --- routing --------------------------------------------------------------------------------
def test_infer_path_routing(server: ServerProcess) -> None:
    with Wire(server.http_url) as wire:
        for path in (
            "/v2/models/simple/infer?x=1",
            "/v2/models/simple/versions/1/infer",
            "/v2/models/simple/versions/1/infer?a=b&c",
            # Percent-decoded by the application's routing, as under any ASGI server.
            "/v2/models/sim%70le/infer",
        ):
            wire.send(infer(11, path))
            check_infer(wire.response(), 11)
        for path, status, error in (
            ("/v2/nothing/here", 404, "Not Found"),
            ("/v2/models/simple/infer/extra", 404, "Not Found"),
            ("/v2/no%20such/path", 404, "Not Found"),
            ("/v2/models/simple/versions/one/infer", 404, "Not Found"),
            ("/v2/models/simple//infer", 404, "Not Found"),
            ("/v2/models/%zz/infer", 404, "Request for unknown model: '%zz' is not found"),
            ("/v2/models/missing/infer", 404, "Request for unknown model: 'missing' is not found"),
        ):
            wire.send(infer(0, path))
            reply = wire.response()
            assert (reply.status, reply.json()) == (status, {"error": error}), path
        wire.send(request("GET", "/v2/models/simple/infer"))
        reply = wire.response()
        assert (reply.status, reply.json()) == (405, {"error": "Method Not Allowed"})
        wire.send(request("PUT", "/v2/models/simple/infer", infer_body(0)))
        assert wire.response().status == 405


def test_head_gets_headers_without_a_body(server: ServerProcess) -> None:
    with Wire(server.http_url) as wire:
        for path in ("/v2/health/ready", "/v2", "/v2/models/simple/infer"):
            wire.send(request("HEAD", path))
            reply = wire.response(head=True)
            wire.send(request("GET", "/v2/models/simple/config"))
            # Had the HEAD answer carried a body, this would read it as the next status line.
            after = wire.response()
            assert after.status == 200 and after.json()["name"] == "simple", (path, reply)


# --- response headers -------------------------------------------------------------------------
def test_json_infer_response_headers(server: ServerProcess) -> None:
    with Wire(server.http_url) as wire:
        wire.send(infer(12))
        reply = wire.response()
        check_infer(reply, 12)
        assert reply.header("content-type") == "application/json"
        assert reply.header("content-length") == str(len(reply.body))
        assert reply.header("inference-header-content-length") is None
        names = [name for name, _ in reply.headers]
        assert len(names) == len(set(names)), names


def binary_request(batch: int) -> tuple[bytes, int, np.ndarray, np.ndarray]:
    a = np.arange(batch * 16, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 2, dtype=np.int32)
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = httpclient.InferInput(name, [batch, 16], "INT32")
        tensor.set_data_from_numpy(data, binary_data=True)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("OUTPUT0", "OUTPUT1")]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs)
    assert json_size is not None
    return body, json_size, a, b


def test_binary_infer_response_headers(server: ServerProcess) -> None:
    body, json_size, a, b = binary_request(4)
    extra = f"Inference-Header-Content-Length: {json_size}\r\n"
    with Wire(server.http_url) as wire:
        wire.send(request("POST", "/v2/models/simple/infer", body, extra))
        reply = wire.response()
    assert reply.status == 200
    assert reply.header("content-type") == "application/octet-stream"
    assert reply.header("content-length") == str(len(reply.body))
    header_size = int(reply.header("inference-header-content-length") or "-1")
    result = httpclient.InferenceServerClient.parse_response_body(
        reply.body, header_length=header_size
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_tritonclient_round_trips(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_ready() and client.is_model_ready("simple")
        for binary in (True, False):
            a = np.arange(32, dtype=np.int32).reshape(2, 16) * (3 if binary else 5)
            b = np.ones((2, 16), dtype=np.int32)
            inputs = []
            for name, data in (("INPUT0", a), ("INPUT1", b)):
                tensor = httpclient.InferInput(name, [2, 16], "INT32")
                tensor.set_data_from_numpy(data, binary_data=binary)
                inputs.append(tensor)
            outputs = [
                httpclient.InferRequestedOutput(name, binary_data=binary)
                for name in ("OUTPUT0", "OUTPUT1")
            ]
            result = client.infer("simple", inputs, outputs=outputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()


# --- large bodies and shutdown ------------------------------------------------------------------
def test_large_bodies_and_sigterm_closes_idle_connections(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    with run_server(["--model-repository", str(repo)], services=("http",)) as server:
        values = np.arange(100_000, dtype=np.float32).reshape(1, -1)
        tensor = httpclient.InferInput("INPUT0", list(values.shape), "FP32")
        tensor.set_data_from_numpy(values, binary_data=True)
        output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
        body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], [output])
        extra = f"Inference-Header-Content-Length: {json_size}\r\n"
        idle, partial = Wire(server.http_url), Wire(server.http_url)
        with idle, partial:
            # A response larger than one joined write, read back whole.
            idle.send(request("POST", "/v2/models/identity_fp32/infer", body, extra))
            reply = idle.response()
            assert reply.status == 200 and reply.header("content-length") == str(len(reply.body))
            result = httpclient.InferenceServerClient.parse_response_body(
                reply.body, header_length=int(reply.header("inference-header-content-length") or 0)
            )
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values)
            partial.send(b"GET /v2/health/ready HTTP/1.1\r\nHo")
            server.proc.send_signal(signal.SIGTERM)
            assert idle.closed()
            assert partial.closed()
            assert server.proc.wait(30) == 0
