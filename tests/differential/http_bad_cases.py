"""Invalid inference requests and other routes sent to both servers."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from tests.differential.http_wire import (
    BIN_INPUT,
    INT16,
    RAW,
    J,
    binary_request,
    simple_inputs,
    tensor,
)


def invalid_cases() -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """(id, path, body, headers) of requests both servers must refuse alike."""
    cases: list[tuple[str, str, bytes | None, dict[str, str]]] = []

    def add(
        case_id: str, model: str, body: bytes | None, headers: dict[str, str] | None = None
    ) -> None:
        cases.append((case_id, f"/v2/models/{model}/infer", body, headers or {}))

    # Malformed JSON and fields of the wrong type (INTERNAL in Triton).
    body = J({"inputs": simple_inputs()})
    add("malformed-json", "simple", b"{not json")
    add("truncated-json", "simple", body[:-5])
    add("trailing-garbage", "simple", body + b" x")
    add("bad-literal", "simple", b'{"inputs": tru}')
    add("missing-colon", "simple", b'{"inputs" []}')
    add("bad-escape", "simple", b'{"in\\qputs": []}')
    add("json-array-document", "simple", b"[1,2]")
    # Surrogate escapes: a high one must be followed by an escaped low one.
    add("lone-high-surrogate", "id_fp32", b'{"id":"\\ud800","inputs":[]}')
    add("lone-low-surrogate", "id_fp32", b'{"id":"\\udc00","inputs":[]}')
    add("high-surrogate-then-letter", "id_fp32", b'{"id":"\\ud800\\u0041","inputs":[]}')
    add("no-inputs", "simple", J({}))
    add("inputs-not-array", "simple", J({"inputs": {}}))
    add("input-not-object", "id_fp32", J({"inputs": [5]}))
    add(
        "no-name",
        "simple",
        J(
            {
                "inputs": [
                    {k: v for k, v in simple_inputs()[0].items() if k != "name"},
                    simple_inputs()[1],
                ]
            }
        ),
    )
    add("name-not-string", "id_fp32", J({"inputs": [tensor(5, "FP32", [1, 1], [1])]}))  # type: ignore[arg-type]
    add(
        "no-shape",
        "simple",
        J(
            {
                "inputs": [
                    {k: v for k, v in simple_inputs()[0].items() if k != "shape"},
                    simple_inputs()[1],
                ]
            }
        ),
    )
    add("shape-not-array", "simple", J({"inputs": simple_inputs(shape="1,16")}))
    add("negative-dim", "simple", J({"inputs": simple_inputs(shape=[-1, 16])}))
    add("float-dim", "id_fp32", J({"inputs": [tensor("INPUT0", "FP32", [1, 1.0], [1])]}))
    add(
        "no-datatype",
        "simple",
        J(
            {
                "inputs": [
                    {k: v for k, v in simple_inputs()[0].items() if k != "datatype"},
                    simple_inputs()[1],
                ]
            }
        ),
    )
    add("unknown-datatype", "simple", J({"inputs": simple_inputs(datatype="FLOAT")}))
    add("id-not-string", "simple", J({"id": 5, "inputs": simple_inputs()}))
    add("parameters-not-object", "simple", J({"parameters": [1], "inputs": simple_inputs()}))
    add("nested-parameter", "simple", J({"parameters": {"x": {"a": 1}}, "inputs": simple_inputs()}))
    add("null-parameter", "simple", J({"parameters": {"x": None}, "inputs": simple_inputs()}))
    add(
        "reserved-parameter",
        "simple",
        J({"parameters": {"triton_x": 1}, "inputs": simple_inputs()}),
    )
    add(
        "negative-priority",
        "simple",
        J({"parameters": {"priority": -1}, "inputs": simple_inputs()}),
    )
    add("string-timeout", "simple", J({"parameters": {"timeout": "x"}, "inputs": simple_inputs()}))
    add(
        "binary-output-not-bool",
        "id_fp32",
        J(
            {
                "parameters": {"binary_data_output": "yes"},
                "inputs": [tensor("INPUT0", "FP32", [1, 1], [1])],
            }
        ),
    )
    add(
        "binary-data-not-bool",
        "id_fp32",
        J(
            {
                "inputs": [tensor("INPUT0", "FP32", [1, 1], [1])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": 1}}],
            }
        ),
    )
    add("outputs-not-array", "simple", J({"inputs": simple_inputs(), "outputs": {}}))
    add("output-without-name", "simple", J({"inputs": simple_inputs(), "outputs": [{}]}))
    add(
        "classification-negative",
        "simple",
        J(
            {
                "inputs": simple_inputs(),
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": -1}}],
            }
        ),
    )
    add(
        "classification-string",
        "id_fp32",
        J(
            {
                "inputs": [tensor("INPUT0", "FP32", [1, 1], [1])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": "2"}}],
            }
        ),
    )
    add(
        "classification-bool-output",
        "id_bool",
        J(
            {
                "inputs": [tensor("INPUT0", "BOOL", [1, 2], [True, False])],
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 1}}],
            }
        ),
    )
    add("scalar-data", "id_fp32", J({"inputs": [tensor("INPUT0", "FP32", [1, 1], 1.0)]}))
    add("element-count-short", "simple", J({"inputs": simple_inputs(data=list(range(15)))}))
    add("element-count-long", "simple", J({"inputs": simple_inputs(data=list(range(17)))}))
    add(
        "bytes-count-short",
        "id_bytes",
        J({"inputs": [tensor("INPUT0", "BYTES", [1, 3], ["a", "b"])]}),
    )
    add(
        "bytes-count-long",
        "id_bytes",
        J({"inputs": [tensor("INPUT0", "BYTES", [1, 1], ["a", "b"])]}),
    )
    for datatype, bad in (
        ("BOOL", [1, 0]),
        ("INT32", [1.5, 2]),
        ("INT64", [True, 1]),
        ("UINT16", [-1, 1]),
        ("FP32", [None, 1]),
        ("FP64", ["1", 2]),
        ("BYTES", [1, "a"]),
        ("INT8", [2**64 - 1, 1]),
    ):
        add(
            f"wrong-element-{datatype}",
            f"id_{datatype.lower()}",
            J({"inputs": [tensor("INPUT0", datatype, [1, 2], bad)]}),
        )
    add("fp16-as-json", "id_fp16", J({"inputs": [tensor("INPUT0", "FP16", [1, 2], [1, 2])]}))
    add(
        "fp16-output-as-json",
        "id_fp16",
        *binary_request(
            {
                "inputs": [tensor("INPUT0", "FP16", [1, 2], binary_data_size=4)],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
            },
            np.array([1, 2], "<f2").tobytes(),
        ),
    )
    # Content fields.
    add(
        "no-content",
        "simple",
        J(
            {
                "inputs": [
                    {k: v for k, v in simple_inputs()[0].items() if k != "data"},
                    simple_inputs()[1],
                ]
            }
        ),
    )
    add(
        "data-and-binary",
        "simple",
        J({"inputs": simple_inputs(parameters={"binary_data_size": 64})}),
    )
    # Lookup.
    add("unknown-model", "nope", J({"inputs": simple_inputs()}))
    add("unknown-version", "simple/versions/3", J({"inputs": simple_inputs()}))
    add("raw-unknown-model", "nope", b"abc", RAW)
    add("raw-odd-size", "id_fp32", b"abcde", RAW)
    add("raw-odd-size-fixed-dim", "id_2x", b"abcdefghijkl", RAW)
    # Validation in the core.
    add("missing-input", "simple", J({"id": "m", "inputs": simple_inputs()[:1]}))
    add(
        "extra-input",
        "simple",
        J({"inputs": [*simple_inputs(), tensor("INPUT2", "INT32", [1, 16], list(range(16)))]}),
    )
    add("empty-inputs", "id_fp32", J({"inputs": []}))
    add("duplicate-input", "simple", J({"inputs": [simple_inputs()[0], simple_inputs()[0]]}))
    add(
        "unknown-input",
        "simple",
        J({"inputs": [simple_inputs()[0], tensor("INPUTX", "INT32", [1, 16], list(range(16)))]}),
    )
    add(
        "unknown-output", "simple", J({"inputs": simple_inputs(), "outputs": [{"name": "OUTPUTX"}]})
    )
    add("wrong-datatype", "simple", J({"inputs": simple_inputs(datatype="FP32")}))
    add("bytes-for-fp32", "id_fp32", J({"inputs": [tensor("INPUT0", "BYTES", [1, 2], ["a", "b"])]}))
    add(
        "wrong-shape",
        "simple",
        J(
            {
                "inputs": [
                    tensor("INPUT0", "INT32", [2, 8], list(range(16))),
                    tensor("INPUT1", "INT32", [2, 8], list(range(16))),
                ]
            }
        ),
    )
    add(
        "no-batch-dim",
        "simple",
        J(
            {
                "inputs": [
                    tensor("INPUT0", "INT32", [16], list(range(16))),
                    tensor("INPUT1", "INT32", [16], list(range(16))),
                ]
            }
        ),
    )
    add(
        "batch-too-large",
        "simple",
        J(
            {
                "inputs": [
                    tensor("INPUT0", "INT32", [9, 16], [0] * 144),
                    tensor("INPUT1", "INT32", [9, 16], [0] * 144),
                ]
            }
        ),
    )
    add(
        "batch-mismatch",
        "simple",
        J({"inputs": [tensor("INPUT0", "INT32", [2, 16], [0] * 32), simple_inputs()[1]]}),
    )
    add(
        "nobatch-wrong-rank",
        "id_nobatch",
        J({"inputs": [tensor("INPUT0", "FP32", [1, 2, 2], [1, 2, 3, 4])]}),
    )
    add(
        "nobatch-wrong-dim",
        "id_nobatch",
        J({"inputs": [tensor("INPUT0", "FP32", [3, 2], [1, 2, 3, 4, 5, 6])]}),
    )
    add("nobatch-scalar", "id_2var", J({"inputs": [tensor("INPUT0", "FP32", [], [])]}))
    # Binary tensor extension.
    doc = {"inputs": [BIN_INPUT, simple_inputs()[1]]}
    add("header-too-large", "simple", *binary_request(doc, INT16, 70 + 10))
    add(
        "header-negative",
        "simple",
        binary_request(doc, INT16)[0],
        {"Inference-Header-Content-Length": "-1"},
    )
    add("header-cuts-json", "simple", *binary_request(doc, INT16, -5))
    add(
        "header-whole-body", "simple", J(doc), {"Inference-Header-Content-Length": str(len(J(doc)))}
    )
    add("binary-short", "simple", *binary_request(doc, INT16[:60]))
    add("binary-extra", "simple", *binary_request(doc, INT16 + b"xxxx"))
    add(
        "binary-size-mismatch",
        "simple",
        *binary_request(
            {
                "inputs": [
                    tensor("INPUT0", "INT32", [1, 16], binary_data_size=60),
                    simple_inputs()[1],
                ]
            },
            INT16[:60],
        ),
    )
    add(
        "binary-size-overrun",
        "simple",
        *binary_request(
            {
                "inputs": [
                    tensor("INPUT0", "INT32", [1, 16], binary_data_size=128),
                    simple_inputs()[1],
                ]
            },
            INT16,
        ),
    )

    def bytes_doc(n: int, size: int) -> dict[str, Any]:
        return {"inputs": [tensor("INPUT0", "BYTES", [1, n], binary_data_size=size)]}

    add(
        "bytes-prefix-overrun",
        "id_bytes",
        *binary_request(bytes_doc(1, 10), struct.pack("<I", 100) + b"abcdef"),
    )
    add(
        "bytes-prefix-overrun-count",
        "id_bytes",
        *binary_request(bytes_doc(2, 10), struct.pack("<I", 100) + b"abcdef"),
    )
    add(
        "bytes-too-few", "id_bytes", *binary_request(bytes_doc(2, 7), struct.pack("<I", 3) + b"abc")
    )
    add(
        "bytes-too-many",
        "id_bytes",
        *binary_request(bytes_doc(1, 14), (struct.pack("<I", 3) + b"abc") * 2),
    )
    add(
        "bytes-partial-prefix",
        "id_bytes",
        *binary_request(bytes_doc(1, 9), struct.pack("<I", 3) + b"abcXY"),
    )
    add("bytes-short-prefix", "id_bytes", *binary_request(bytes_doc(1, 2), b"ab"))
    # The same checks with a request id, which Triton's core puts in front of most of them.
    with_id = {"id": "b1", **bytes_doc(2, 10)}
    add(
        "bytes-count-with-id",
        "id_bytes",
        *binary_request(with_id, struct.pack("<I", 100) + b"abcdef"),
    )
    add(
        "bytes-overrun-second",
        "id_bytes",
        *binary_request(
            {"id": "b2", **bytes_doc(2, 11)},
            struct.pack("<I", 1) + b"a" + struct.pack("<I", 9) + b"bc",
        ),
    )
    add("bytes-none-for-one", "id_bytes", *binary_request({"id": "b3", **bytes_doc(1, 0)}, b""))
    add(
        "bytes-one-for-none",
        "id_bytes",
        *binary_request(bytes_doc(0, 4), struct.pack("<I", 0)),
    )
    add(
        "bytes-partial-prefix-with-id",
        "id_bytes",
        *binary_request({"id": "b4", **bytes_doc(1, 9)}, struct.pack("<I", 3) + b"abcXY"),
    )
    add(
        "binary-size-long-with-id",
        "simple",
        *binary_request(
            {
                "id": "s1",
                "inputs": [
                    tensor("INPUT0", "INT32", [1, 16], binary_data_size=68),
                    simple_inputs()[1],
                ],
            },
            INT16 + b"xxxx",
        ),
    )
    add(
        "binary-size-fp16",
        "id_fp16",
        *binary_request(
            {"id": "h", "inputs": [tensor("INPUT0", "FP16", [1, 3], binary_data_size=4)]},
            b"\0" * 4,
        ),
    )
    return cases


INVALID_CASES = invalid_cases()

ROUTE_CASES: list[tuple[str, str, str, bytes | None]] = [
    ("server-metadata", "GET", "/v2", None),
    ("live", "GET", "/v2/health/live", None),
    ("ready", "GET", "/v2/health/ready", None),
    ("health-root", "GET", "/v2/health", None),
    ("health-other", "GET", "/v2/health/other", None),
    ("metadata", "GET", "/v2/models/simple", None),
    ("metadata-version", "GET", "/v2/models/simple/versions/1", None),
    ("metadata-all-versions", "GET", "/v2/models/versions", None),
    ("metadata-one-of-versions", "GET", "/v2/models/versions/versions/2", None),
    ("metadata-absent-version", "GET", "/v2/models/simple/versions/2", None),
    ("metadata-text-version", "GET", "/v2/models/simple/versions/x", None),
    ("metadata-negative-version", "GET", "/v2/models/simple/versions/-1", None),
    ("metadata-unknown", "GET", "/v2/models/nope", None),
    ("model-ready", "GET", "/v2/models/simple/ready", None),
    ("model-ready-version", "GET", "/v2/models/simple/versions/1/ready", None),
    ("model-ready-absent-version", "GET", "/v2/models/simple/versions/2/ready", None),
    ("model-ready-unknown", "GET", "/v2/models/nope/ready", None),
    ("config", "GET", "/v2/models/simple/config", None),
    ("config-version", "GET", "/v2/models/versions/versions/3/config", None),
    ("config-labels", "GET", "/v2/models/id_fp32/config", None),
    ("config-bytes", "GET", "/v2/models/id_bytes/config", None),
    ("config-nobatch", "GET", "/v2/models/id_nobatch/config", None),
    ("config-unknown", "GET", "/v2/models/nope/config", None),
    ("config-absent-version", "GET", "/v2/models/simple/versions/7/config", None),
    ("stats-unknown", "GET", "/v2/models/nope/stats", None),
    ("stats-absent-version", "GET", "/v2/models/simple/versions/2/stats", None),
    ("index", "POST", "/v2/repository/index", None),
    ("index-ready", "POST", "/v2/repository/index", b'{"ready": true}'),
    ("index-array-body", "POST", "/v2/repository/index", b"[1]"),
    ("index-ready-not-bool", "POST", "/v2/repository/index", b'{"ready": "yes"}'),
    ("index-malformed", "POST", "/v2/repository/index", b"{bad"),
    ("load-not-explicit", "POST", "/v2/repository/models/simple/load", None),
    ("unload-not-explicit", "POST", "/v2/repository/models/simple/unload", None),
    ("load-named-repository", "POST", "/v2/repository/other/models/simple/load", None),
    ("no-route", "GET", "/v2/nothing", None),
    ("metadata-wrong-method", "POST", "/v2/models/simple", None),
    ("infer-wrong-method", "GET", "/v2/models/simple/infer", None),
    ("server-metadata-wrong-method", "POST", "/v2", None),
    ("index-wrong-method", "GET", "/v2/repository/index", None),
]
