"""Tensor byte layouts, compression negotiation and classification, without sockets."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest

from server.core import classify
from server.errors import Code, ServerError
from server.http import compression
from server.tensors import deserialize_bytes, from_buffer, serialize_bytes, to_bytes, wire_datatype_of


def test_bytes_round_trip_uses_little_endian_length_prefixes() -> None:
    array = np.array([b"a", b"", "\u00e9t\u00e9".encode(), b"\x00\xff"], dtype=object)
    raw = serialize_bytes(array)
    assert raw[:5] == struct.pack("<I", 1) + b"a"
    back = deserialize_bytes(raw, 4, "X")
    assert list(back) == list(array)


def test_bytes_prefix_that_overruns_is_rejected() -> None:
    raw = struct.pack("<I", 100) + b"short"
    with pytest.raises(ServerError) as info:
        deserialize_bytes(raw, 1, "IN")
    assert info.value.code == Code.INVALID_ARG
    assert "'IN'" in info.value.message


def test_bytes_trailing_data_is_rejected() -> None:
    raw = serialize_bytes(np.array([b"ab"], dtype=object)) + b"zz"
    with pytest.raises(ServerError):
        deserialize_bytes(raw, 1, "IN")


def test_from_buffer_checks_byte_size_exactly() -> None:
    data = np.arange(6, dtype="<f4")
    tensor = from_buffer(data.tobytes(), "FP32", (2, 3), "IN")
    assert tensor.shape == (2, 3) and tensor.dtype == np.dtype("<f4")
    with pytest.raises(ServerError) as info:
        from_buffer(data.tobytes()[:-1], "FP32", (2, 3), "IN")
    assert "expected 24 bytes, got 23" in info.value.message


@pytest.mark.parametrize(
    ("dtype", "wire"),
    [(np.bool_, "BOOL"), (np.uint16, "UINT16"), (np.int64, "INT64"), (np.float16, "FP16"), (np.float64, "FP64")],
)
def test_numeric_round_trip(dtype: type, wire: str) -> None:
    array = np.arange(12).reshape(3, 4).astype(dtype)
    assert wire_datatype_of(array) == wire
    raw = bytes(to_bytes(array, wire))
    assert raw == array.astype(array.dtype.newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(from_buffer(raw, wire, (3, 4), "X"), array)


def test_non_contiguous_arrays_serialize_in_row_major_order() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T
    assert bytes(to_bytes(array, "INT32")) == np.ascontiguousarray(array).tobytes()


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
