"""The HTTP listener run in-process with small ASGI applications: the idle timeout, streamed
(chunked) responses from the application, an application that fails before or after it has
answered, and shutdown with a request in flight."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.app import bind_socket
from server.http.server import HttpServer, Reply, Request


async def _stream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/fail-before":
        raise RuntimeError("failed before answering")
    elif path == "/fail-after":
        body = b"done"
        headers = [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        raise RuntimeError("failed after answering")
    elif path == "/slow":
        await asyncio.sleep(0.3)
        headers = [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"slow"})
    else:
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


async def _infer(request: Request, model: str, version: str | None) -> Reply:
    return Reply(200, b'{"model":"%s"}' % model.encode())


@pytest.fixture
async def listener() -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(_stream_app, infer=_infer, keep_alive=0.4)
    sock = bind_socket("127.0.0.1", 0)
    await server.start(sock)
    try:
        yield server, sock.getsockname()[1]
    finally:
        await server.shutdown(timeout=1.0)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, headers, body
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


async def test_an_idle_connection_is_closed_after_the_keep_alive_time(
    listener: tuple[HttpServer, int],
) -> None:
    server, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/"))
    assert (await _read_response(reader))[2] == b"ok"
    started = asyncio.get_running_loop().time()
    # The server closes it: the read ends with EOF well before this test's own timeout.
    assert await asyncio.wait_for(reader.read(), timeout=5.0) == b""
    waited = asyncio.get_running_loop().time() - started
    assert 0.3 <= waited <= 2.0, waited
    writer.close()


async def test_an_incomplete_request_is_closed_after_the_keep_alive_time(
    listener: tuple[HttpServer, int],
) -> None:
    server, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: te")
    assert await asyncio.wait_for(reader.read(), timeout=5.0) == b""
    writer.close()
    assert not server.connections or all(c.closing for c in server.connections)


async def test_a_streamed_response_goes_out_chunked(listener: tuple[HttpServer, int]) -> None:
    _, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/stream") + _get("/"))
    status, headers, body = await _read_response(reader)
    assert (status, headers.get("transfer-encoding"), body) == (200, "chunked", b"one,two,three")
    # The connection stays usable after a chunked response.
    assert (await _read_response(reader))[2] == b"ok"
    writer.close()


async def test_an_application_failing_before_answering_gets_a_500_and_a_close(
    listener: tuple[HttpServer, int],
) -> None:
    _, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/fail-before"))
    status, headers, body = await _read_response(reader)
    assert (status, headers.get("connection"), body) == (500, "close", b"Internal Server Error")
    assert await asyncio.wait_for(reader.read(), timeout=5.0) == b""
    writer.close()


async def test_an_application_failing_after_answering_keeps_the_connection(
    listener: tuple[HttpServer, int],
) -> None:
    _, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/fail-after") + _get("/"))
    assert (await _read_response(reader))[:1] == (200,)
    assert (await _read_response(reader))[2] == b"ok"
    writer.close()


async def test_shutdown_lets_the_request_in_flight_finish_then_closes(
    listener: tuple[HttpServer, int],
) -> None:
    server, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/slow"))
    while not any(c.task is not None for c in server.connections):
        await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(server.shutdown(timeout=2.0))
    status, headers, body = await _read_response(reader)
    assert (status, headers.get("connection"), body) == (200, "close", b"slow")
    assert await asyncio.wait_for(reader.read(), timeout=5.0) == b""
    await asyncio.wait_for(closing, timeout=5.0)
    assert not server.connections
    writer.close()


async def test_accepted_connections_send_small_writes_at_once(
    listener: tuple[HttpServer, int],
) -> None:
    """TCP_NODELAY on every accepted connection, whichever event loop runs the listener
    (this test runs on asyncio's own loop, which does not set it)."""
    server, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert (await _read_response(reader))[0] == 200
        (connection,) = server.connections
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        writer.close()


@pytest.fixture
def no_collector() -> Any:
    """The cyclic garbage collector off: what a test then sees freed, reference counting
    freed on its own."""
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


async def _gone(ref: weakref.ref[Any]) -> bool:
    """Whether the referent is freed within a few hundred turns of the event loop."""
    for _ in range(500):
        if ref() is None:
            return True
        await asyncio.sleep(0)
    return False


@pytest.mark.parametrize("in_flight", [False, True], ids=["answered", "in-flight"])
async def test_a_connection_that_ended_is_freed_without_a_garbage_collection(
    no_collector: None, in_flight: bool
) -> None:
    """A closed connection, the one whose inference was still being answered included, does
    not wait for the cyclic collector: a server under load between collections would
    otherwise hold every connection its clients closed, their requests and buffers."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def infer(request: Request, model: str, version: str | None) -> Reply:
        if model == "wait":
            started.set()
            await release.wait()
        return Reply(200, b"{}")

    server = HttpServer(_stream_app, infer=infer)
    sock = bind_socket("127.0.0.1", 0)
    await server.start(sock)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        model = b"wait" if in_flight else b"m"
        writer.write(
            b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n" % model
        )
        if in_flight:
            await asyncio.wait_for(started.wait(), timeout=5.0)
        else:
            assert (await _read_response(reader))[0] == 200
        (connection,) = server.connections
        ref = weakref.ref(connection)
        del connection
        writer.close()
        deadline = asyncio.get_running_loop().time() + 5.0
        while server.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        assert not server.connections
        assert await _gone(ref)
    finally:
        release.set()
        await server.shutdown(timeout=1.0)
