"""Raw HTTP exchanges for differential tests, and what of an answer must agree."""

from __future__ import annotations

import gzip
import http.client
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

# Extensions this server does not claim because it does not implement them (yet).
NOT_CLAIMED = {"sequence"}
BACKEND_FIELDS = ("platform", "backend", "default_model_filename")
ONE_GROUP = "instance_group [ { count: 1 kind: KIND_CPU } ]"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    document: Any = None
    binary: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


def send(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    connection = http.client.HTTPConnection(url, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        heads = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    answer = Answer(response.status, heads, raw)
    data = raw
    encoding = heads.get("content-encoding")
    if encoding == "gzip":
        data = gzip.decompress(raw)
    elif encoding == "deflate":
        data = zlib.decompress(raw)
    length = heads.get("inference-header-content-length")
    head = data[: int(length)] if length is not None else data
    answer.binary = data[int(length) :] if length is not None else b""
    if head:
        answer.document = json.loads(head)
    return answer


def J(document: Any) -> bytes:
    return json.dumps(document).encode()


def tensor(
    name: str, datatype: str, shape: list[int], data: Any = None, **params: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        entry["data"] = data
    if params:
        entry["parameters"] = params
    return entry


def simple_inputs(**overrides: Any) -> list[dict[str, Any]]:
    a = tensor("INPUT0", "INT32", [1, 16], list(range(16)))
    b = tensor("INPUT1", "INT32", [1, 16], [2] * 16)
    a.update(overrides)
    return [a, b]


def binary_request(
    document: dict[str, Any], payload: bytes, header_delta: int = 0
) -> tuple[bytes, dict[str, str]]:
    head = J(document)
    return head + payload, {"Inference-Header-Content-Length": str(len(head) + header_delta)}


INT16 = struct.pack("<16i", *range(16))
BIN_INPUT = tensor("INPUT0", "INT32", [1, 16], binary_data_size=64)
FP32_ROW = struct.pack("<3f", 1.5, -2.0, 3.25)
RAW = {"Inference-Header-Content-Length": "0"}


def comparable(answer: Answer, path: str) -> Any:
    """What must agree: status, the parsed JSON (less backend and version names), the binary
    tail, and for failures the exact message."""
    document = answer.document
    if isinstance(document, dict):
        document = dict(document)
        if path == "/v2":
            document.pop("version", None)
            document["extensions"] = sorted(set(document.get("extensions", [])) - NOT_CLAIMED)
        if "inputs" in document and "versions" in document:
            document.pop("platform", None)
        if "input" in document and "max_batch_size" in document:
            for key in BACKEND_FIELDS:
                document.pop(key, None)
    binary_type = "octet-stream" in answer.headers.get("content-type", "")
    return answer.status, document, answer.binary, binary_type
