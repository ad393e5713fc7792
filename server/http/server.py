"""The HTTP/1.1 listener: httptools parses each connection's bytes on the event loop.

Inference requests (``POST /v2/models/{model}[/versions/{n}]/infer``) are answered by the
infer endpoint directly: the body is handed over as bytes and the response goes out in one
write. Every other request is passed to the ASGI application (the FastAPI routes) through a
small ASGI bridge. Going through an ASGI server and the framework took more event-loop time
per inference than the decoding and scheduling did (docs/performance.md).

Per connection, requests are answered in order (pipelined ones wait their turn); a connection
closes after a response when the client asked for it (``Connection: close``, HTTP/1.0 without
keep-alive), after ``keep_alive`` seconds idle, or when the server shuts down.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

from server.net import WriteFlow, no_delay, quick_ack, quick_ack_socket

log = logging.getLogger(__name__)

# Pipelined requests queued on one connection before it stops reading.
_MAX_QUEUED = 16
# The request line and headers of one request may take this many bytes at most.
_MAX_HEAD = 64 * 1024
# Responses at least this large go out as two buffers instead of one joined copy.
_JOIN_LIMIT = 64 * 1024
# Distinct request URLs whose inference targets are remembered (``HttpServer.target_of``).
_TARGETS_KEPT = 1024
# ... and only URLs this long at most: a request's head may hold 64 KiB of them.
_TARGET_URL_KEPT = 512

STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("latin-1")
    for status in http.HTTPStatus
}
_BAD_REQUEST_BODY = b"Invalid HTTP request received."
_BAD_REQUEST = (
    STATUS_LINES[400]
    + b"content-type: text/plain; charset=utf-8\r\n"
    + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_BAD_REQUEST_BODY)
    + _BAD_REQUEST_BODY
)


class Reply:
    """A complete response: status, content type, extra headers and body."""

    __slots__ = ("status", "content_type", "headers", "body")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


class Request:
    """One parsed request: what the infer endpoint and the ASGI bridge read."""

    __slots__ = (
        "method",
        "url",
        "http_version",
        "headers",
        "chunks",
        "size",
        "declared_size",
        "too_large",
        "keep_alive",
        "expect_continue",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.http_version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.declared_size: int | None = None
        self.too_large = 0
        self.keep_alive = True
        self.expect_continue = False

    def header(self, name: bytes) -> str | None:
        """The first value of a header (``name`` in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def body(self, writable: bool = False) -> bytes | bytearray:
        """The body; with ``writable``, one that came in several pieces is joined into a
        bytearray, so that tensors read from it in place are writable, as a model may
        expect of its inputs (one piece stays as it came: a copy costs the same then)."""
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return bytearray().join(chunks) if writable else b"".join(chunks)


FastHandler = Callable[[Request, str, "str | None"], Awaitable[Reply]]
"""Answers one inference request; given (request, model, version or None)."""
TooLarge = Callable[[Request], Reply]
"""The reply for a request whose body exceeds the input size limit."""


def infer_target(path: bytes) -> tuple[str, str | None] | None:
    """(model, version) for '/v2/models/{model}[/versions/{digits}]/infer', else None."""
    if not path.startswith(b"/v2/models/") or not path.endswith(b"/infer") or b"%" in path:
        return None
    parts = path[11:-6].split(b"/")
    try:
        if len(parts) == 1 and parts[0]:
            return parts[0].decode("ascii"), None
        if len(parts) == 3 and parts[0] and parts[1] == b"versions" and parts[2].isdigit():
            return parts[0].decode("ascii"), parts[2].decode("ascii")
    except UnicodeDecodeError:
        return None
    return None


class HttpServer:
    def __init__(
        self,
        app: Any,
        *,
        infer: FastHandler | None = None,
        too_large: TooLarge | None = None,
        max_input_size: int = 64 * 1024 * 1024,
        keep_alive: float = 60.0,
    ) -> None:
        self.app = app
        self.infer = infer
        self.too_large = too_large
        self.max_input_size = max_input_size
        self.keep_alive = keep_alive
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._closed = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None
        self.exiting = False
        # Request URLs' inference targets (``infer_target``): clients repeat a few URLs.
        self._targets: dict[bytes, tuple[str, str | None] | None] = {}

    def target_of(self, url: bytes) -> tuple[str, str | None] | None:
        """``infer_target`` of a request URL (its query left aside), remembered."""
        try:
            return self._targets[url]
        except KeyError:
            pass
        target = infer_target(url.partition(b"?")[0])
        if len(url) <= _TARGET_URL_KEPT:
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def start(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    def _watch_idle(self) -> None:
        """Close connections idle for ``keep_alive`` seconds. One sweep every quarter of
        that (a connection closes between 1 and 1.25 times it) costs less than a timer
        armed and cancelled around every request."""
        if self._sweeper is None and not self.exiting:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.keep_alive / 4, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for connection in list(self.connections):
            if connection.idle_for(now) >= self.keep_alive and not connection.closing:
                connection.shutdown()
        if self.connections:
            self._watch_idle()

    def _forget(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if self.exiting and not self.connections:
            self._closed.set()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, let each connection finish the request it is answering, then
        close it; connections still open after ``timeout`` seconds are cut."""
        self.exiting = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            try:
                await asyncio.wait_for(self._closed.wait(), timeout)
            except asyncio.TimeoutError:
                for connection in list(self.connections):
                    connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


class _Connection(WriteFlow, asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.request = Request()
        self.queue: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        # The request being answered is an inference: withdrawn if the client goes away.
        self.answering_infer = False
        # Event-loop time of the last bytes in or the last answer out.
        self.active_at = self.loop.time()
        self.closing = False
        # Bytes that do not parse as HTTP: refused once the requests before them are answered.
        self.invalid = False
        # Bytes of the current request's head (request line and headers) seen so far.
        self.head_bytes = -1
        self.lost: asyncio.Future[None] | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        # The socket to acknowledge at once while a request body is still arriving.
        self.ack_socket: Any = None
        self.body_pending = False
        # Reading paused because ``_MAX_QUEUED`` pipelined requests wait.
        self.queue_full = False

    # --- transport callbacks ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)
        self.ack_socket = quick_ack_socket(transport)
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.local = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.server._watch_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server._forget(self)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        self.stop_flow()
        if self.task is not None and self.answering_infer:
            # The client went away: withdraw the queued request rather than run it for nobody.
            self.task.cancel()
        self.queue.clear()
        # The parser holds this protocol's callbacks: without it, a connection that ended is
        # freed by reference counting instead of waiting for a garbage collection.
        self.parser = None  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.active_at = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # No protocol upgrades: the request is answered as HTTP/1.1 and whatever
            # followed it in this read is parsed as the next request.
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            if offset < len(data):
                self.data_received(data[offset:])
        except httptools.HttpParserError:
            log.debug("invalid HTTP request from %s", self.client)
            self._invalid()
            return
        if self.body_pending and self.ack_socket is not None:
            quick_ack(self.ack_socket)
        if self.head_bytes >= 0:
            # Still in the head after this read: the parser would buffer it without end.
            self.head_bytes += len(data)
            if self.head_bytes > _MAX_HEAD:
                log.debug("request head over %d bytes from %s", _MAX_HEAD, self.client)
                self._invalid()

    def _invalid(self) -> None:
        self.invalid = True
        self.transport.pause_reading()
        if self.task is None:
            self._refuse()

    def _refuse(self) -> None:
        if not self.closing:
            self.transport.write(_BAD_REQUEST)
            self.transport.close()
        self.closing = True

    # --- parser callbacks ---------------------------------------------------------
    def on_message_begin(self) -> None:
        self.request = Request()
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_bytes = -1
        self.body_pending = True
        request, parser = self.request, self.parser
        request.method = parser.get_method()
        request.http_version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        limit = self.server.max_input_size
        for name, value in request.headers:
            if name == b"content-length":
                if value.isdigit():
                    request.declared_size = int(value)
                    if request.declared_size > limit:
                        request.too_large = request.declared_size
            elif name == b"expect" and value.lower() == b"100-continue":
                request.expect_continue = True
        if request.expect_continue and not request.too_large and not self.queue and not self.task:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.expect_continue = False

    def on_body(self, body: bytes) -> None:
        request = self.request
        if request.too_large:
            return
        request.size += len(body)
        if request.size > self.server.max_input_size:
            request.too_large = request.size
            request.chunks = []
            return
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        self.body_pending = False
        # A 100 Continue still owed is moot once the whole body is here.
        self.request.expect_continue = False
        if self.closing:
            return
        self.queue.append(self.request)
        if self.task is None:
            self._next()
        elif len(self.queue) >= _MAX_QUEUED:
            self.queue_full = True
            self.transport.pause_reading()

    # --- answering ----------------------------------------------------------------
    def _next(self) -> None:
        if not self.queue:
            self.task = None
            self.answering_infer = False
            if self.invalid:
                self._refuse()
            elif self.closing or self.server.exiting:
                self.transport.close()
            else:
                pending = self.request
                if pending.expect_continue and not pending.too_large:
                    # Its headers came while an earlier request was being answered.
                    pending.expect_continue = False
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.active_at = self.loop.time()
            return
        request = self.queue.popleft()
        if self.queue_full and len(self.queue) < _MAX_QUEUED // 2 and not self.invalid:
            self.queue_full = False
            self.transport.resume_reading()
        self.answering_infer = False
        self.task = self.loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        try:
            target = None
            if request.method == b"POST" and self.server.infer is not None:
                target = self.server.target_of(request.url)
            if request.too_large and self.server.too_large is not None:
                self._reply(request, self.server.too_large(request))
            elif target is not None:
                assert self.server.infer is not None
                self.answering_infer = True
                self._reply(request, await self.server.infer(request, *target))
            else:
                await _Bridge(self, request).run(self.server.app)
        except asyncio.CancelledError:
            if not self.closing:
                raise
            return  # the client disconnected; nobody reads an answer
        except Exception:
            log.exception("unexpected error while answering %s", request.url)
            if not self.closing:
                self.transport.write(
                    STATUS_LINES[500] + b"content-length: 0\r\nconnection: close\r\n\r\n"
                )
                self.transport.close()
                self.closing = True
            return
        if self.closing:
            return
        if not request.keep_alive:
            self.closing = True
            self.transport.close()
            return
        if self.write_paused:
            # A client that pipelines without reading must not grow our buffers unbounded.
            await self.drain()
            if self.closing:
                return
        self._next()

    def _reply(self, request: Request, reply: Reply) -> None:
        if self.closing:
            return
        body = reply.body
        fields = b"content-length: %d\r\ncontent-type: %s\r\n" % (len(body), reply.content_type)
        head = _head(reply.status, reply.headers, request, self.server.exiting, fields)
        if request.method == b"HEAD":
            self.transport.write(b"".join(head))
        elif len(body) < _JOIN_LIMIT:
            head.append(body)
            self.transport.write(b"".join(head))
        else:
            self.transport.writelines([b"".join(head), body])

    # --- lifetime -----------------------------------------------------------------
    def idle_for(self, now: float) -> float:
        """Seconds without a request being answered or bytes arriving (an incomplete
        request counts as idle); 0 while a request is being answered."""
        if self.task is not None or self.queue:
            return 0.0
        return now - self.active_at

    def shutdown(self) -> None:
        if self.task is None:
            self.closing = True
            self.transport.close()
        # else: the answer in progress goes out with 'connection: close', then it closes.

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()

    async def wait_lost(self) -> None:
        if self.closing:
            return
        if self.lost is None:
            self.lost = self.loop.create_future()
        await self.lost


class _Bridge:
    """One request through an ASGI 3 application, the response written as it comes."""

    __slots__ = ("connection", "request", "sent_body", "started", "finished", "chunked", "head")

    def __init__(self, connection: _Connection, request: Request) -> None:
        self.connection = connection
        self.request = request
        self.sent_body = False
        self.started = False
        self.finished = False
        self.chunked = False
        self.head: list[bytes] = []

    async def run(self, app: Any) -> None:
        connection, request = self.connection, self.request
        url = httptools.parse_url(request.url)
        raw_path = url.path or b"/"
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "server": connection.local,
            "client": connection.client,
            "scheme": "http",
            "method": request.method.decode("latin-1"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": request.headers,
            "state": {},
        }
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            # Frameworks answer 500 themselves and then re-raise; only log it.
            log.exception("unexpected error while answering %s", request.url)
        if connection.closing or self.finished:
            return
        if not self.started:
            body = b"Internal Server Error"
            self._start(
                500,
                [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                    (b"connection", b"close"),
                ],
            )
            connection.transport.write(b"".join([*self.head, body]))
            self.head = []
            self.finished = True
            return
        connection.closing = True
        connection.transport.close()

    async def receive(self) -> dict[str, Any]:
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": self.request.body(), "more_body": False}
        await self.connection.wait_lost()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        connection = self.connection
        if connection.closing:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("response already started")
            self.started = True
            headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
            self.chunked = not any(name == b"content-length" for name, _ in headers)
            if self.chunked:
                headers.append((b"transfer-encoding", b"chunked"))
            self._start(int(message["status"]), headers)
        elif kind == "http.response.body":
            if not self.started or self.finished:
                raise RuntimeError("response body sent out of order")
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            out = self.head
            self.head = []
            if self.request.method != b"HEAD":
                if self.chunked:
                    if body:
                        out += [b"%x\r\n" % len(body), body, b"\r\n"]
                    if not more:
                        out.append(b"0\r\n\r\n")
                elif body:
                    out.append(body)
            if out:
                connection.transport.write(b"".join(out))
            if not more:
                self.finished = True
            else:
                await connection.drain()

    def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        # Written with the first body chunk.
        self.head = _head(status, headers, self.request, self.connection.server.exiting)


def _head(
    status: int,
    headers: list[tuple[bytes, bytes]],
    request: Request,
    exiting: bool,
    fields: bytes = b"",
) -> list[bytes]:
    """The status line and headers of a response, ``fields`` (header lines written out
    already) first. Decides, on ``request.keep_alive``, whether the connection closes after
    it: when the client or the response says so, or the server is exiting; a closing
    connection's response says ``connection: close``."""
    head = [STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, fields]
    says_close = False
    for name, value in headers:
        if name == b"connection" and b"close" in value.lower():
            says_close = True
        head += (name, b": ", value, b"\r\n")
    if says_close or exiting:
        request.keep_alive = False
    if not request.keep_alive and not says_close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return head
