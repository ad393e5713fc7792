"""The gRPC listener: HTTP/2 framing and gRPC calls on the event loop, in plaintext or TLS.

grpcio's asyncio server spent about 530 CPU-µs per call on a canned reply on this project's
benchmark machine, twice what tritonserver spends on a whole inference; this listener spends
a tenth of that (docs/performance.md). It serves the same servicer objects grpcio
does: each rpc gets the request message and a small context (``abort``, ``set_code``,
``set_details``, ``set_compression``, ``invocation_metadata``, ``time_remaining``, ``peer``).

What it implements of HTTP/2 (RFC 9113): the connection preface and settings, HEADERS with
CONTINUATION and padding, DATA with flow control both ways, RST_STREAM, PING, GOAWAY and
WINDOW_UPDATE; PRIORITY is read and ignored, server push is never used. Header blocks are
decoded by ``hpack``; a block that only refers to table entries (every block a grpc C-core
client sends after its first call on a connection) is decoded once and remembered until the
table changes. Response headers are written as literals that never touch the peer's table.

Of gRPC: unary and streaming calls, ``grpc-timeout``, ``grpc-encoding`` gzip and deflate
both ways, trailers-only error responses, TLS with ALPN (the caller's SSL context),
keepalive pings and ping strikes with grpcio's option names, the handshake timeout, and a
graceful stop (GOAWAY, then the calls in flight finish).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import ssl
import struct
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple, cast

import grpc
import hpack
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from server.net import WriteFlow, no_delay
from server.protocol.grpc_codec import RawTailMessage

log = logging.getLogger(__name__)

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x6, 0x7, 0x9, 0xB

# Settings identifiers.
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
_INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE, _MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

_MAX_WINDOW = 2**31 - 1
# What this side announces: streams may carry 8 MiB before a window update, frames up to
# 1 MiB, header lists up to 64 KiB.
_STREAM_WINDOW = 8 * 1024 * 1024
_FRAME_LIMIT = 1024 * 1024
_HEADER_LIST_LIMIT = 64 * 1024
_MAX_STREAMS = 4096
_IDLE_PING_INTERVAL = 7200.0
# A connection that has not sent the HTTP/2 preface by then is closed (grpc's handshake
# timeout).
_HANDSHAKE_SECS = 120.0
# A message as large as protobuf can carry (grpc's limit as Triton sets it).
MAX_MESSAGE_BYTES = 2**31 - 1
# Messages at least this large are (de)compressed on a worker thread.
_OFF_LOOP_BYTES = 256 * 1024
# Frame payloads at least this large are copied out of the read buffer through a view.
_COPY_THROUGH_VIEW = 4096
# Unary calls' DATA frames at least this large go to their stream as they arrive.
_INFLOW_FROM = 64 * 1024

_GRPC_CONTENT_TYPE = b"application/grpc"
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
}
# zlib's window bits for each message encoding a client may send.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _Inflated(Exception):
    """A compressed message that inflates beyond the message limit; ``size`` is where
    inflating stopped."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _inflate(data: bytes | bytearray | memoryview, wbits: int) -> bytes:
    """One compressed message, inflated no further than one byte past the message limit."""
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, MAX_MESSAGE_BYTES + 1)
    if len(out) > MAX_MESSAGE_BYTES:
        raise _Inflated(len(out))
    if not inflater.eof or inflater.unused_data:
        raise zlib.error("truncated stream or data after its end")
    return out


_ENCODING_NAMES = {grpc.Compression.Gzip: "gzip", grpc.Compression.Deflate: "deflate"}


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBI", (len(payload) << 8) | kind, flags, stream_id) + payload


def _frame_head(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    return struct.pack(">IBI", (length << 8) | kind, flags, stream_id)


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, with a literal name: it leaves the
    peer's dynamic table alone, so these bytes are valid in any block."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


# ":status: 200" is entry 8 of the static table; content-type (entry 31) as a literal.
_OK_HEAD = b"\x88" + _hpack_int(31, 4) + _hpack_int(len(_GRPC_CONTENT_TYPE), 7) + _GRPC_CONTENT_TYPE
_STATUS_OK = _literal(b"grpc-status", b"0")
# The first five bytes (length, type, flags) of the frames of a plain unary answer's
# headers and trailers; the stream's identifier and the block follow.
_OK_HEAD_FRAME = _frame_head(HEADERS, END_HEADERS, 0, len(_OK_HEAD))[:5]
_TRAILERS_OK_FRAME = _frame_head(HEADERS, END_HEADERS | END_STREAM, 0, len(_STATUS_OK))[:5]


def _head_block(encoding: str | None) -> bytes:
    """The response's header block: gRPC's status and content type, and the messages'
    compression when they are compressed."""
    if encoding is not None:
        return _OK_HEAD + _literal(b"grpc-encoding", encoding.encode())
    return _OK_HEAD


def _grpc_message(details: str) -> bytes:
    # gRPC percent-encodes the status message: bytes outside printable ASCII, and '%'.
    return urllib.parse.quote(
        details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8"
    ).encode("ascii")


def _status_block(code: int, details: str) -> bytes:
    block = _literal(b"grpc-status", str(code).encode("ascii"))
    if details:
        block += _literal(b"grpc-message", _grpc_message(details))
    return block


def _only_indexed_or_plain_literals(block: bytes) -> bool:
    """True when decoding ``block`` cannot change the decoder's dynamic table: it holds only
    indexed fields and literals without indexing (no incremental indexing, no size
    update)."""
    position, size = 0, len(block)
    try:
        while position < size:
            byte = block[position]
            if byte & 0x80:
                position = _skip_int(block, position, 7)
                continue
            if byte & 0x60:
                return False
            name_index = byte & 0x0F
            position = _skip_int(block, position, 4)
            if name_index == 0:
                position = _skip_string(block, position)
            position = _skip_string(block, position)
    except IndexError:
        return False
    return position == size


def _skip_int(block: bytes, position: int, prefix_bits: int) -> int:
    return _read_int(block, position, prefix_bits)[1]


def _read_int(block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    limit = (1 << prefix_bits) - 1
    value = block[position] & limit
    position += 1
    if value < limit:
        return value, position
    shift = 0
    while True:
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _skip_string(block: bytes, position: int) -> int:
    length, position = _read_int(block, position, 7)
    if position + length > len(block):
        raise IndexError("string past the end of the block")
    return position + length


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (up to 8 digits and a unit), or None."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


_UNREADABLE = "Exception deserializing request!"


def _serialized(message: Any) -> bytes | list[bytes | memoryview]:
    """A response's bytes, or their pieces for a message made of pieces (large raw tensors)."""
    if isinstance(message, RawTailMessage):
        return message.serialized_pieces()
    return message.SerializeToString()  # type: ignore[no-any-return]


def _declared(message: bytes | bytearray | memoryview) -> int:
    """The length a gRPC message's prefix declares."""
    return int.from_bytes(message[1:5], "big")


def _decoded(decode: Callable[[Any], Any], data: bytes | memoryview) -> Any:
    try:
        return decode(data)
    except DecodeError:
        raise _Abort(grpc.StatusCode.INTERNAL, _UNREADABLE) from None


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Context:
    """The part of grpc.aio.ServicerContext the servicers use."""

    __slots__ = ("_stream", "code", "details", "compression")

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.compression: grpc.Compression | None = None

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = None
    ) -> None:
        raise _Abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_compression(self, compression: grpc.Compression | None) -> None:
        self.compression = compression

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._stream.metadata()

    def time_remaining(self) -> float | None:
        deadline = self._stream.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self._stream.connection.loop.time())

    def peer(self) -> str:
        return self._stream.connection.peer


class _Method:
    __slots__ = ("handler", "decode", "client_streaming", "server_streaming")

    def __init__(
        self, handler: Any, decode: Any, client_streaming: bool, server_streaming: bool
    ) -> None:
        self.handler = handler
        self.decode = decode
        self.client_streaming = client_streaming
        self.server_streaming = server_streaming


def method_table(services: list[tuple[ServiceDescriptor, Any]]) -> dict[bytes, _Method]:
    """``/package.Service/Method`` paths to the servicer's coroutine and request type."""
    table: dict[bytes, _Method] = {}
    for descriptor, servicer in services:
        # A servicer may name a parser of its own for a method's requests.
        decoders = getattr(type(servicer), "request_decoders", {})
        for method in descriptor.methods:
            request_type = message_factory.GetMessageClass(method.input_type)
            table[f"/{descriptor.full_name}/{method.name}".encode()] = _Method(
                getattr(servicer, method.name),
                decoders.get(method.name, request_type.FromString),
                method.client_streaming,
                method.server_streaming,
            )
    return table


class GrpcListener:
    """Serves ``methods`` on a bound socket; ``stop`` is grpc.aio.Server's ``stop``."""

    def __init__(
        self,
        methods: dict[bytes, _Method],
        *,
        keepalive_time_ms: int = 7200000,
        keepalive_timeout_ms: int = 20000,
        keepalive_permit_without_calls: bool = False,
        max_pings_without_data: int = 2,
        min_recv_ping_interval_without_data_ms: int = 300000,
        max_ping_strikes: int = 2,
    ) -> None:
        self.methods = methods
        self.keepalive_time = keepalive_time_ms / 1000.0
        self.keepalive_timeout = keepalive_timeout_ms / 1000.0
        self.keepalive_permit_without_calls = keepalive_permit_without_calls
        self.max_pings_without_data = max_pings_without_data
        self.min_ping_interval = min_recv_ping_interval_without_data_ms / 1000.0
        self.max_ping_strikes = max_ping_strikes
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self.exiting = False
        self._all_closed = asyncio.Event()

    async def start(self, sock: Any, tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, ssl=tls)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls (GOAWAY), let calls in flight finish for ``grace`` seconds, then
        cancel what is left and close every connection."""
        self.exiting = True
        if self._server is not None:
            self._server.close()
        # A connection closes itself once it has no call left after its GOAWAY.
        for connection in list(self.connections):
            connection.go_away(NO_ERROR)
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace or 0.0)
            except asyncio.TimeoutError:
                pass
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()


class _Head(NamedTuple):
    """A request's header block, decoded, with what the listener reads from it; remembered
    per distinct block (``_Connection._decode``), as a client repeats the same few."""

    headers: list[tuple[bytes, bytes]]
    path: bytes
    method: bytes
    content_type: bytes
    timeout: float | None
    encoding: str
    accept: str

    @classmethod
    def of(cls, headers: list[tuple[bytes, bytes]]) -> _Head:
        path = content_type = b""
        method = b"POST"
        timeout: float | None = None
        encoding, accept = "identity", ""
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                seconds = parse_timeout(value)
                if seconds is not None:
                    timeout = seconds
            elif name == b"grpc-encoding":
                encoding = value.decode("latin-1")
            elif name == b"grpc-accept-encoding":
                accept = value.decode("latin-1")
        return cls(headers, path, method, content_type, timeout, encoding, accept)


class _Stream:
    __slots__ = (
        "id",
        "connection",
        "path",
        "headers",
        "deadline",
        "encoding",
        "accept",
        "send_window",
        "received",
        "acked",
        "held",
        "body",
        "inbox",
        "partial",
        "remote_closed",
        "local_closed",
        "head_sent",
        "task",
        "timer",
        "timed_out",
        "wake",
    )

    def __init__(self, connection: _Connection, stream_id: int, head: _Head) -> None:
        self.id = stream_id
        self.connection = connection
        self.headers = head.headers
        self.path = head.path
        self.deadline: float | None = None
        self.encoding = head.encoding
        self.accept = head.accept
        self.send_window = connection.peer_initial_window
        self.received = 0
        # Window given back to the client so far, and bytes of complete messages that wait
        # in the inbox: those are given back only once the servicer has taken them.
        self.acked = 0
        self.held = 0
        self.body: list[bytes | bytearray | memoryview] = []
        self.inbox: asyncio.Queue[bytes | None] | None = None
        self.partial = bytearray()
        self.remote_closed = False
        self.local_closed = False
        self.head_sent = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out = False
        self.wake: asyncio.Future[None] | None = None

    def call_ended(self, task: asyncio.Task[None]) -> None:
        # A call cancelled as its client went away keeps its CancelledError, whose traceback
        # holds the call's frames and through them this stream: forgetting the task here
        # lets the stream, its connection and the request be freed by reference counting
        # instead of waiting for a garbage collection. The stream is out of its connection's
        # table by then (answered, reset or its connection lost), so no call starts again.
        self.task = None

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        pairs: list[tuple[str, str | bytes]] = []
        for name, value in self.headers:
            if name.startswith(b":") or name in (b"te", b"content-type", b"grpc-timeout"):
                continue
            key = name.decode("latin-1")
            pairs.append((key, value if key.endswith("-bin") else value.decode("latin-1")))
        return tuple(pairs)

    def messages(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Split length-prefixed messages out of what has arrived so far."""
        buffer = self.partial
        buffer += data
        out = []
        position = 0
        while len(buffer) - position >= 5:
            length = int.from_bytes(buffer[position + 1 : position + 5], "big")
            end = position + 5 + length
            if end > len(buffer):
                break
            out.append(bytes(buffer[position:end]))
            position = end
        del buffer[:position]
        return out

    def incomplete_length(self) -> int:
        """The declared length of the message being received, once its prefix is in."""
        partial = self.partial
        return _declared(partial) if len(partial) >= 5 else 0


class _Connection(WriteFlow, asyncio.Protocol):
    def __init__(self, listener: GrpcListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        # A large DATA frame whose payload goes to its stream as it arrives:
        # [the stream or None to drop it, bytes still to come, the frame's flags].
        self.inflow: list[Any] | None = None
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=_HEADER_LIST_LIMIT)
        self.blocks: dict[bytes, _Head] = {}
        self.continuing: tuple[int, int, list[bytes]] | None = None
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.send_window = 65535
        self.received = 0
        self.out: list[bytes] = []
        self.reading = False
        self.going_away = False
        self.closed = False
        self.blocked: set[_Stream] = set()
        # Keepalive and ping policing.
        self.handshake: asyncio.TimerHandle | None = None
        self.keepalive: asyncio.TimerHandle | None = None
        self.ping_timeout: asyncio.TimerHandle | None = None
        self.pings_without_data = 0
        self.ping_strikes = 0
        self.last_ping = float("-inf")

    # --- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple) and len(address) >= 2:
            host = address[0]
            self.peer = (
                f"ipv6:[{host}]:{address[1]}" if ":" in host else f"ipv4:{host}:{address[1]}"
            )
        self.listener.connections.add(self)
        settings = struct.pack(
            ">HIHIHIHIHI",
            _ENABLE_PUSH,
            0,
            _MAX_CONCURRENT_STREAMS,
            _MAX_STREAMS,
            _INITIAL_WINDOW_SIZE,
            _STREAM_WINDOW,
            _MAX_FRAME_SIZE,
            _FRAME_LIMIT,
            _MAX_HEADER_LIST_SIZE,
            _HEADER_LIST_LIMIT,
        )
        self.write(
            _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", _MAX_WINDOW - 65535))
        )
        self.handshake = self.loop.call_later(_HANDSHAKE_SECS, self._handshake_expired)
        self._arm_keepalive()

    def _handshake_expired(self) -> None:
        log.debug("gRPC connection %s sent no connection preface; closing it", self.peer)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        listener = self.listener
        listener.connections.discard(self)
        if listener.exiting and not listener.connections:
            listener._all_closed.set()
        for timer in (self.keepalive, self.ping_timeout, self.handshake):
            if timer is not None:
                timer.cancel()
        for stream in list(self.streams.values()):
            self._cancel_stream(stream)
        self.streams.clear()
        self.stop_flow()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def send(self, data: bytes) -> None:
        """Write ``data``, or while ``data_received`` runs, queue it for its one write."""
        if self.reading:
            self.out.append(data)
        else:
            self.write(data)

    def _sent_data(self) -> None:
        # As grpc does: sending headers or data resets the ping-policing clock and the
        # keepalive pings allowed.
        self.pings_without_data = 0
        self.ping_strikes = 0
        self.last_ping = float("-inf")

    def go_away(self, code: int, reason: str = "") -> None:
        if self.going_away or self.closed:
            return
        self.going_away = True
        self.write(
            _frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code) + reason.encode())
        )
        if not self.streams:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _fail(self, error: _ConnectionError) -> None:
        log.debug("gRPC connection error %#x: %s", error.code, error)
        self.going_away = False
        self.go_away(error.code, str(error))
        self.close()

    # --- reading --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        rest: bytes | memoryview = data
        if self.inflow is not None:
            rest = self._flow_in(data)
            if not rest:
                return
        buffer = self.buffer
        buffer += rest
        position = 0
        if not self.preface:
            if len(buffer) < len(_PREFACE):
                if not _PREFACE.startswith(bytes(buffer)):
                    self._fail(_ConnectionError(PROTOCOL_ERROR, "bad connection preface"))
                return
            if buffer[: len(_PREFACE)] != _PREFACE:
                self._fail(_ConnectionError(PROTOCOL_ERROR, "bad connection preface"))
                return
            self.preface = True
            if self.handshake is not None:
                self.handshake.cancel()
                self.handshake = None
            position = len(_PREFACE)
        size = len(buffer)
        self.reading = True
        # A large payload is copied out of the buffer once, through a view (a slice of the
        # bytearray would be a second copy); the view is let go before the buffer shrinks.
        view: memoryview | None = None
        try:
            while size - position >= 9 and not self.closed:
                head, flags, stream_id = struct.unpack_from(">IBI", buffer, position)
                length, kind = head >> 8, head & 0xFF
                if length > _FRAME_LIMIT:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "frame larger than announced")
                end = position + 9 + length
                if end > size:
                    if (
                        kind == DATA
                        and length >= _INFLOW_FROM
                        and not flags & PADDED
                        and self.continuing is None
                        and self._unary(stream_id & _MAX_WINDOW)
                    ):
                        if view is None:
                            view = memoryview(buffer)
                        self._start_inflow(flags, stream_id & _MAX_WINDOW, length)
                        self._inflow_chunk(bytes(view[position + 9 : size]))
                        position = size
                    break
                payload: bytes | bytearray
                if length < _COPY_THROUGH_VIEW:
                    payload = bytes(buffer[position + 9 : end])
                else:
                    if view is None:
                        view = memoryview(buffer)
                    # A DATA frame's as a bytearray: tensors read from it in place are
                    # writable (``_request``).
                    kept = bytearray if kind == DATA else bytes
                    payload = kept(view[position + 9 : end])
                position = end
                self._on_frame(kind, flags, stream_id & _MAX_WINDOW, payload)
        except _ConnectionError as error:
            self.reading = False
            self.out = []
            self._fail(error)
            return
        except Exception:
            log.exception("gRPC connection %s: unexpected failure; closing it", self.peer)
            self.reading = False
            self.out = []
            self._fail(_ConnectionError(INTERNAL_ERROR, "internal error"))
            return
        finally:
            if view is not None:
                view.release()
        self.reading = False
        del buffer[:position]
        if self.out:
            out, self.out = self.out, []
            self.write(b"".join(out))

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes | bytearray) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
            return
        payload = bytes(payload)  # only a DATA frame's can be a bytearray: no copy
        if kind == HEADERS:
            self._on_headers_frame(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self.continuing is None or self.continuing[0] != stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            parts = self.continuing[2]
            parts.append(payload)
            if sum(map(len, parts)) > _HEADER_LIST_LIMIT:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
            if flags & END_HEADERS:
                stream_id, end, parts = self.continuing
                self.continuing = None
                self._on_headers(stream_id, end, b"".join(parts))
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            self._on_ping(flags, stream_id, payload)
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise _ConnectionError(PROTOCOL_ERROR, "bad RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.local_closed = True
                self._cancel_stream(stream)
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams:
                self.close()
        elif kind == PRIORITY:
            if stream_id == 0 or len(payload) != 5:
                raise _ConnectionError(PROTOCOL_ERROR, "bad PRIORITY")
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients cannot push")
        # Frames of unknown types are ignored (RFC 9113 section 4.1).

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad SETTINGS length")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == _INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                self._wake_blocked()
            elif key == _MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == _HEADER_TABLE_SIZE:
                pass  # responses never add to the peer's table
        self.out.append(_frame(SETTINGS, ACK, 0))

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE length")
        increment = struct.unpack(">I", payload)[0] & _MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "zero window increment")
            self.send_window += increment
            if self.send_window > _MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "window overflow")
            self._wake_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if increment == 0:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream in self.blocked:
            self._wake(stream)

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) != 8:
            raise _ConnectionError(PROTOCOL_ERROR, "bad PING")
        if flags & ACK:
            if self.ping_timeout is not None:
                self.ping_timeout.cancel()
                self.ping_timeout = None
            return
        listener = self.listener
        now = self.loop.time()
        # grpc's ping policing: a ping sooner than allowed after the previous one, with no
        # data sent in between, is a strike; too many and the connection is closed. With no
        # call in progress, and keepalive pings without calls not permitted, two hours apart.
        if self.streams or listener.keepalive_permit_without_calls:
            interval = listener.min_ping_interval
        else:
            interval = _IDLE_PING_INTERVAL
        if now - self.last_ping < interval:
            self.ping_strikes += 1
            if listener.max_ping_strikes and self.ping_strikes > listener.max_ping_strikes:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "too_many_pings")
        self.last_ping = now
        self.out.append(_frame(PING, ACK, 0, payload))

    def _on_headers_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = payload
        if flags & PADDED:
            if not block or block[0] >= len(block):
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            block = block[1 : len(block) - block[0]]
        if flags & PRIORITY_FLAG:
            block = block[5:]
        if flags & END_HEADERS:
            self._on_headers(stream_id, flags & END_STREAM, block)
        else:
            self.continuing = (stream_id, flags & END_STREAM, [block])

    def _decode(self, block: bytes) -> _Head:
        known = self.blocks.get(block)
        if known is not None:
            return known
        try:
            headers = cast(list[tuple[bytes, bytes]], self.decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, str(exc)) from None
        head = _Head.of(headers)
        if _only_indexed_or_plain_literals(block):
            if len(self.blocks) >= 256:
                self.blocks.clear()
            self.blocks[block] = head
        else:
            self.blocks.clear()  # the table changed: remembered blocks may now mean otherwise
        return head

    def _on_headers(self, stream_id: int, end_stream: int, block: bytes) -> None:
        head = self._decode(block)
        stream = self.streams.get(stream_id)
        if stream is not None:
            # Trailers from the client: they end its side of the stream.
            if not end_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._end_remote(stream)
            return
        if stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "even stream identifier from a client")
        if stream_id <= self.last_stream:
            return  # a stream this side has already closed
        self.last_stream = stream_id
        self.pings_without_data = 0
        stream = _Stream(self, stream_id, head)
        if self.going_away:
            self.out.append(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        if len(self.streams) >= _MAX_STREAMS:
            self.out.append(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        if head.timeout is not None:
            stream.deadline = self.loop.time() + head.timeout
        self.streams[stream_id] = stream
        if end_stream:
            stream.remote_closed = True
        if not head.content_type.startswith(_GRPC_CONTENT_TYPE):
            self._http_error(stream, b"415", b"invalid gRPC request content-type")
            return
        if head.method != b"POST":
            self._http_error(stream, b"405", b"gRPC requires POST")
            return
        method = self.listener.methods.get(stream.path)
        if method is None:
            self._finish(stream, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if stream.deadline is not None:
            stream.timer = self.loop.call_at(stream.deadline, self._expire, stream)
        if method.client_streaming:
            stream.inbox = asyncio.Queue()
            self._start_call(stream, method)
            if end_stream:
                stream.inbox.put_nowait(None)
        elif end_stream:
            self._start_call(stream, method)

    def _on_data(self, flags: int, stream_id: int, payload: bytes | bytearray) -> None:
        length = len(payload)
        stream = self._data_stream(stream_id, length)
        if stream is None:
            return
        if flags & PADDED:
            if not payload or payload[0] >= length:
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : length - payload[0]]
        if not self._admit(stream, length):
            return
        if stream.inbox is not None:
            if payload:
                for message in stream.messages(payload):
                    if len(message) - 5 > MAX_MESSAGE_BYTES:
                        self._too_large(stream, len(message) - 5)
                        return
                    stream.held += len(message)
                    stream.inbox.put_nowait(message)
                declared = stream.incomplete_length()
                if declared > MAX_MESSAGE_BYTES:
                    self._too_large(stream, declared)
                    return
        elif payload:
            stream.body.append(payload)
        self._data_done(stream, flags)

    def _data_stream(self, stream_id: int, length: int) -> _Stream | None:
        """Count a DATA frame against the connection's window; its open stream, or None
        when the stream is closed and the bytes are to be dropped."""
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        self.received += length
        if self.received >= _MAX_WINDOW // 2:
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.last_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            return None  # a stream this side has closed: the bytes are dropped
        return stream

    def _admit(self, stream: _Stream, length: int) -> bool:
        """Count a DATA frame against its stream's window and message limit; False when
        that reset the stream."""
        stream.received += length
        if stream.received > _STREAM_WINDOW + stream.acked:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return False
        if stream.inbox is None and stream.received > MAX_MESSAGE_BYTES + 5:
            self._too_large(stream, stream.received - 5)
            return False
        return True

    def _data_done(self, stream: _Stream, flags: int) -> None:
        if flags & END_STREAM:
            self._end_remote(stream)
        else:
            self._give_back(stream)

    # A large DATA frame of a unary call (a request's tensors) is not gathered in the read
    # buffer: its payload goes to the stream chunk by chunk as the reads bring it, those
    # after the first as views of the reads themselves, and the stream's body is joined
    # once. Its window accounting and limits are applied when its header arrives, as the
    # whole frame is then owed.
    def _unary(self, stream_id: int) -> bool:
        stream = self.streams.get(stream_id)
        return stream is not None and stream.inbox is None and not stream.remote_closed

    def _start_inflow(self, flags: int, stream_id: int, length: int) -> None:
        stream = self._data_stream(stream_id, length)
        if stream is not None and not self._admit(stream, length):
            stream = None
        self.inflow = [stream, length, flags]

    def _inflow_chunk(self, chunk: bytes | memoryview) -> None:
        inflow = self.inflow
        assert inflow is not None
        stream = inflow[0]
        if stream is not None and chunk:
            stream.body.append(chunk)
        inflow[1] -= len(chunk)

    def _flow_in(self, data: bytes) -> bytes | memoryview:
        """Hand the front of ``data`` to the DATA frame in flight; what follows it."""
        inflow = self.inflow
        assert inflow is not None
        view = memoryview(data)
        take = min(inflow[1], len(view))
        self._inflow_chunk(view[:take])
        if inflow[1]:
            return b""
        self.inflow = None
        stream, _, flags = inflow
        if stream is not None and not stream.local_closed and not self.closed:
            self.reading = True
            try:
                self._data_done(stream, flags)
            finally:
                self.reading = False
            if self.out:
                out, self.out = self.out, []
                self.write(b"".join(out))
        return view[take:]

    def _give_back(self, stream: _Stream) -> None:
        """Open the stream's window again by what has arrived and is not waiting for the
        servicer, once that is half the window: a client streaming faster than the
        servicer reads is held to one window of messages."""
        free = stream.received - stream.held - stream.acked
        if free >= _STREAM_WINDOW // 2:
            stream.acked += free
            self.send(_frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", free)))

    def _too_large(self, stream: _Stream, size: int) -> None:
        self._finish(
            stream,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({size} vs. {MAX_MESSAGE_BYTES})",
        )
        self._cancel_stream(stream)

    def _end_remote(self, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.inbox is not None:
            stream.inbox.put_nowait(None)
        elif stream.task is None and not stream.local_closed:
            method = self.listener.methods.get(stream.path)
            if method is not None:
                self._start_call(stream, method)

    # --- calls ----------------------------------------------------------------------------
    def _start_call(self, stream: _Stream, method: _Method) -> None:
        stream.task = self.loop.create_task(self._call(stream, method))
        stream.task.add_done_callback(stream.call_ended)

    async def _call(self, stream: _Stream, method: _Method) -> None:
        context = Context(stream)
        code: grpc.StatusCode = grpc.StatusCode.OK
        details = ""
        try:
            if method.client_streaming:
                request: Any = self._requests(stream, method.decode)
            else:
                request = await self._request(stream, method.decode)
            if method.server_streaming:
                async for response in method.handler(request, context):
                    await self._send_message(stream, context, response.SerializeToString())
            else:
                response = await method.handler(request, context)
                if response is None:
                    raise _Abort(context.code or grpc.StatusCode.UNKNOWN, context.details)
                data = _serialized(response)
                if context.compression or not self._send_whole(stream, b"\x00", data, True):
                    await self._send_message(stream, context, data, last=True)
                return
        except _Abort as abort:
            code, details = abort.code, abort.details
        except asyncio.CancelledError:
            if not stream.timed_out:
                raise
            code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
        except Exception as exc:
            if context.code is not None and context.code != grpc.StatusCode.OK:
                code, details = context.code, context.details
            else:
                log.exception("gRPC method %s failed", stream.path.decode("latin-1"))
                code, details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}"
        finally:
            if stream.timer is not None:
                stream.timer.cancel()
        if context.code is not None and code == grpc.StatusCode.OK:
            code, details = context.code, context.details
        self._finish(stream, code, details)

    async def _request(self, stream: _Stream, decode: Callable[[Any], Any]) -> Any:
        # Pieces are joined into a bytearray and a large frame's payload is one already, so
        # that the raw inputs of a large request, read in place, are writable, as a model
        # may expect of its inputs (``grpc_codec.parse_infer_request``).
        body = stream.body[0] if len(stream.body) == 1 else bytearray().join(stream.body)
        stream.body = []
        if not stream.partial and len(body) >= 5 and _declared(body) == len(body) - 5:
            message = body  # the usual case, one whole message: no copy to split it out
        else:
            messages = stream.messages(body)
            if len(messages) != 1 or stream.partial:
                raise _Abort(grpc.StatusCode.INTERNAL, _UNREADABLE)
            message = messages[0]
        if not message[0]:  # not compressed: no coroutine to await
            return _decoded(decode, memoryview(message)[5:])
        return _decoded(decode, await self._payload(stream, message))

    async def _requests(self, stream: _Stream, decode: Callable[[Any], Any]) -> AsyncIterator[Any]:
        inbox = stream.inbox
        assert inbox is not None
        while True:
            message = await inbox.get()
            if message is None:
                if stream.partial:
                    raise _Abort(grpc.StatusCode.INTERNAL, _UNREADABLE)
                return
            stream.held -= len(message)
            if not stream.remote_closed and not stream.local_closed:
                self._give_back(stream)
            yield _decoded(decode, await self._payload(stream, message))

    async def _payload(
        self, stream: _Stream, message: bytes | bytearray | memoryview
    ) -> bytes | memoryview:
        if not message[0]:
            return memoryview(message)[5:]
        wbits = _WBITS.get(stream.encoding)
        if wbits is None:
            raise _Abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"Compression algorithm '{stream.encoding}' is not supported",
            )
        data = message[5:]
        try:
            if len(data) >= _OFF_LOOP_BYTES:
                return await asyncio.to_thread(_inflate, data, wbits)
            return _inflate(data, wbits)
        except _Inflated as inflated:
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({inflated.size} vs. {MAX_MESSAGE_BYTES})",
            ) from None
        except zlib.error:
            raise _Abort(grpc.StatusCode.INTERNAL, "Failed to decompress the request") from None

    async def _send_message(
        self,
        stream: _Stream,
        context: Context,
        data: bytes | list[bytes | memoryview],
        last: bool = False,
    ) -> None:
        """Write one message; ``data`` may come in pieces (``_serialized``). The bytes are
        joined before anything is awaited, so a model that reuses its output buffers for its
        next execution cannot change a response on its way out."""
        flag = b"\x00"
        encoding = _ENCODING_NAMES.get(context.compression) if context.compression else None
        if encoding is not None and encoding in stream.accept:
            if stream.local_closed or self.closed:  # before compressing for nobody
                raise asyncio.CancelledError()
            if isinstance(data, list):
                data = b"".join(data)
            compress = _COMPRESSORS[encoding]
            data = (
                await asyncio.to_thread(compress, data)
                if len(data) >= _OFF_LOOP_BYTES
                else compress(data)
            )
            flag = b"\x01"
        else:
            encoding = None  # sent as it is
        if self._send_whole(stream, flag, data, last, encoding):
            return
        if not stream.head_sent:
            stream.head_sent = True
            self.write(_frame(HEADERS, END_HEADERS, stream.id, _head_block(encoding)))
        pieces = data if isinstance(data, list) else [data]
        message = b"".join([flag + sum(map(len, pieces)).to_bytes(4, "big"), *pieces])
        await self._write_data(stream, memoryview(message))
        if last:
            self._finish(stream, grpc.StatusCode.OK, "")

    def _send_whole(
        self,
        stream: _Stream,
        flag: bytes,
        data: bytes | list[bytes | memoryview],
        last: bool,
        encoding: str | None = None,
    ) -> bool:
        """Write one message (``flag``: compressed or not) in one go, with the response's
        headers if they are still owed (naming ``encoding``, the messages' compression) and,
        for the ``last``, the trailers; False, having written nothing, when the flow control
        windows, the peer's frame size or a paused transport do not allow it."""
        if stream.local_closed or self.closed:
            raise asyncio.CancelledError()
        pieces = data if isinstance(data, list) else [data]
        length = 0
        for piece in pieces:
            length += len(piece)
        size = length + 5
        if (
            size > self.send_window
            or size > stream.send_window
            or size > self.peer_max_frame
            or self.write_paused
        ):
            return False
        self.send_window -= size
        stream.send_window -= size
        sid = stream.id.to_bytes(4, "big")
        parts: list[bytes | memoryview] = []
        if not stream.head_sent:
            stream.head_sent = True
            if encoding is None:
                parts += [_OK_HEAD_FRAME, sid, _OK_HEAD]
            else:
                parts.append(_frame(HEADERS, END_HEADERS, stream.id, _head_block(encoding)))
        parts += [_frame_head(DATA, 0, stream.id, size), flag, length.to_bytes(4, "big"), *pieces]
        if last:
            parts += [_TRAILERS_OK_FRAME, sid, _STATUS_OK]
        self.write(b"".join(parts))
        if last:
            self._closed_locally(stream)
        self._sent_data()
        return True

    async def _write_data(self, stream: _Stream, view: memoryview) -> None:
        while view:
            if stream.local_closed or self.closed:
                raise asyncio.CancelledError()
            allowed = min(self.send_window, stream.send_window, len(view))
            if allowed <= 0:
                stream.wake = self.loop.create_future()
                self.blocked.add(stream)
                try:
                    await stream.wake
                finally:
                    self.blocked.discard(stream)
                    stream.wake = None
                continue
            self.send_window -= allowed
            stream.send_window -= allowed
            chunk_size = self.peer_max_frame
            frames: list[bytes | memoryview] = []
            for start in range(0, allowed, chunk_size):
                chunk = view[start : min(start + chunk_size, allowed)]
                frames.append(_frame_head(DATA, 0, stream.id, len(chunk)))
                frames.append(chunk)
            self.write(b"".join(frames))
            view = view[allowed:]
            self._sent_data()
            await self.drain()

    def _wake(self, stream: _Stream) -> None:
        if stream.wake is not None and not stream.wake.done():
            stream.wake.set_result(None)

    def _wake_blocked(self) -> None:
        for stream in list(self.blocked):
            self._wake(stream)

    def _finish(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        if stream.local_closed or self.closed:
            return
        number = code.value[0]
        if stream.head_sent:
            block = _status_block(number, details)
        else:
            block = _OK_HEAD + _status_block(number, details)  # a trailers-only response
        self.send(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._sent_data()
        self._closed_locally(stream)

    def _http_error(self, stream: _Stream, status: bytes, details: bytes) -> None:
        block = (
            _literal(b":status", status)
            + _literal(b"content-type", b"text/plain")
            + _status_block(grpc.StatusCode.INTERNAL.value[0], details.decode())
        )
        self.send(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._closed_locally(stream)

    def _closed_locally(self, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.timer is not None:
            stream.timer.cancel()
        if not stream.remote_closed:
            # The answer is complete; the client need not send the rest.
            self.send(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
        self.streams.pop(stream.id, None)
        if self.going_away and not self.streams:
            self.close()

    def _reset(self, stream: _Stream, code: int) -> None:
        self.send(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))
        stream.local_closed = True
        self.streams.pop(stream.id, None)
        self._cancel_stream(stream)

    def _cancel_stream(self, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
        self._wake(stream)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    def _expire(self, stream: _Stream) -> None:
        stream.timer = None
        if stream.local_closed:
            return
        if stream.task is not None and not stream.task.done():
            stream.timed_out = True
            stream.task.cancel()
        else:
            # The request never completed: answer now.
            self._finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # --- keepalive --------------------------------------------------------------------------
    def _arm_keepalive(self) -> None:
        if self.listener.keepalive_time > 0 and not self.closed:
            self.keepalive = self.loop.call_later(
                self.listener.keepalive_time, self._send_keepalive
            )

    def _send_keepalive(self) -> None:
        listener = self.listener
        allowed = self.streams or listener.keepalive_permit_without_calls
        limited = (
            listener.max_pings_without_data
            and self.pings_without_data >= listener.max_pings_without_data
        )
        if allowed and not limited and self.ping_timeout is None:
            self.pings_without_data += 1
            self.write(_frame(PING, 0, 0, b"keepaliv"))
            self.ping_timeout = self.loop.call_later(
                listener.keepalive_timeout, self._keepalive_expired
            )
        self._arm_keepalive()

    def _keepalive_expired(self) -> None:
        self.ping_timeout = None
        log.debug("gRPC keepalive ping unanswered; closing %s", self.peer)
        if self.transport is not None:
            self.transport.abort()
