"""Valid inference requests sent to both servers: JSON, binary, raw, compressed."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np

from tests import models
from tests.differential.http_wire import (
    BIN_INPUT,
    FP32_ROW,
    INT16,
    RAW,
    J,
    binary_request,
    simple_inputs,
    tensor,
)


def valid_cases() -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """(id, path, body, headers) of requests both servers answer."""
    cases: list[tuple[str, str, bytes | None, dict[str, str]]] = []

    def add(
        case_id: str, model: str, body: bytes | None, headers: dict[str, str] | None = None
    ) -> None:
        cases.append((case_id, f"/v2/models/{model}/infer", body, headers or {}))

    # Valid requests.
    add("json", "simple", J({"id": "abc", "inputs": simple_inputs()}))
    # An id with a lone low surrogate escape is taken and echoed as its three bytes; NaN,
    # Inf and a string "Inf" take the slower parse.
    add("lone-low-surrogate-id", "simple", J({"id": "a\udc00b", "inputs": simple_inputs()}))
    add(
        "inf-values-and-string",
        "id_fp32",
        b'{"id":"Inf","inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,3],'
        b'"data":[Inf,-Inf,NaN]}]}',
    )
    add(
        "json-one-output",
        "simple",
        J({"inputs": simple_inputs(), "outputs": [{"name": "OUTPUT1"}]}),
    )
    add(
        "duplicate-output",
        "simple",
        J({"inputs": simple_inputs(), "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]}),
    )
    add("empty-outputs", "simple", J({"inputs": simple_inputs(), "outputs": []}))
    add(
        "parameters",
        "simple",
        J(
            {
                "id": "p",
                "parameters": {"s": "v", "n": 3, "f": 1.5, "b": True},
                "inputs": simple_inputs(),
            }
        ),
    )
    add(
        "priority-timeout",
        "simple",
        J({"parameters": {"priority": 1, "timeout": 100000}, "inputs": simple_inputs()}),
    )
    add(
        "nested-data",
        "simple",
        J({"inputs": simple_inputs(data=[list(range(8)), list(range(8, 16))])}),
    )
    add(
        "deep-nesting",
        "id_fp32",
        J({"inputs": [tensor("INPUT0", "FP32", [1, 1], json.loads("[" * 120 + "1" + "]" * 120))]}),
    )
    add(
        "output-parameter-not-echoed",
        "id_fp32",
        J(
            {
                "inputs": [tensor("INPUT0", "FP32", [1, 1], [1])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"foo": "bar"}}],
            }
        ),
    )
    add(
        "nan-and-infinity",
        "id_fp32",
        b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,3],"data":[NaN,Infinity,-Infinity]}]}',
    )
    add("fp32-overflow", "id_fp32", J({"inputs": [tensor("INPUT0", "FP32", [1, 2], [1e40, 0.1])]}))
    add("integer-wraps", "id_int8", J({"inputs": [tensor("INPUT0", "INT8", [1, 2], [300, -129])]}))
    add(
        "unsigned-wraps",
        "id_uint8",
        J({"inputs": [tensor("INPUT0", "UINT8", [1, 2], [2**64 - 1, 256])]}),
    )
    goods = {
        "BOOL": [True, False],
        "BYTES": ["a", "\u00e9t\u00e9"],
        "FP32": [1.5, -2],
        "FP64": [0.1, 2],
    }
    for datatype in models.PYTHON_DATATYPES:
        if datatype == "FP16":
            continue
        data = goods.get(datatype, [1, 2])
        add(
            f"json-{datatype}",
            f"id_{datatype.lower()}",
            J({"inputs": [tensor("INPUT0", datatype, [1, 2], data)]}),
        )
        add(
            f"json-{datatype}-binary-out",
            f"id_{datatype.lower()}",
            J(
                {
                    "parameters": {"binary_data_output": True},
                    "inputs": [tensor("INPUT0", datatype, [1, 2], data)],
                }
            ),
        )
    add(
        "binary-in-mixed-out",
        "simple",
        *binary_request(
            {
                "inputs": [BIN_INPUT, simple_inputs()[1]],
                "outputs": [
                    {"name": "OUTPUT0", "parameters": {"binary_data": True}},
                    {"name": "OUTPUT1"},
                ],
            },
            INT16,
        ),
    )
    add(
        "binary-out-override",
        "id_fp32",
        J(
            {
                "parameters": {"binary_data_output": True},
                "inputs": [tensor("INPUT0", "FP32", [1, 1], [1])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
            }
        ),
    )
    add(
        "fp16-binary",
        "id_fp16",
        *binary_request(
            {
                "inputs": [tensor("INPUT0", "FP16", [1, 2], binary_data_size=4)],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
            },
            np.array([1, 2], "<f2").tobytes(),
        ),
    )
    add(
        "bytes-binary",
        "id_bytes",
        *binary_request(
            {"inputs": [tensor("INPUT0", "BYTES", [1, 2], binary_data_size=11)]},
            struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0),
        ),
    )
    add(
        "classification",
        "id_fp32",
        J(
            {
                "inputs": [tensor("INPUT0", "FP32", [2, 4], [0.1, 0.7, 0.2, 0.05, 3, 2, 1, 0])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 3}}],
            }
        ),
    )
    add(
        "classification-more-than-classes",
        "id_fp32",
        J(
            {
                "inputs": [tensor("INPUT0", "FP32", [1, 4], [0.1, 0.7, 0.2, 0.05])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 10}}],
            }
        ),
    )
    add(
        "classification-zero",
        "id_fp32",
        J(
            {
                "inputs": [tensor("INPUT0", "FP32", [1, 4], [0.1, 0.7, 0.2, 0.05])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 0}}],
            }
        ),
    )
    add(
        "classification-int",
        "simple",
        J(
            {
                "inputs": simple_inputs(),
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}],
            }
        ),
    )
    add(
        "classification-binary",
        "simple",
        J(
            {
                "inputs": simple_inputs(),
                "outputs": [
                    {"name": "OUTPUT0", "parameters": {"classification": 2, "binary_data": True}}
                ],
            }
        ),
    )
    add(
        "classification-nobatch",
        "id_nobatch",
        J(
            {
                "inputs": [tensor("INPUT0", "FP32", [2, 2], [1, 4, 3, 2])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}],
            }
        ),
    )
    add("nobatch", "id_nobatch", J({"inputs": [tensor("INPUT0", "FP32", [2, 2], [1, 2, 3, 4])]}))
    add("versioned", "versions/versions/2", J({"inputs": [tensor("INPUT0", "FP32", [2], [1, 2])]}))
    # Raw binary requests.
    add("raw", "id_fp32", FP32_ROW, RAW)
    add("raw-fixed-dim", "id_2x", FP32_ROW[:8], RAW)
    add("raw-nobatch", "id_nobatch", FP32_ROW[:8] * 2, RAW)
    add("raw-bytes", "id_bytes1", b"hello", RAW)
    add("raw-empty-body", "id_fp32", b"", RAW)
    add("no-header-empty-body", "id_fp32", b"")
    add("raw-unparsable-header", "id_fp32", FP32_ROW, {"Inference-Header-Content-Length": "abc"})
    add("raw-gzip-response", "id_fp32", FP32_ROW, {**RAW, "Accept-Encoding": "gzip"})
    add("raw-two-inputs", "simple", INT16 * 2, RAW)
    add("raw-bytes-variable", "id_bytes", b"hello", RAW)
    add("raw-two-variable-dims", "id_2var", FP32_ROW[:8], RAW)
    add("raw-size-mismatch", "id_2x", FP32_ROW, RAW)
    add("raw-partial-element", "id_fp32", b"\x00\x00\x80", RAW)
    # Compression.
    body = J({"inputs": simple_inputs()})
    add("gzip-request", "simple", gzip.compress(body), {"Content-Encoding": "gzip"})
    add("deflate-request", "simple", zlib.compress(body), {"Content-Encoding": "deflate"})
    add("identity-request", "simple", body, {"Content-Encoding": "identity"})
    add("gzip-response", "simple", body, {"Accept-Encoding": "gzip"})
    add("weighted-response", "simple", body, {"Accept-Encoding": "gzip;q=0.5, deflate;q=0.9"})
    add("unknown-accept", "simple", body, {"Accept-Encoding": "br"})
    add("unknown-encoding", "simple", body, {"Content-Encoding": "br"})
    add("encoding-is-case-sensitive", "simple", gzip.compress(body), {"Content-Encoding": "GZIP"})
    add("corrupt-gzip", "id_fp32", b"garbage", {"Content-Encoding": "gzip"})
    return cases


VALID_CASES = valid_cases()
