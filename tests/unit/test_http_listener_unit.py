"""Which request targets the HTTP listener answers on its direct infer path, and the parsed
request's accessors."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from server.http import server as server_module
from server.http.app import create_app
from server.http.server import Request, infer_target


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/v2/models/simple/infer", ("simple", None)),
        (b"/v2/models/simple/versions/3/infer", ("simple", "3")),
        (b"/v2/models/simple/versions/007/infer", ("simple", "007")),
        (b"/v2/models/a.b-c_d/infer", ("a.b-c_d", None)),
        (b"/v2/models/infer/infer", ("infer", None)),
        (b"/v2/models/versions/versions/12/infer", ("versions", "12")),
    ],
)
def test_infer_targets(path: bytes, expected: tuple[str, str | None]) -> None:
    assert infer_target(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        b"/v2/models/simple/versions/one/infer",
        b"/v2/models/simple/versions/-1/infer",
        b"/v2/models/simple/versions/1.0/infer",
        b"/v2/models/simple/versions//infer",
        b"/v2/models/simple/versions/infer",
        b"/v2/models/simple/version/1/infer",
        b"/v2/models/simple/versions/1/extra/infer",
        b"/v2/models//versions/1/infer",
        b"/v2/models//infer",
        b"/v2/models/infer",
        b"/v2/models/a/b/infer",
        b"/v2/models/simple//infer",
        b"//v2/models/simple/infer",
        b"/v2/models/simple/infer/",
        b"/v2/models/simple/inference",
        b"/v2/models/simple/ready",
        b"/v2/models/simple",
        b"/v1/models/simple/infer",
        b"/V2/models/simple/infer",
        b"/v2/models/sim%70le/infer",
        b"/v2/models/simple/versions/%31/infer",
        b"/v2/models/%zz/infer",
        b"/v2/models/caf\xc3\xa9/infer",
        b"",
    ],
)
def test_paths_left_to_the_application(path: bytes) -> None:
    assert infer_target(path) is None


def test_the_server_remembers_targets_within_a_bound() -> None:
    server = server_module.HttpServer(None)
    urls = [
        b"/v2/models/m%d/infer?x=%d" % (i % 7, i) for i in range(3 * server_module._TARGETS_KEPT)
    ]
    urls += [b"/v2/models/simple/versions/2/infer", b"/v2/models/sim%70le/infer", b"/x?y"]
    for url in urls + urls[::-1]:
        assert server.target_of(url) == infer_target(url.partition(b"?")[0])
    assert len(server._targets) <= server_module._TARGETS_KEPT


def test_long_urls_are_answered_but_not_remembered() -> None:
    server = server_module.HttpServer(None)
    long = b"/v2/models/long/infer?" + b"q" * 60_000
    assert server.target_of(long) == ("long", None)
    assert server.target_of(b"/v2/models/short/infer") == ("short", None)
    assert list(server._targets) == [b"/v2/models/short/infer"]


@pytest.mark.parametrize(
    "path",
    [
        b"/v2/models/simple/infer",
        b"/v2/models/simple/versions/2/infer",
        b"/v2/models/simple/versions/x/infer",
        b"/v2/models//infer",
        b"/v2/models/a/b/infer",
        b"/v2/models/simple/versions/1/extra/infer",
        b"/v2/models/simple/stats",
    ],
)
def test_listener_and_application_agree_on_plain_paths(path: bytes) -> None:
    # Whatever the listener answers directly, FastAPI would route to its infer route with
    # the same model and version.
    from starlette.routing import Match

    app = create_app(None)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "POST", "path": path.decode("ascii"), "root_path": ""}
    routed = None
    for route in app.router.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            if getattr(route, "name", "") == "infer":
                params = child["path_params"]
                routed = (params["model"], params.get("version"))
            break
    target = infer_target(path)
    if target is not None:
        assert routed == target


def test_request_header_and_body() -> None:
    request = Request()
    request.headers = [(b"content-type", b"application/json"), (b"x-twice", b"1")]
    request.headers.append((b"x-twice", b"2"))
    assert request.header(b"x-twice") == "1"
    assert request.header(b"content-type") == "application/json"
    assert request.header(b"missing") is None
    assert request.body() == b""
    request.chunks = [b"abc"]
    assert request.body() == b"abc"
    request.chunks = [b"ab", b"", b"cd"]
    assert request.body() == b"abcd"
    # For the inference endpoint, pieces are joined into memory tensors can be written in.
    joined = request.body(writable=True)
    assert type(joined) is bytearray and joined == b"abcd"


class _Socket:
    family = socket.AF_INET

    def __init__(self) -> None:
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options.append((level, option, value))


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sock = _Socket()
        self.sent = bytearray()
        self.answered = asyncio.Event()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def write(self, data: Any) -> None:
        self.sent += data
        self.answered.set()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Server:
    """What a connection asks of its server, with an application that answers 204."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.max_input_size = 1 << 20
        self.exiting = False
        self.infer = None
        self.too_large = None

    def _watch_idle(self) -> None:
        pass

    def _forget(self, connection: Any) -> None:
        pass

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
async def test_reads_that_leave_a_body_unfinished_are_acknowledged_at_once() -> None:
    """After each read that leaves a request body unfinished the listener asks for an
    immediate ACK (a client with Nagle's algorithm on holds the body's last piece until
    then); a request that arrives whole in one read asks for none."""
    quick = (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    transport = _Transport()
    connection = server_module._Connection(_Server())  # type: ignore[arg-type]
    connection.connection_made(transport)
    head = b"POST /anything HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n"
    connection.data_received(head)
    connection.data_received(b"01234")
    assert transport.sock.options.count(quick) == 2
    connection.data_received(b"56789")
    assert transport.sock.options.count(quick) == 2
    await asyncio.wait_for(transport.answered.wait(), 5)
    transport.answered.clear()
    connection.data_received(head + b"0123456789")
    await asyncio.wait_for(transport.answered.wait(), 5)
    assert transport.sock.options.count(quick) == 2
    assert transport.sent.count(b"HTTP/1.1 204") == 2
    connection.connection_lost(None)
