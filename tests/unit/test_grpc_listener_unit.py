"""The gRPC listener's pure parts: frame layout, header literals (checked by hpack's own
decoder), the header-block cache test, grpc-timeout and status-message encoding."""

from __future__ import annotations

import struct
import urllib.parse

import hpack
import pytest

from server.grpc import listener


def test_frame_layout() -> None:
    frame = listener._frame(listener.HEADERS, 0x5, 7, b"abc")
    length = int.from_bytes(frame[:3], "big")
    (stream,) = struct.unpack(">I", frame[5:9])
    assert (length, frame[3], frame[4], stream, frame[9:]) == (3, 1, 5, 7, b"abc")
    assert (
        listener._frame_head(listener.DATA, 0, 3, 70000) == b"\x01\x11\x70\x00\x00\x00\x00\x00\x03"
    )


@pytest.mark.parametrize("size", [0, 1, 126, 127, 128, 300, 70000])
def test_literals_decode_to_the_same_field(size: int) -> None:
    value = bytes(range(32, 127)) * (size // 95 + 1)
    value = value[:size]
    block = listener._literal(b"grpc-message", value) + listener._literal(b"x-long-" * 30, b"v")
    decoder = hpack.Decoder(max_header_list_size=1 << 20)
    assert decoder.decode(block, raw=True) == [(b"grpc-message", value), (b"x-long-" * 30, b"v")]
    # Literals without indexing leave the table empty, so the same bytes mean the same later.
    assert len(decoder.header_table.dynamic_entries) == 0


def test_the_ok_head_and_status_blocks() -> None:
    decoder = hpack.Decoder()
    assert decoder.decode(listener._OK_HEAD, raw=True) == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
    ]
    trailers = decoder.decode(listener._status_block(5, "modèle 'x' 100%\n"), raw=True)
    assert trailers[0] == (b"grpc-status", b"5")
    assert trailers[1][0] == b"grpc-message"
    assert urllib.parse.unquote(trailers[1][1].decode()) == "modèle 'x' 100%\n"
    assert trailers[1][1] == b"mod%C3%A8le 'x' 100%25%0A"
    assert decoder.decode(listener._status_block(0, ""), raw=True) == [(b"grpc-status", b"0")]


def test_which_blocks_can_be_remembered() -> None:
    encoder = hpack.Encoder()
    headers = [(b":method", b"POST"), (b":path", b"/a/B"), (b"te", b"trailers")]
    first = encoder.encode(headers)  # adds :path and te to the table
    again = encoder.encode(headers)  # only references now
    assert not listener._only_indexed_or_plain_literals(first)
    assert listener._only_indexed_or_plain_literals(again)
    assert listener._only_indexed_or_plain_literals(listener._OK_HEAD)
    assert listener._only_indexed_or_plain_literals(listener._literal(b"a", b"b" * 200))
    assert not listener._only_indexed_or_plain_literals(b"\x3f\xe1\x1f")  # a table size update
    assert not listener._only_indexed_or_plain_literals(b"\x00\x05ab")  # cut short
    assert not listener._only_indexed_or_plain_literals(b"\xff")  # an unfinished integer


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"250m", 0.25),
        (b"5010m", 5.01),
        (b"7u", 7e-6),
        (b"9n", 9e-9),
        (b"99999999S", 99999999.0),
    ],
)
def test_grpc_timeouts(value: bytes, seconds: float) -> None:
    assert listener.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"10", b"10x", b"-1S", b"1.5S", b"123456789S"])
def test_invalid_grpc_timeouts_are_ignored(value: bytes) -> None:
    assert listener.parse_timeout(value) is None


def test_messages_are_split_across_reads() -> None:
    stream = listener._Stream.__new__(listener._Stream)
    stream.partial = bytearray()
    one = b"\x00\x00\x00\x00\x03abc"
    two = b"\x01\x00\x00\x00\x00"
    assert stream.messages(one[:4]) == []
    assert stream.messages(one[4:] + two[:2]) == [one]
    assert stream.messages(two[2:]) == [two]
    assert stream.partial == bytearray()
