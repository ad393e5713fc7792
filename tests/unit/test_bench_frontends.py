"""The messages between bench/frontends.py's front ends and its core process."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bench import frontends
from server.errors import Code, ServerError
from server.types import InferInput, InferRequest, InferResponse, OutputTensor, RequestedOutput


def _body(frame: bytes) -> bytes:
    (size,) = frontends._HEAD.unpack_from(frame)
    assert len(frame) == 4 + size
    return frame[4:]


def test_a_request_arrives_as_it_was_decoded() -> None:
    words = np.array([b"a", b"\xff\x00"], dtype=object).reshape(1, 2)
    request = InferRequest(
        model_name="m",
        model_version="2",
        inputs=[
            InferInput("X", "FP32", (2, 3), np.arange(6, dtype=np.float32).reshape(2, 3)),
            InferInput("S", "BYTES", (1, 2), words, {"binary_data_size": 9}),
        ],
        outputs=[RequestedOutput("Y", {"binary_data": True})],
        id="r1",
        parameters={"priority": 2, "tag": "x"},
    )
    key, back = frontends.decode_request(_body(frontends.encode_request(7, request)))
    assert key == 7
    assert (back.model_name, back.model_version, back.id) == ("m", "2", "r1")
    assert back.parameters == {"priority": 2, "tag": "x"}
    assert [(o.name, o.parameters) for o in back.outputs or []] == [("Y", {"binary_data": True})]
    x, s = back.inputs
    assert (x.name, x.datatype, x.shape, x.data.dtype) == ("X", "FP32", (2, 3), np.float32)
    np.testing.assert_array_equal(x.data, request.inputs[0].data)
    assert (s.datatype, s.shape, s.parameters) == ("BYTES", (1, 2), {"binary_data_size": 9})
    assert s.data.tolist() == [[b"a", b"\xff\x00"]]


def test_all_outputs_when_none_are_named() -> None:
    request = InferRequest(model_name="m", inputs=[], outputs=None)
    _, back = frontends.decode_request(_body(frontends.encode_request(0, request)))
    assert back.outputs is None


def test_a_response_and_an_error_come_back() -> None:
    response = InferResponse(
        "m", "1", [OutputTensor("Y", "INT64", (1, 2), np.array([[3, -4]]))], "r1", {"p": 1}
    )
    key, back = frontends.decode_response(_body(frontends.encode_response(3, response)))
    assert key == 3 and isinstance(back, InferResponse)
    assert (back.model_name, back.model_version, back.id, back.parameters) == (
        "m",
        "1",
        "r1",
        {"p": 1},
    )
    np.testing.assert_array_equal(back.outputs[0].data, [[3, -4]])
    error = ServerError(Code.NOT_FOUND, "Request for unknown model: 'x' is not found")
    key, back = frontends.decode_response(_body(frontends.encode_response(4, error)))
    assert key == 4 and isinstance(back, ServerError)
    assert (back.code, back.message) == (error.code, error.message)


def test_messages_split_and_joined_by_the_stream_are_read_whole() -> None:
    got: list[bytes] = []

    class Recorder(frontends._Framed):
        def on_message(self, body: bytes) -> None:
            got.append(body)

    frames = [frontends._HEAD.pack(len(b)) + b for b in (b"one", b"", b"three" * 100)]
    stream = b"".join(frames)
    recorder = Recorder()
    for cut in (1, 5, 9, len(stream)):
        recorder.data_received(stream[:cut])
        stream = stream[cut:]
    recorder.data_received(stream)
    assert got == [b"one", b"", b"three" * 100]


def test_the_remote_core_raises_the_core_s_error() -> None:
    class Transport:
        def __init__(self, side: frontends._FrontSide) -> None:
            self.side = side

        def write(self, frame: bytes) -> None:
            key, _ = frontends.decode_request(_body(frame))
            error = ServerError(Code.INVALID_ARG, "bad")
            self.side.on_message(_body(frontends.encode_response(key, error)))

    async def main() -> None:
        side = frontends._FrontSide()
        side.transport = Transport(side)  # type: ignore[assignment]
        with pytest.raises(ServerError) as raised:
            await frontends.RemoteCore(side).infer(InferRequest(model_name="m"))
        assert raised.value.code is Code.INVALID_ARG
        assert side.waiting == {}

    asyncio.run(main())


def test_requests_in_flight_fail_when_the_core_goes_away() -> None:
    class Transport:
        def write(self, frame: bytes) -> None:
            pass

    async def main() -> None:
        side = frontends._FrontSide()
        side.transport = Transport()  # type: ignore[assignment]
        call = asyncio.ensure_future(frontends.RemoteCore(side).infer(InferRequest("m")))
        await asyncio.sleep(0)
        side.connection_lost(None)
        with pytest.raises(ServerError) as raised:
            await call
        assert raised.value.code is Code.UNAVAILABLE

    asyncio.run(main())
