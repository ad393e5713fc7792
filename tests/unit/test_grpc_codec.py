"""ModelInferRequest -> InferRequest and InferResponse -> ModelInferResponse, without a server."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from server.errors import Code, ServerError
from server.protocol import grpc_codec
from server.protocol.generated import grpc_service_pb2 as pb
from server.tensors import serialize_bytes
from server.types import InferResponse, OutputTensor

Tensor = pb.ModelInferRequest.InferInputTensor


def _request(
    *inputs: Tensor, raw: list[bytes] | None = None, **kwargs: object
) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="m", inputs=list(inputs), raw_input_contents=raw or [], **kwargs
    )


def _error(message: pb.ModelInferRequest) -> ServerError:
    with pytest.raises(ServerError) as info:
        grpc_codec.decode_infer_request(message)
    return info.value


def _content_error(message: pb.ModelInferRequest) -> ServerError:
    """The error of the only input's contents, which the codec keeps for validation to
    report in Triton's order, after every input's datatype and shape."""
    (tensor,) = grpc_codec.decode_infer_request(message).inputs
    assert tensor.content_error is not None and tensor.data.size == 0
    return tensor.content_error


def test_raw_contents_become_arrays_of_the_declared_type_and_shape() -> None:
    values = np.arange(6, dtype="<f4").reshape(2, 3)
    request = grpc_codec.decode_infer_request(
        _request(
            Tensor(name="X", datatype="FP32", shape=[2, 3]),
            raw=[values.tobytes()],
            id="r1",
            model_version="2",
        )
    )
    assert (request.model_name, request.model_version, request.id) == ("m", "2", "r1")
    [tensor] = request.inputs
    assert tensor.shape == (2, 3) and tensor.data.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(tensor.data, values)
    assert request.outputs is None


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("INT8", "int_contents", [-3, 4], np.int8),
        ("INT32", "int_contents", [-3, 4], np.int32),
        ("INT64", "int64_contents", [2**40, -1], np.int64),
        ("UINT16", "uint_contents", [3, 65535], np.uint16),
        ("UINT64", "uint64_contents", [2**63, 1], np.uint64),
        ("FP64", "fp64_contents", [0.5, -2.25], np.float64),
        ("BOOL", "bool_contents", [True, False], np.bool_),
    ],
)
def test_typed_contents_per_datatype(
    datatype: str, field: str, values: list[object], dtype: type
) -> None:
    tensor = Tensor(name="X", datatype=datatype, shape=[2])
    getattr(tensor.contents, field).extend(values)
    [decoded] = grpc_codec.decode_infer_request(_request(tensor)).inputs
    assert decoded.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded.data, np.array(values, dtype=dtype))


def test_typed_bytes_contents() -> None:
    tensor = Tensor(name="S", datatype="BYTES", shape=[1, 2])
    tensor.contents.bytes_contents.extend([b"ab", b"\x00\xff"])
    [decoded] = grpc_codec.decode_infer_request(_request(tensor)).inputs
    assert decoded.data.shape == (1, 2) and decoded.data.tolist() == [[b"ab", b"\x00\xff"]]


def test_raw_bytes_use_the_length_prefixed_layout() -> None:
    raw = serialize_bytes(np.array([b"hello", b""], dtype=object))
    [decoded] = grpc_codec.decode_infer_request(
        _request(Tensor(name="S", datatype="BYTES", shape=[2]), raw=[raw])
    ).inputs
    assert decoded.data.tolist() == [b"hello", b""]


def test_both_contents_kinds_in_one_request_is_invalid() -> None:
    typed = Tensor(name="A", datatype="INT32", shape=[1])
    typed.contents.int_contents.append(1)
    error = _error(_request(typed, Tensor(name="B", datatype="INT32", shape=[1]), raw=[b"\0" * 4]))
    assert error.code == Code.INVALID_ARG
    assert (
        error.message
        == "contents field must not be specified when using raw_input_contents for 'A' for model 'm'"
    )


def test_missing_raw_entry_names_the_input() -> None:
    error = _error(
        _request(
            Tensor(name="A", datatype="INT32", shape=[1]),
            Tensor(name="B", datatype="INT32", shape=[1]),
            raw=[b"\0" * 4],
        )
    )
    assert error.message == "unable to find data for input tensor 'B' for model 'm' in request."


def test_raw_size_mismatch_is_invalid() -> None:
    error = _content_error(_request(Tensor(name="A", datatype="INT32", shape=[2]), raw=[b"\0" * 7]))
    assert error.code == Code.INVALID_ARG and "'A'" in error.message and "8" in error.message


def test_bytes_prefix_that_overruns_is_invalid() -> None:
    error = _content_error(
        _request(
            Tensor(name="S", datatype="BYTES", shape=[1]), raw=[struct.pack("<I", 100) + b"abc"]
        )
    )
    assert error.code == Code.INVALID_ARG and "'S'" in error.message


def test_typed_field_of_the_wrong_type_names_both_types() -> None:
    tensor = Tensor(name="X", datatype="FP16", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    error = _error(_request(tensor))
    assert error.message == (
        "unexpected explicit tensor data for input tensor 'X' for model 'm' of type 'FP32', expected datatype 'FP16'"
    )


def test_typed_element_count_must_match_the_shape() -> None:
    tensor = Tensor(name="X", datatype="INT32", shape=[3])
    tensor.contents.int_contents.extend([1, 2])
    assert _content_error(_request(tensor)).message == (
        "[request id: <id_unknown>] input byte size mismatch for input 'X' for model 'm'. "
        "Expected 12, got 8"
    )
    strings = Tensor(name="S", datatype="BYTES", shape=[2])
    strings.contents.bytes_contents.append(b"x")
    assert _content_error(_request(strings)).message == (
        "[request id: <id_unknown>] expected 2 string elements for inference input 'S' for "
        "model 'm', got 1"
    )


@pytest.mark.parametrize(
    ("key", "kind", "value", "words"),
    [
        (
            "timeout",
            "uint64_param",
            7,
            "invalid value type for 'timeout' parameter, expected int64_param.",
        ),
        (
            "sequence_id",
            "uint64_param",
            7,
            "invalid value type for 'sequence_id' parameter, expected int64_param or string_param.",
        ),
        (
            "custom",
            "uint64_param",
            7,
            "invalid value type for 'custom' parameter, expected int64_param, bool_param, or string_param.",
        ),
        ("priority", "int64_param", -1, "invalid value for 'priority', expected value >= 0."),
        (
            grpc_codec.EMPTY_FINAL_RESPONSE,
            "int64_param",
            1,
            f"invalid value type for '{grpc_codec.EMPTY_FINAL_RESPONSE}' parameter, expected bool_param.",
        ),
    ],
)
def test_request_parameters_take_the_kinds_triton_takes(
    key: str, kind: str, value: object, words: str
) -> None:
    message = _request(Tensor(name="X", datatype="INT32", shape=[1]), raw=[b"\0" * 4])
    setattr(message.parameters[key], kind, value)
    error = _error(message)
    assert (error.code, error.message) == (Code.INVALID_ARG, words)


def test_a_repeated_input_is_refused_before_its_data_is_looked_for() -> None:
    message = _request(
        Tensor(name="X", datatype="INT32", shape=[1]),
        Tensor(name="X", datatype="INT32", shape=[1]),
        raw=[b"\0" * 4],
    )
    assert (
        _error(message).message == "[request id: <id_unknown>] input 'X' already exists in request"
    )


def test_request_parameters_priority_timeout_and_reserved_keys() -> None:
    message = _request(Tensor(name="X", datatype="INT32", shape=[1]), raw=[b"\0" * 4])
    message.parameters["priority"].uint64_param = 2
    message.parameters["timeout"].int64_param = 1500
    message.parameters["custom"].string_param = "v"
    message.parameters[grpc_codec.EMPTY_FINAL_RESPONSE].bool_param = True
    request = grpc_codec.decode_infer_request(message)
    assert (request.priority, request.timeout_us) == (2, 1500)
    assert (
        request.parameters["custom"] == "v"
        and request.parameters[grpc_codec.EMPTY_FINAL_RESPONSE] is True
    )

    message.parameters["triton_other"].bool_param = True
    assert "reserved for Triton usage" in _error(message).message
    del message.parameters["triton_other"]
    message.parameters["priority"].string_param = "high"
    assert (
        _error(message).message
        == "invalid value type for 'priority' parameter, expected int64_param or uint64_param."
    )


def test_shared_memory_inputs_are_left_to_the_core_but_checked_for_shape_of_parameters() -> None:
    tensor = Tensor(name="X", datatype="INT32", shape=[4])
    tensor.parameters["shared_memory_region"].string_param = "r"
    tensor.parameters["shared_memory_byte_size"].int64_param = 16
    [decoded] = grpc_codec.decode_infer_request(_request(tensor)).inputs
    assert decoded.parameters == {"shared_memory_region": "r", "shared_memory_byte_size": 16}
    assert decoded.data.size == 0

    del tensor.parameters["shared_memory_byte_size"]
    assert "'shared_memory_byte_size' must be specified" in _error(_request(tensor)).message
    tensor.parameters["shared_memory_byte_size"].int64_param = 16
    tensor.contents.int_contents.extend([1, 2, 3, 4])
    assert (
        "unexpected 'content' provided when using shared memory" in _error(_request(tensor)).message
    )


def test_requested_outputs_keep_their_parameters() -> None:
    message = _request(Tensor(name="X", datatype="INT32", shape=[1]), raw=[b"\0" * 4])
    output = message.outputs.add(name="Y")
    output.parameters["classification"].int64_param = 3
    request = grpc_codec.decode_infer_request(message)
    assert request.outputs is not None
    assert [(o.name, o.classification) for o in request.outputs] == [("Y", 3)]


def test_response_always_fills_raw_output_contents_in_output_order() -> None:
    response = InferResponse(
        "m",
        "1",
        [
            OutputTensor("A", "INT32", (2,), np.array([1, 2], dtype=np.int32)),
            OutputTensor("E", "FP32", (0,), np.empty(0, dtype=np.float32)),
            OutputTensor("S", "BYTES", (1,), np.array([b"xyz"], dtype=object)),
            OutputTensor(
                "H", "INT32", (2,), np.array([5, 6], dtype=np.int32), {"shared_memory_region": "r"}
            ),
        ],
        id="q",
        parameters={"flag": True, "n": 3, "x": 0.5, "s": "t"},
    )
    message = grpc_codec.encode_infer_response(response, {grpc_codec.FINAL_RESPONSE: True})
    assert (message.model_name, message.model_version, message.id) == ("m", "1", "q")
    assert [o.name for o in message.outputs] == ["A", "E", "S", "H"]
    assert list(message.outputs[0].shape) == [2] and message.outputs[2].datatype == "BYTES"
    assert list(message.raw_output_contents) == [
        np.array([1, 2], dtype="<i4").tobytes(),
        b"",
        struct.pack("<I", 3) + b"xyz",
        b"",
    ]
    params = grpc_codec.parameters_to_dict(message.parameters)
    assert params == {"flag": True, "n": 3, "x": 0.5, "s": "t", grpc_codec.FINAL_RESPONSE: True}
    assert not message.outputs[0].HasField("contents")


def test_stream_error_keeps_only_the_id() -> None:
    item = grpc_codec.encode_stream_error("r9", "boom")
    assert item.error_message == "boom"
    assert item.infer_response == pb.ModelInferResponse(id="r9")


def _large_response() -> InferResponse:
    big = np.arange(70_000, dtype="<f4").reshape(1, 70_000)
    return InferResponse(
        "m",
        "3",
        [
            OutputTensor("BIG", "FP32", (1, 70_000), big),
            OutputTensor("EMPTY", "FP32", (1, 0), np.zeros((1, 0), "<f4")),
            OutputTensor("SMALL", "INT32", (1, 3), np.array([[1, 2, 3]], "<i4")),
            OutputTensor("WORDS", "BYTES", (2,), np.array([b"a", b"bc"], dtype=object)),
            OutputTensor(
                "SHM",
                "FP32",
                (1, 4),
                np.zeros((1, 4), "<f4"),
                {"shared_memory_region": "r", "shared_memory_byte_size": 16},
            ),
        ],
        id="req-9",
        parameters={"sequence_id": 7},
    )


def test_large_raw_outputs_go_out_in_pieces_that_parse_as_the_whole_message() -> None:
    response = _large_response()
    whole = grpc_codec.encode_infer_response(response)
    pieces = grpc_codec.encode_unary_response(response)
    assert isinstance(pieces, grpc_codec.RawTailMessage)
    joined = b"".join(pieces.serialized_pieces())
    assert joined == pieces.SerializeToString()
    assert pb.ModelInferResponse.FromString(joined) == whole
    # raw_output_contents is the message's last field: the bytes are protobuf's own.
    assert joined == whole.SerializeToString()
    # The large tensor is the output array's own buffer, not a copy of it.
    views = [p for p in pieces.serialized_pieces() if isinstance(p, memoryview)]
    big = response.outputs[0].data
    assert any(np.shares_memory(np.frombuffer(v, np.uint8), big) for v in views)


def test_small_raw_outputs_stay_one_message() -> None:
    response = InferResponse(
        "m", "1", [OutputTensor("Y", "FP32", (1, 16), np.ones((1, 16), "<f4"))]
    )
    message = grpc_codec.encode_unary_response(response)
    assert isinstance(message, pb.ModelInferResponse)
    assert message == grpc_codec.encode_infer_response(response)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_the_length_of_each_raw_piece_is_protobufs_varint(size: int) -> None:
    raw = bytes(size)
    message = grpc_codec.RawTailMessage(b"", [raw])
    expected = pb.ModelInferResponse(raw_output_contents=[raw]).SerializeToString()
    assert message.SerializeToString() == expected


# --- large requests: raw inputs read where they arrived ------------------------------------
def _large_request(count: int = 3) -> pb.ModelInferRequest:
    rng = np.random.default_rng(5)
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="r-1")
    request.parameters["priority"].int64_param = 3
    request.parameters["note"].string_param = "x"
    for index in range(count):
        tensor = request.inputs.add(name=f"IN{index}", datatype="FP32", shape=[1, 8192])
        tensor.parameters["binary"].bool_param = True
        request.raw_input_contents.append(rng.random(8192, dtype=np.float32).tobytes())
    request.outputs.add(name="OUT").parameters["classification"].int64_param = 2
    return request


def _same_decoding(data: bytes) -> None:
    """``parse_infer_request`` fails where protobuf fails, and otherwise decodes alike."""
    try:
        reference = pb.ModelInferRequest.FromString(data)
    except Exception as exc:  # noqa: BLE001 - which exception protobuf raises is the point
        with pytest.raises(type(exc)):
            grpc_codec.parse_infer_request(data)
        return
    parsed = grpc_codec.parse_infer_request(data)
    assert list(map(bytes, parsed.raw_input_contents)) == list(reference.raw_input_contents)
    for field in ("model_name", "model_version", "id", "inputs", "outputs", "parameters"):
        assert getattr(parsed, field) == getattr(reference, field), field
    try:
        expected = grpc_codec.decode_infer_request(reference)
    except ServerError as exc:
        with pytest.raises(ServerError) as caught:
            grpc_codec.decode_infer_request(parsed)
        assert (caught.value.code, caught.value.message) == (exc.code, exc.message)
        return
    decoded = grpc_codec.decode_infer_request(parsed)
    assert [(t.name, t.datatype, t.shape, t.parameters) for t in decoded.inputs] == [
        (t.name, t.datatype, t.shape, t.parameters) for t in expected.inputs
    ]
    for mine, theirs in zip(decoded.inputs, expected.inputs, strict=True):
        np.testing.assert_array_equal(mine.data, theirs.data)
    assert (decoded.id, decoded.priority, decoded.parameters) == (
        expected.id,
        expected.priority,
        expected.parameters,
    )


def test_large_request_raw_inputs_are_views_of_the_received_bytes() -> None:
    data = _large_request().SerializeToString()
    assert len(data) >= grpc_codec.SPLIT_FROM
    parsed = grpc_codec.parse_infer_request(data)
    assert isinstance(parsed, grpc_codec.SplitInferRequest)
    request = grpc_codec.decode_infer_request(parsed)
    whole = np.frombuffer(data, dtype=np.uint8)
    for tensor in request.inputs:
        assert np.shares_memory(tensor.data, whole)
    _same_decoding(data)
    # Received into a bytearray (the listener's large bodies), the inputs are writable.
    received = bytearray(data)
    parsed = grpc_codec.parse_infer_request(memoryview(received))
    for tensor in grpc_codec.decode_infer_request(parsed).inputs:
        assert tensor.data.flags.writeable
        assert np.shares_memory(tensor.data, np.frombuffer(received, dtype=np.uint8))


def test_small_requests_are_parsed_by_protobuf_alone() -> None:
    data = _large_request(count=1).SerializeToString()[: grpc_codec.SPLIT_FROM - 1]
    small = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 64])
    small.inputs.add(name="IN", datatype="FP32", shape=[16])
    assert not isinstance(
        grpc_codec.parse_infer_request(small.SerializeToString()), grpc_codec.SplitInferRequest
    )
    _same_decoding(data)


def test_split_parse_takes_fields_in_any_order_and_keeps_unknown_ones() -> None:
    request = _large_request(count=2)
    raws = list(request.raw_input_contents)
    del request.raw_input_contents[:]
    head = request.SerializeToString()
    raw_field = [b"\x3a" + grpc_codec._varint(len(raw)) + raw for raw in raws]
    unknown = b"\xa0\x06\x07" + b"\xfa\x06\x03abc"  # field 100 varint, field 111 bytes
    # Raw inputs first, between other fields, with an empty one, and unknown fields around.
    for data in (
        raw_field[0] + head + raw_field[1],
        unknown + raw_field[0] + unknown + raw_field[1] + head,
        head[:3] + raw_field[0] + head[3:] + b"\x3a\x00" + raw_field[1],
    ):
        _same_decoding(data)
    parsed = grpc_codec.parse_infer_request(unknown + raw_field[0] + unknown + raw_field[1] + head)
    assert isinstance(parsed, grpc_codec.SplitInferRequest)


@pytest.mark.parametrize(
    "suffix",
    [
        b"\x38\x01",  # field 7 as a varint
        b"\x3d\x00\x00\x00\x00",  # field 7 as 32 bits
        b"\x3b\x3c",  # a group
        b"\x3a\xff\xff\xff\xff\x0f",  # a length beyond the message
        b"\x3a",  # a tag without its length
        b"\x08\xff\xff",  # a truncated varint
        b"\x00\x01",  # field number 0
    ],
)
def test_split_parse_leaves_malformed_fields_to_protobuf(suffix: bytes) -> None:
    _same_decoding(_large_request().SerializeToString() + suffix)


def test_split_parse_agrees_with_protobuf_on_damaged_messages() -> None:
    data = _large_request().SerializeToString()
    rng = np.random.default_rng(11)
    # Damage where the fields' tags and lengths are: the head of the message and the
    # boundaries of each raw input.
    spots = [0, 40, 120, len(data) - 40, len(data) // 3, len(data) // 2]
    for _ in range(300):
        damaged = bytearray(data)
        if rng.random() < 0.3:
            damaged = damaged[: int(rng.integers(grpc_codec.SPLIT_FROM, len(data)))]
        for _ in range(int(rng.integers(1, 4))):
            spot = int(rng.choice(spots)) + int(rng.integers(0, 40))
            if spot < len(damaged):
                damaged[spot] = int(rng.integers(0, 256))
        _same_decoding(bytes(damaged))
