"""Tensor byte layouts, compression negotiation and classification, without sockets."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest

from server import tensors as tensors_module
from server.core import classify
from server.errors import Code, ServerError
from server.http import compression
from server.tensors import (
    NUMPY_DTYPES,
    deserialize_bytes,
    from_buffer,
    serialize_bytes,
    settled,
    to_bytes,
    wire_datatype_of,
)


def test_bytes_round_trip_uses_little_endian_length_prefixes() -> None:
    array = np.array([b"a", b"", "\u00e9t\u00e9".encode(), b"\x00\xff"], dtype=object)
    raw = serialize_bytes(array)
    assert raw[:5] == struct.pack("<I", 1) + b"a"
    back = deserialize_bytes(raw, (2, 2), "X", "m")
    assert back.shape == (2, 2) and back.ravel().tolist() == array.tolist()


def _message(raw: bytes, shape: tuple[int, ...], request_id: str = "") -> str:
    with pytest.raises(ServerError) as info:
        from_buffer(raw, "BYTES", shape, "IN", "m", request_id)
    assert info.value.code == Code.INVALID_ARG
    return info.value.message


def _prefixed(length: int, data: bytes) -> bytes:
    return struct.pack("<I", length) + data


# Triton 2.51's words and order (tests/differential/test_grpc_vs_triton.py compares them live).
@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (
            _prefixed(100, b"abc"),
            (1, 1),
            "incomplete string data for inference input 'IN', expecting string of length 100 "
            "but only 3 bytes available",
        ),
        (
            _prefixed(1, b"a") + _prefixed(9, b"bc"),
            (2,),
            "incomplete string data for inference input 'IN', expecting string of length 9 "
            "but only 2 bytes available",
        ),
        # A wrong count is reported before an overrunning prefix.
        (
            _prefixed(100, b"abcdef"),
            (1, 2),
            "[request id: r1] expected 2 string elements for inference input 'IN' for model "
            "'m', got 1",
        ),
        (
            _prefixed(3, b"abc") * 2,
            (1,),
            "[request id: r1] unexpected number of string elements 2 for inference input 'IN' "
            "for model 'm', expecting 1",
        ),
        # Triton stops at the first element past the count, so it names that one.
        (
            _prefixed(1, b"a") * 5,
            (2,),
            "[request id: r1] unexpected number of string elements 3 for inference input 'IN' "
            "for model 'm', expecting 2",
        ),
        (
            _prefixed(1, b"a") * 2 + _prefixed(9, b"x"),
            (2,),
            "[request id: r1] unexpected number of string elements 3 for inference input 'IN' "
            "for model 'm', expecting 2",
        ),
        (
            b"",
            (1,),
            "[request id: r1] expected 1 string elements for inference input 'IN' for model "
            "'m', got 0",
        ),
        (
            _prefixed(3, b"abcXY"),
            (1,),
            "[request id: r1] incomplete string length indicator for inference input 'IN' for "
            "model 'm', expecting 4 bytes but only 2 bytes available. Please make sure the "
            "string length indicator is in one buffer.",
        ),
    ],
)
def test_bytes_layout_errors_use_triton_words(
    raw: bytes, shape: tuple[int, ...], message: str
) -> None:
    assert _message(raw, shape, "r1") == message


def test_messages_without_a_request_id_say_id_unknown() -> None:
    assert _message(b"", (1,)).startswith("[request id: <id_unknown>] expected 1 string")


def test_from_buffer_checks_byte_size_exactly() -> None:
    data = np.arange(6, dtype="<f4")
    tensor = from_buffer(data.tobytes(), "FP32", (2, 3), "IN", "m")
    assert tensor.shape == (2, 3) and tensor.dtype == np.dtype("<f4")
    for raw in (data.tobytes()[:-1], data.tobytes() + b"\0"):
        with pytest.raises(ServerError) as info:
            from_buffer(raw, "FP32", (2, 3), "IN", "m", "r2")
        assert info.value.message == (
            f"[request id: r2] input byte size mismatch for input 'IN' for model 'm'. "
            f"Expected 24, got {len(raw)}"
        )


@pytest.mark.parametrize(
    ("dtype", "wire"),
    [
        (np.bool_, "BOOL"),
        (np.uint16, "UINT16"),
        (np.int64, "INT64"),
        (np.float16, "FP16"),
        (np.float64, "FP64"),
    ],
)
def test_numeric_round_trip(dtype: type, wire: str) -> None:
    array = np.arange(12).reshape(3, 4).astype(dtype)
    assert wire_datatype_of(array) == wire
    raw = bytes(to_bytes(array, wire))
    assert raw == array.astype(array.dtype.newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(from_buffer(raw, wire, (3, 4), "X", "m"), array)


def test_non_contiguous_arrays_serialize_in_row_major_order() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T
    assert bytes(to_bytes(array, "INT32")) == np.ascontiguousarray(array).tobytes()


def test_bfloat16_and_empty_arrays_serialize() -> None:
    # ml_dtypes' bfloat16 has no buffer-protocol format, so it takes the byte view instead.
    array = np.arange(6, dtype=np.float32).reshape(2, 3).astype(NUMPY_DTYPES["BF16"])
    assert bytes(to_bytes(array, "BF16")) == array.tobytes()
    assert to_bytes(np.empty((0, 3), dtype=np.float32), "FP32") == b""


def test_decompress_gzip_and_deflate_and_limit() -> None:
    body = b'{"inputs": []}' * 10
    assert compression.decompress(gzip.compress(body), "gzip", 1 << 20) == body
    assert compression.decompress(zlib.compress(body), "deflate", 1 << 20) == body
    with pytest.raises(ServerError) as info:
        compression.decompress(gzip.compress(body), "gzip", 10)
    assert "exceeds the maximum allowed value of 10 bytes" in info.value.message
    with pytest.raises(ServerError) as unsupported:
        compression.decompress(body, "br", 1 << 20)
    assert unsupported.value.code == Code.UNSUPPORTED


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, "identity"),
        ("gzip", "gzip"),
        ("deflate;q=0.5, gzip;q=0.9", "gzip"),
        ("gzip;q=0.2, deflate", "deflate"),
        ("br", "identity"),
        ("gzip;q=0", "identity"),
    ],
)
def test_accept_encoding_weights(header: str | None, chosen: str) -> None:
    assert compression.choose_encoding(header) == chosen


def test_classification_top_k_with_labels_batched() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    result = classify(scores, 2, ("zero", "one", "two"), batched=True)
    assert result.shape == (2, 2)
    assert result[0, 0] == b"0.700000:1:one"
    assert result[0, 1] == b"0.200000:2:two"
    assert result[1, 0] == b"0.500000:0:zero"


def test_classification_unbatched_integer_without_labels() -> None:
    result = classify(np.array([3, 9, 1], dtype=np.int32), 5, (), batched=False)
    assert list(result) == [b"9:1", b"3:0", b"1:2"]


def test_settled_keeps_memory_of_immutable_bytes_and_copies_the_rest() -> None:
    raw = np.arange(8, dtype=np.float32).tobytes()
    # Inputs as the codecs decode them: over bytes, directly or through a memoryview, then
    # reshaped or sliced by the model. Nothing can change such memory: no copy.
    for array in (
        np.frombuffer(raw, np.float32),
        np.frombuffer(memoryview(raw)[4:], np.float32).reshape(7, 1),
        np.frombuffer(raw, np.float32)[::2],
    ):
        assert settled(array) is array
    kept = np.zeros(8, dtype=np.float32)
    writable = bytearray(raw)
    # Memory the model can write again: its own arrays (and views of them), a bytearray,
    # a memoryview over one.
    for array in (
        kept,
        kept[2:6],
        kept.reshape(2, 4).T,
        np.frombuffer(writable, np.float32),
        np.frombuffer(memoryview(writable), np.float32),
    ):
        copy = settled(array)
        assert not np.shares_memory(copy, array)
        np.testing.assert_array_equal(copy, array)
        assert copy.shape == array.shape and copy.dtype == array.dtype


def test_text_dtypes_stay_out_of_the_datatype_cache() -> None:
    # Every length of text is a dtype of its own; caching them would crowd out the rest.
    for length in range(1, 100):
        assert wire_datatype_of(np.array(["x" * length])) == "BYTES"
        assert wire_datatype_of(np.array([b"x" * length])) == "BYTES"
    assert wire_datatype_of(np.array([1.5], dtype=">f4")) == "FP32"
    cached = tensors_module._WIRE_OF_DTYPE
    assert np.dtype(">f4") in cached
    assert not [dtype for dtype in cached if dtype.kind in "SU"]
