"""The gRPC listener in-process, on a real socket: grpcio clients for calls, deadlines,
cancellation, compression, streaming and large messages, and a raw HTTP/2 client (h2) for
the protocol's edges: the preface, pings, content types, header blocks split into
CONTINUATION frames, padding, ping policing, keepalive and a graceful stop."""

from __future__ import annotations

import asyncio
import gc
import gzip
import itertools
import socket
import struct
import weakref
from collections.abc import AsyncIterator
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from server.grpc import listener as listener_module
from server.grpc.listener import GrpcListener, method_table
from server.protocol.generated import grpc_service_pb2 as pb
from server.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from server.protocol.grpc_codec import RawTailMessage

TIMEOUT = 10.0
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
INFER = "/inference.GRPCInferenceService/ModelInfer"


class Servicer:
    """ModelInfer echoes the request's raw inputs back as outputs; the model name steers
    it: "fail" aborts, "crash" raises, "wait" blocks until released, "zip" compresses."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.stream_seen: list[str] = []

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=False)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        name = request.model_name
        if name == "fail":
            await context.abort(grpc.StatusCode.NOT_FOUND, "modèle 'fail' 100% absent\n")
        if name == "crash":
            raise RuntimeError("boom")
        if name == "wait":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if name.startswith("zip"):
            context.set_compression(grpc.Compression.Gzip)
        response = pb.ModelInferResponse(model_name=name, id=request.id)
        if name.endswith("pieces"):
            # The echo in pieces, from a buffer that changes as soon as the handler returns:
            # what goes out must be the bytes as they were when it returned.
            buffers = [bytearray(raw) for raw in request.raw_input_contents]
            for buffer in buffers:
                asyncio.get_running_loop().call_soon(buffer.__setitem__, slice(None, 5), b"XXXXX")
            return RawTailMessage(response.SerializeToString(), [memoryview(b) for b in buffers])
        response.raw_output_contents.extend(request.raw_input_contents)
        return response

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> Any:
        async for request in requests:
            if request.model_name == "hold":
                await self.release.wait()  # reads nothing more until released
            self.stream_seen.append(request.id)
            yield pb.ModelStreamInferResponse(
                infer_response=pb.ModelInferResponse(id=request.id, model_name="echo")
            )

    def __getattr__(self, name: str) -> Any:
        async def unimplemented(request: Any, context: Any) -> Any:
            context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            context.set_details("Method not implemented!")
            raise NotImplementedError(name)

        return unimplemented


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcListener, Servicer, int]]:
    servicer = Servicer()
    listener = GrpcListener(method_table([(SERVICE, servicer)]))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    await listener.start(sock)
    try:
        yield listener, servicer, sock.getsockname()[1]
    finally:
        servicer.release.set()
        await listener.stop(0.5)


def _stub(port: int, **options: Any) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
        **options,
    )
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


async def _still_serving(port: int) -> None:
    """A fresh client gets an answer: whatever the test did left the listener serving."""
    channel, stub = _stub(port)
    async with channel:
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT)).live


async def test_unary_calls_and_errors_keep_the_connection_serving(served: Any) -> None:
    _, _, port = served
    channel, stub = _stub(port)
    async with channel:
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT)).live
        # Alternating methods: after the first calls every header block is table
        # references, answered from the remembered blocks; each must reach its own method.
        for index in range(5):
            assert not (await stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT)).ready
            reply = await stub.ModelInfer(
                pb.ModelInferRequest(model_name="echo", id=str(index), raw_input_contents=[b"ab"]),
                timeout=TIMEOUT,
            )
            assert (reply.id, list(reply.raw_output_contents)) == (str(index), [b"ab"])
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="fail"), timeout=TIMEOUT)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "modèle 'fail' 100% absent\n"
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="crash"), timeout=TIMEOUT)
        assert crashed.value.code() == grpc.StatusCode.UNKNOWN
        assert "boom" in crashed.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ModelConfig(pb.ModelConfigRequest(name="x"), timeout=TIMEOUT)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert missing.value.details() == "Method not implemented!"
        unknown = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await unknown(b"", timeout=TIMEOUT)
        assert absent.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert absent.value.details() == "Method not found!"
        garbled = channel.unary_unary(INFER)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await garbled(b"\xff\xff\xff", timeout=TIMEOUT)
        assert bad.value.code() == grpc.StatusCode.INTERNAL
        assert bad.value.details() == "Exception deserializing request!"
        reply = await stub.ModelInfer(pb.ModelInferRequest(model_name="after"), timeout=TIMEOUT)
        assert reply.model_name == "after"


async def test_a_deadline_cancels_the_handler(served: Any) -> None:
    _, servicer, port = served
    channel, stub = _stub(port)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="wait"), timeout=0.3)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(servicer.cancelled.wait(), TIMEOUT)
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT)).live


async def test_a_client_cancel_cancels_the_handler(served: Any) -> None:
    _, servicer, port = served
    channel, stub = _stub(port)
    async with channel:
        call = stub.ModelInfer(pb.ModelInferRequest(model_name="wait"), timeout=TIMEOUT)
        await asyncio.wait_for(servicer.started.wait(), TIMEOUT)
        call.cancel()
        await asyncio.wait_for(servicer.cancelled.wait(), TIMEOUT)
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT)).live


async def test_large_messages_cross_the_flow_control_windows(served: Any) -> None:
    """20 MB each way: more than the 8 MiB stream window this side announces and far more
    than the client's initial window, so both directions wait for window updates."""
    _, _, port = served
    channel, stub = _stub(port)
    big = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    async with channel:
        replies = await asyncio.gather(
            *(
                stub.ModelInfer(
                    pb.ModelInferRequest(model_name=str(i), raw_input_contents=[big]),
                    timeout=60,
                )
                for i in range(3)
            )
        )
    for i, reply in enumerate(replies):
        assert reply.model_name == str(i)
        assert reply.raw_output_contents[0] == big


@pytest.mark.parametrize("name", ["pieces", "zip-pieces"])
async def test_a_response_in_pieces_arrives_as_one_message(served: Any, name: str) -> None:
    """Raw outputs handed over as buffers (grpc_codec.RawTailMessage), plain and compressed,
    small and across the client's windows, arrive as the buffers were when the handler
    returned."""
    _, _, port = served
    channel, stub = _stub(port)
    sizes = [0, 100, 70_000, 3 * 1024 * 1024]
    raws = [bytes(range(256)) * (size // 256) + bytes(size % 256) for size in sizes]
    async with channel:
        reply = await stub.ModelInfer(
            pb.ModelInferRequest(model_name=name, id="p", raw_input_contents=raws),
            timeout=TIMEOUT,
        )
    assert (reply.model_name, reply.id) == (name, "p")
    assert list(reply.raw_output_contents) == raws


async def test_a_response_in_pieces_fits_one_frame_when_the_windows_allow(served: Any) -> None:
    """A client with large windows and frames gets headers, the whole message in one DATA
    frame and the trailers."""
    _, _, port = served
    client = await RawClient.open(port)
    try:
        client.conn.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: 2**24 - 1,
            }
        )
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        client.flush()
        await client.until(h2.events.SettingsAcknowledged)
        payload = bytes(range(256)) * 1000
        request = pb.ModelInferRequest(model_name="pieces", raw_input_contents=[payload])
        client.conn.send_headers(1, client.request_headers())
        client.conn.send_data(1, _message(request), end_stream=True)
        client.flush()
        data, sizes = await client.message()
        assert len(sizes) == 1
        assert pb.ModelInferResponse.FromString(data[5:]).raw_output_contents[0] == payload
        assert await client.status() == b"0"
    finally:
        client.close()


async def test_messages_over_the_limit_are_refused_unary_and_streaming(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the message limit (2 GB, here lowered) a unary call and a stream end with
    RESOURCE_EXHAUSTED in grpc's words. A stream is refused as soon as the oversized
    message's length prefix arrives, before its bytes are buffered."""
    _, servicer, port = served
    monkeypatch.setattr(listener_module, "MAX_MESSAGE_BYTES", 1000)
    big = pb.ModelInferRequest(id="big", raw_input_contents=[b"x" * 2000])
    size = big.ByteSize()
    words = f"Received message larger than max ({size} vs. 1000)"
    channel, stub = _stub(port)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.ModelInfer(big, timeout=TIMEOUT)
        assert (unary.value.code(), unary.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            words,
        )
        call = stub.ModelStreamInfer(timeout=TIMEOUT)
        await call.write(pb.ModelInferRequest(id="small"))
        first = await call.read()
        assert first.infer_response.id == "small"
        await call.write(big)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await call.read()
        assert (streamed.value.code(), streamed.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            words,
        )
    assert servicer.stream_seen == ["small"]

    # Only the prefix of a message declared at 2 GB + 1: refused without waiting for it.
    client = await RawClient.open(port)
    try:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id, client.request_headers("/inference.GRPCInferenceService/ModelStreamInfer")
        )
        client.conn.send_data(stream_id, b"\x00" + (2**31).to_bytes(4, "big"))
        client.flush()
        # A trailers-only answer: the one header block carries the status.
        ended = await client.until(h2.events.ResponseReceived)
        trailers = dict(ended.headers)
        assert trailers[b"grpc-status"] == b"8"
        assert b"larger than max (2147483648 vs. 1000)" in trailers[b"grpc-message"]
    finally:
        client.close()
    await _still_serving(port)


async def test_compressed_messages_inflate_no_further_than_the_limit(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small compressed message that inflates past the limit is refused as grpc refuses
    it, without inflating it whole; one that does not inflate is an INTERNAL error."""
    _, _, port = served
    monkeypatch.setattr(listener_module, "MAX_MESSAGE_BYTES", 1000)
    bomb = pb.ModelInferRequest(id="bomb", raw_input_contents=[bytes(100_000)])
    channel, stub = _stub(port, compression=grpc.Compression.Gzip)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ModelInfer(bomb, timeout=TIMEOUT)
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Received message larger than max (1001 vs. 1000)",
        )
        small = await stub.ModelInfer(pb.ModelInferRequest(id="small"), timeout=TIMEOUT)
        assert small.id == "small"

    whole = gzip.compress(pb.ModelInferRequest(id="x").SerializeToString())
    client = await RawClient.open(port)
    try:
        for body in (b"\x1f\x8bnot gzip at all", whole[: len(whole) // 2], whole + b"tail"):
            stream_id = client.conn.get_next_available_stream_id()
            headers = [*client.request_headers(), (b"grpc-encoding", b"gzip")]
            client.conn.send_headers(stream_id, headers)
            client.conn.send_data(
                stream_id, b"\x01" + len(body).to_bytes(4, "big") + body, end_stream=True
            )
            client.flush()
            answer = await client.until(
                h2.events.ResponseReceived,
                lambda event, sid=stream_id: event.stream_id == sid,
            )
            fields = dict(answer.headers)
            assert (fields[b"grpc-status"], fields[b"grpc-message"]) == (
                b"13",
                b"Failed to decompress the request",
            )
    finally:
        client.close()
    await _still_serving(port)


async def test_a_stream_is_held_to_one_window_while_the_servicer_does_not_read(
    served: Any,
) -> None:
    """Messages the servicer has not taken yet keep their bytes out of the window given
    back, so a client cannot stream more than one window ahead of it."""
    _, servicer, port = served
    client = await RawClient.open(port)
    path = "/inference.GRPCInferenceService/ModelStreamInfer"
    try:
        # The listener's settings (an 8 MiB stream window) and its connection window.
        await client.until(h2.events.RemoteSettingsChanged)
        await client.until(h2.events.WindowUpdated, lambda event: event.stream_id == 0)
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, client.request_headers(path))
        client.conn.send_data(stream_id, _message(pb.ModelInferRequest(id="h", model_name="hold")))
        one = _message(pb.ModelInferRequest(id="x", raw_input_contents=[bytes(256 * 1024)]))
        sent = 0
        while client.conn.local_flow_control_window(stream_id) >= len(one):
            for start in range(0, len(one), 16384):
                client.conn.send_data(stream_id, one[start : start + 16384])
            sent += 1
        client.flush()
        assert sent >= 16, "the stream window is 8 MiB"

        def reopened(event: Any) -> bool:
            return event.stream_id == stream_id

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.until(h2.events.WindowUpdated, reopened), 0.5)
        servicer.release.set()
        await client.until(h2.events.WindowUpdated, reopened)
        client.conn.end_stream(stream_id)
        client.flush()
        await client.until(h2.events.TrailersReceived, reopened)
        assert servicer.stream_seen == ["h"] + ["x"] * sent
    finally:
        client.close()


@pytest.mark.parametrize("algorithm", [grpc.Compression.Gzip, grpc.Compression.Deflate])
async def test_compressed_requests_and_responses(served: Any, algorithm: grpc.Compression) -> None:
    _, _, port = served
    channel, stub = _stub(port, compression=algorithm)
    payload = b"tensor" * 100_000  # 600 KB: compressed on a worker thread both ways
    async with channel:
        for name in ("echo", "zip"):
            reply = await stub.ModelInfer(
                pb.ModelInferRequest(model_name=name, raw_input_contents=[payload, b"x"]),
                timeout=TIMEOUT,
            )
            assert list(reply.raw_output_contents) == [payload, b"x"]


async def test_a_response_is_compressed_only_for_a_client_that_accepts_it(served: Any) -> None:
    _, _, port = served
    payload = b"tensor" * 1000
    for accept, flag, encoding in ((b"identity, gzip", 1, b"gzip"), (b"identity", 0, None)):
        client = await RawClient.open(port)
        try:
            headers = client.request_headers() + [(b"grpc-accept-encoding", accept)]
            request = pb.ModelInferRequest(model_name="zip", raw_input_contents=[payload])
            client.conn.send_headers(1, headers)
            client.conn.send_data(1, _message(request), end_stream=True)
            client.flush()
            response = await client.until(h2.events.ResponseReceived)
            assert dict(response.headers).get(b"grpc-encoding") == encoding
            data, _ = await client.message()
            assert data[0] == flag
            body = gzip.decompress(data[5:]) if flag else data[5:]
            assert pb.ModelInferResponse.FromString(body).raw_output_contents[0] == payload
            assert await client.status() == b"0"
        finally:
            client.close()


async def test_a_bidirectional_stream_answers_each_message(served: Any) -> None:
    _, servicer, port = served
    channel, stub = _stub(port)
    async with channel:
        requests = [pb.ModelInferRequest(id=str(i), model_name="echo") for i in range(50)]
        replies = [r.infer_response.id async for r in stub.ModelStreamInfer(iter(requests))]
    assert replies == [str(i) for i in range(50)]
    assert servicer.stream_seen == replies


class RawClient:
    """An HTTP/2 client connection driven frame by frame (h2 with its checks relaxed)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.events: list[Any] = []

    @classmethod
    async def open(cls, port: int, preface: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if preface:
            client.conn.initiate_connection()
            client.flush()
        return client

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def request_headers(self, path: str = INFER, content_type: bytes = b"application/grpc") -> list:
        return [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"localhost"),
            (b"content-type", content_type),
            (b"te", b"trailers"),
        ]

    async def until(self, kind: type, predicate: Any = lambda event: True) -> Any:
        while True:
            for index, event in enumerate(self.events):
                if isinstance(event, kind) and predicate(event):
                    return self.events.pop(index)
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                raise EOFError("connection closed")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                self.events.append(event)
            self.flush()

    async def message(self) -> tuple[bytes, list[int]]:
        """One length-prefixed message from DATA frames, and the size of each frame."""
        data = b""
        sizes: list[int] = []
        while len(data) < 5 or len(data) < 5 + int.from_bytes(data[1:5], "big"):
            piece = (await self.until(h2.events.DataReceived)).data
            sizes.append(len(piece))
            data += piece
        return data, sizes

    async def status(self) -> bytes:
        """The grpc-status of the trailers that end a call."""
        trailers = await self.until(h2.events.TrailersReceived)
        return dict(trailers.headers)[b"grpc-status"]

    async def closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        seen = b""
        while data := await asyncio.wait_for(self.reader.read(65536), TIMEOUT):
            seen += data
        return seen

    def close(self) -> None:
        self.writer.close()


def _message(request: Any) -> bytes:
    body = request.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


async def test_raw_call_with_padding_and_continuation_frames(served: Any) -> None:
    _, _, port = served
    client = await RawClient.open(port)
    try:
        await client.until(h2.events.RemoteSettingsChanged)
        block = client.conn.encoder.encode(client.request_headers())
        # HEADERS without END_HEADERS, then the rest of the block in two CONTINUATIONs.
        head = struct.pack(">I", len(block[:3]))[1:] + bytes((1, 0)) + struct.pack(">I", 1)
        middle = struct.pack(">I", len(block[3:6]))[1:] + bytes((9, 0)) + struct.pack(">I", 1)
        tail = struct.pack(">I", len(block[6:]))[1:] + bytes((9, 4)) + struct.pack(">I", 1)
        body = _message(pb.ModelInferRequest(model_name="padded", raw_input_contents=[b"q"]))
        padded = bytes((7,)) + body + bytes(7)
        data = struct.pack(">I", len(padded))[1:] + bytes((0, 0x8 | 0x1)) + struct.pack(">I", 1)
        client.writer.write(
            head + block[:3] + middle + block[3:6] + tail + block[6:] + data + padded
        )
        ended = await _raw_response(client)
        status, message = ended
        assert status == b"0"
        reply = pb.ModelInferResponse.FromString(message[5:])
        assert (reply.model_name, list(reply.raw_output_contents)) == ("padded", [b"q"])
    finally:
        client.close()


async def _raw_response(client: RawClient) -> tuple[bytes, bytes]:
    """Read frames by hand until the trailers of stream 1; return grpc-status and data."""
    data = b""
    status = None
    decoder = hpack.Decoder()
    buffer = b""
    while status is None:
        chunk = await asyncio.wait_for(client.reader.read(65536), TIMEOUT)
        if not chunk:
            raise EOFError("closed")
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
            if kind == 0:
                data += payload
            elif kind == 1:
                headers = dict(decoder.decode(payload, raw=True))
                if flags & 1:
                    status = headers[b"grpc-status"]
    return status, data


async def test_pings_are_answered_and_a_flood_without_calls_is_refused(served: Any) -> None:
    _, _, port = served
    client = await RawClient.open(port)
    try:
        client.conn.ping(b"12345678")
        client.flush()
        ack = await client.until(h2.events.PingAckReceived)
        assert ack.ping_data == b"12345678"
        for n in range(3):
            client.conn.ping(b"flood%03d" % n)
        client.flush()
        terminated = await client.until(h2.events.ConnectionTerminated)
        assert terminated.error_code == 0xB  # ENHANCE_YOUR_CALM
        assert terminated.additional_data == b"too_many_pings"
    finally:
        client.close()


async def test_a_non_grpc_content_type_gets_415(served: Any) -> None:
    _, _, port = served
    client = await RawClient.open(port)
    try:
        client.conn.send_headers(
            1, client.request_headers(content_type=b"application/json"), end_stream=True
        )
        client.flush()
        response = await client.until(h2.events.ResponseReceived)
        assert dict(response.headers)[b":status"] == b"415"
        # The connection goes on serving calls.
        client.conn.send_headers(3, client.request_headers(), end_stream=False)
        client.conn.send_data(3, _message(pb.ModelInferRequest(model_name="ok")), end_stream=True)
        client.flush()
        trailers = await client.until(h2.events.TrailersReceived, lambda e: e.stream_id == 3)
        assert dict(trailers.headers)[b"grpc-status"] == b"0"
    finally:
        client.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # HTTP/1.1 on the gRPC port
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x10\x00\x01\x00\x00\x00\x00\x00\x01",  # over 1 MiB
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x03\x01\x05\x00\x00\x00\x01\xff\xff\xff",
    ],
    ids=["http1", "zero-window-update", "oversized-frame", "broken-header-block"],
)
async def test_protocol_errors_close_only_that_connection(served: Any, garbage: bytes) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(garbage)
    seen = b""
    while data := await asyncio.wait_for(reader.read(65536), TIMEOUT):
        seen += data
    writer.close()
    assert b"\x07\x00\x00\x00\x00\x00" in seen  # a GOAWAY frame before the close
    await _still_serving(port)


async def test_stop_lets_a_call_in_flight_finish_and_refuses_new_ones(served: Any) -> None:
    listener, servicer, port = served
    channel, stub = _stub(port)
    async with channel:
        call = stub.ModelInfer(pb.ModelInferRequest(model_name="wait"), timeout=TIMEOUT)
        await asyncio.wait_for(servicer.started.wait(), TIMEOUT)
        stopping = asyncio.create_task(listener.stop(5.0))
        servicer.release.set()
        reply = await call
        assert reply.model_name == "wait"
        await asyncio.wait_for(stopping, TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_keepalive_pings_close_a_silent_peer() -> None:
    listener = GrpcListener(
        method_table([(SERVICE, Servicer())]),
        keepalive_time_ms=50,
        keepalive_timeout_ms=100,
        keepalive_permit_without_calls=True,
        max_pings_without_data=0,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    await listener.start(sock)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        seen = b""
        # Never answering the pings: the server gives up and closes.
        while data := await asyncio.wait_for(reader.read(65536), TIMEOUT):
            seen += data
        writer.close()
        assert b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" in seen  # a PING was sent
    finally:
        await listener.stop(0.1)


async def test_an_endless_header_block_is_refused(served: Any) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    piece = b"\x00" * 16000
    head = struct.pack(">I", len(piece))[1:] + bytes((1, 0)) + struct.pack(">I", 1)
    more = struct.pack(">I", len(piece))[1:] + bytes((9, 0)) + struct.pack(">I", 1)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + head + piece + (more + piece) * 8)
    # Without END_HEADERS the block would never end: the server closes the connection (its
    # GOAWAY may be lost to a reset, as the rest of the flood is left unread).
    try:
        while await asyncio.wait_for(reader.read(65536), TIMEOUT):
            pass
    except ConnectionResetError:
        pass
    writer.close()
    await _still_serving(port)


async def test_a_connection_without_a_preface_is_closed(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, port = served
    monkeypatch.setattr(listener_module, "_HANDSHAKE_SECS", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PRI * HT")  # a preface that never completes
    assert await asyncio.wait_for(reader.read(), TIMEOUT)  # the server's SETTINGS, then EOF
    assert reader.at_eof()
    writer.close()


async def test_a_response_waits_for_a_small_client_window(served: Any) -> None:
    """The client allows 1,000 bytes per stream: a 100 KB answer goes out in pieces, each
    after the window update that pays for it, and arrives whole."""
    _, _, port = served
    client = await RawClient.open(port)
    try:
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        client.flush()
        await client.until(h2.events.SettingsAcknowledged)
        payload = bytes(range(256)) * 400
        request = pb.ModelInferRequest(model_name="small-window", raw_input_contents=[payload])
        client.conn.send_headers(1, client.request_headers())
        client.conn.send_data(1, _message(request), end_stream=True)
        client.flush()
        data, sizes = await client.message()
        assert max(sizes) <= 1000
        assert len(sizes) > 100
        reply = pb.ModelInferResponse.FromString(data[5:])
        assert reply.raw_output_contents[0] == payload
        assert await client.status() == b"0"
    finally:
        client.close()


async def test_accepted_connections_send_small_writes_at_once(served: Any) -> None:
    listener, _, port = served
    client = await RawClient.open(port)
    try:
        await client.until(h2.events.RemoteSettingsChanged)
        (connection,) = listener.connections
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.close()


async def test_pings_between_answered_calls_are_not_strikes(served: Any) -> None:
    """Each answer, an error's trailers included, resets ping policing, as in grpc: a client
    that pings between its calls is never told it pings too often."""
    _, _, port = served
    client = await RawClient.open(port)
    try:
        for index in range(5):
            client.conn.ping(b"ping%04d" % index)
            client.flush()
            await client.until(h2.events.PingAckReceived)
            stream_id = 1 + 2 * index
            client.conn.send_headers(stream_id, client.request_headers("/no.Such/Method"))
            client.conn.send_data(stream_id, b"\x00\x00\x00\x00\x00", end_stream=True)
            client.flush()
            trailers = await client.until(
                h2.events.ResponseReceived, lambda e, sid=stream_id: e.stream_id == sid
            )
            assert dict(trailers.headers)[b"grpc-status"] == b"12"  # UNIMPLEMENTED
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
    finally:
        client.close()


class _Wire(asyncio.Transport):
    """A transport that keeps what the listener writes, for feeding a connection reads of
    chosen sizes without a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.changed = asyncio.Event()
        self.closing = False

    def write(self, data: Any) -> None:
        self.sent += data
        self.changed.set()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _raw_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _call_bytes(stream: int, model: str, payload: bytes) -> tuple[bytes, int]:
    """HEADERS and one DATA frame for a ModelInfer call; and where the DATA frame starts."""
    block = hpack.Encoder().encode(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", INFER.encode()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
    )
    body = _message(pb.ModelInferRequest(model_name=model, raw_input_contents=[payload]))
    headers = _raw_frame(1, 0x4, stream, block)
    return headers + _raw_frame(0, 0x1, stream, body), len(headers)


def _answers(sent: bytes) -> tuple[dict[int, tuple[bytes, bytes]], int]:
    """Per stream, the grpc-status and message bytes the listener wrote; and the PING ACKs."""
    decoder = hpack.Decoder()
    data: dict[int, bytes] = {}
    ended: dict[int, tuple[bytes, bytes]] = {}
    acks = 0
    position = 0
    while len(sent) - position >= 9:
        length = int.from_bytes(sent[position : position + 3], "big")
        kind, flags = sent[position + 3], sent[position + 4]
        stream = int.from_bytes(sent[position + 5 : position + 9], "big")
        payload = bytes(sent[position + 9 : position + 9 + length])
        position += 9 + length
        if kind == 0:
            data[stream] = data.get(stream, b"") + payload
        elif kind == 1:
            headers = dict(decoder.decode(payload, raw=True))
            if flags & 0x1:
                ended[stream] = (headers[b"grpc-status"], data.get(stream, b""))
        elif kind == 6 and flags & 0x1:
            acks += 1
    return ended, acks


def _connected(listener: GrpcListener) -> tuple[Any, _Wire]:
    """A connection of ``listener`` on a socketless transport."""
    connection = listener_module._Connection(listener)
    wire = _Wire()
    connection.connection_made(wire)
    return connection, wire


async def _answered(
    connection: Any, wire: _Wire, streams: tuple[int, ...]
) -> tuple[dict[int, tuple[bytes, bytes]], int]:
    """What ``_answers`` finds once every one of ``streams`` has ended; the connection is
    then closed."""
    try:
        while True:
            ended, acks = _answers(bytes(wire.sent))
            if all(stream in ended for stream in streams):
                return ended, acks
            wire.changed.clear()
            await asyncio.wait_for(wire.changed.wait(), TIMEOUT)
    finally:
        connection.connection_lost(None)


@pytest.mark.parametrize(
    "cuts",
    [
        pytest.param(lambda start, end: [start + 9], id="header-alone-then-the-rest"),
        pytest.param(lambda start, end: list(range(start + 100, end, 7000)), id="seven-kb-reads"),
        pytest.param(lambda start, end: [start + 70_000], id="the-end-with-a-ping"),
        pytest.param(lambda start, end: [], id="one-read"),
    ],
)
async def test_a_large_data_frame_is_taken_as_it_arrives(served: Any, cuts: Any) -> None:
    """A unary call's large DATA frame reaches the call whole, however the reads cut it:
    right after the frame header, in small pieces, or with the next frame in the same read
    as its end (a PING, answered); the connection then serves a second call."""
    listener, _, _ = served
    connection, wire = _connected(listener)
    settings = struct.pack(">HIHI", 0x4, 2**31 - 1, 0x5, 2**24 - 1)
    window = _raw_frame(8, 0, 0, struct.pack(">I", 2**31 - 1 - 65535))
    opening = listener_module._PREFACE + _raw_frame(4, 0, 0, settings) + window
    payload = bytes(range(256)) * 1200
    call, start = _call_bytes(1, "inflow", payload)
    ping = _raw_frame(6, 0, 0, b"12345678")
    stream = opening + call + ping
    begin = len(opening) + start
    points = [0, *cuts(begin, len(opening) + len(call)), len(stream)]
    connection.data_received(stream[:begin])
    for left, right in itertools.pairwise(points):
        connection.data_received(stream[max(left, begin) : right])
    second, _ = _call_bytes(3, "after", b"small")
    connection.data_received(second)
    ended, acks = await _answered(connection, wire, (1, 3))
    status, message = ended[1]
    assert status == b"0"
    reply = pb.ModelInferResponse.FromString(message[5:])
    assert reply.model_name == "inflow"
    assert reply.raw_output_contents[0] == payload
    assert acks == 1
    assert ended[3][0] == b"0"
    assert pb.ModelInferResponse.FromString(ended[3][1][5:]).raw_output_contents[0] == b"small"


async def test_a_large_data_frame_over_the_limit_is_refused_and_dropped(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large frame that takes a unary call over the message limit ends that call with
    RESOURCE_EXHAUSTED as its header arrives; the rest of its bytes are dropped and the
    connection serves the next call."""
    monkeypatch.setattr(listener_module, "MAX_MESSAGE_BYTES", 100_000)
    listener, _, _ = served
    connection, wire = _connected(listener)
    opening = listener_module._PREFACE + _raw_frame(4, 0, 0, b"")
    call, start = _call_bytes(1, "big", bytes(300_000))
    connection.data_received(opening + call[: start + 20])
    for left in range(start + 20, len(call), 50_000):
        connection.data_received(call[left : left + 50_000])
    second, _ = _call_bytes(3, "after", b"small")
    connection.data_received(second)
    ended, _ = await _answered(connection, wire, (1, 3))
    assert ended[1][0] == b"8"  # RESOURCE_EXHAUSTED
    assert ended[3][0] == b"0"


@pytest.mark.parametrize("ending", ["connection closed", "stream reset"])
async def test_a_call_cancelled_as_its_client_went_away_is_freed_without_a_garbage_collection(
    served: Any, ending: str
) -> None:
    """The cancelled call's CancelledError holds its frames, and they the stream, its
    connection and the request: none of it may wait for the cyclic collector, which a
    server under load runs seldom."""
    listener, servicer, port = served
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        client = await RawClient.open(port)
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, client.request_headers())
        client.conn.send_data(
            stream_id, _message(pb.ModelInferRequest(model_name="wait")), end_stream=True
        )
        client.flush()
        await asyncio.wait_for(servicer.started.wait(), TIMEOUT)
        (connection,) = listener.connections
        (stream,) = connection.streams.values()
        # The call's task: it holds the CancelledError, and through it the rest.
        refs = [weakref.ref(connection), weakref.ref(stream.task)]
        del connection, stream
        if ending == "stream reset":
            client.conn.reset_stream(stream_id)
            client.flush()
            await asyncio.wait_for(servicer.cancelled.wait(), TIMEOUT)
            refs.pop(0)  # the connection itself stays open
        else:
            client.close()
            await asyncio.wait_for(servicer.cancelled.wait(), TIMEOUT)
        for _ in range(500):
            if all(ref() is None for ref in refs):
                break
            await asyncio.sleep(0)
        assert [ref() for ref in refs] == [None] * len(refs)
        if ending == "stream reset":
            client.close()
    finally:
        if was_enabled:
            gc.enable()
    await _still_serving(port)
