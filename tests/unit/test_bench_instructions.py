"""The instruction-count benchmark's parts that run without valgrind: reading callgrind's
total, and the request path it counts, which must keep answering through the server's
codecs and core as they change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench import instructions, models, payloads
from server.protocol.generated import grpc_service_pb2 as pb


def test_reads_the_total_from_callgrinds_summary() -> None:
    output = "==12== Events    : Ir\n==12== Collected : 1462728588\n==12==\n==12== I   refs:"
    assert instructions.collected(output) == 1462728588
    with pytest.raises(RuntimeError, match="no instruction count"):
        instructions.collected("==12== valgrind: failed to start tool")


def test_reads_the_total_from_a_callgrind_dump() -> None:
    dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 681952210\n\nfl=(1) x.c\n"
    assert instructions.dumped(dump) == 681952210
    assert instructions.dumped("events: Ir\ntotals: 52\n") == 52
    with pytest.raises(RuntimeError, match="no total"):
        instructions.dumped("events: Ir\n")


@pytest.mark.parametrize("protocol", payloads.PROTOCOLS)
@pytest.mark.parametrize("concurrency", [1, 4])
async def test_the_counted_path_answers_each_protocol(
    protocol: str, concurrency: int, tmp_path: Path
) -> None:
    spec = models.IDENTITY_PY
    repository = models.write_repository(tmp_path, (spec,), tmp_path / "cache")
    payload = payloads.build(protocol, spec.name, spec.input_size)
    answer = instructions.request_path(protocol, spec.name, payload.body, payload.header_length)
    reply = await instructions.serve_requests(repository, spec.name, answer, 2, concurrency)
    expected = payloads.input_array(spec.input_size)
    if protocol == "grpc":
        message = pb.ModelInferResponse.FromString(reply)
        output = np.frombuffer(message.raw_output_contents[0], dtype="<f4")
    elif protocol == "http-binary":
        header, end = json.JSONDecoder().raw_decode(reply.decode("latin-1"))
        assert header["outputs"][0]["parameters"]["binary_data_size"] == len(reply) - end
        output = np.frombuffer(reply[end:], dtype="<f4")
    else:
        output = np.array(orjson.loads(reply)["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_array_equal(output, expected.reshape(-1))
