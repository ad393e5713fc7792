"""The fixed request bodies each protocol sends: KServe v2 JSON, JSON with Triton's binary
tensor extension, and a serialized gRPC ModelInferRequest. Built once per scenario; the load
generators replay the bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

PROTOCOLS = ("http-json", "http-binary", "grpc")


@dataclass(frozen=True)
class Payload:
    body: bytes
    content_type: str
    header_length: int | None = None  # Inference-Header-Content-Length for binary bodies


def input_array(size: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, size)).astype(np.float32)


def json_body(array: np.ndarray) -> Payload:
    document = {
        "inputs": [
            {
                "name": "INPUT0",
                "datatype": "FP32",
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
        ]
    }
    return Payload(orjson.dumps(document), "application/json")


def binary_body(array: np.ndarray) -> Payload:
    raw = array.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    )
    return Payload(header + raw, "application/octet-stream", len(header))


def grpc_body(model: str, array: np.ndarray) -> Payload:
    from server.protocol.generated import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name = "INPUT0"
    tensor.datatype = "FP32"
    tensor.shape.extend(array.shape)
    request.raw_input_contents.append(array.astype("<f4").tobytes())
    return Payload(request.SerializeToString(), "application/grpc")


def build(protocol: str, model: str, size: int) -> Payload:
    array = input_array(size)
    if protocol == "http-json":
        return json_body(array)
    if protocol == "http-binary":
        return binary_body(array)
    if protocol == "grpc":
        return grpc_body(model, array)
    raise ValueError(protocol)


def expected_output(size: int) -> np.ndarray:
    """What the identity model must answer, for the one correctness check before loading."""
    return input_array(size)
