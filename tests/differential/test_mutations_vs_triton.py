"""Mutated inference requests, the same to this server and to tritonserver, must get the same
answers: a fixed, seeded set over HTTP JSON and over gRPC, on the Python models of
``test_request_checks_vs_triton`` (two required inputs, INT32 and BYTES, and an optional BOOL).

Left out, because tritonserver cannot serve them the same way twice: shapes of 2**31 or
more elements (it aborts), dimensions of 2**63 or more (it wraps them to negative numbers),
and gRPC requests with more than one parameter (it walks them in its hash map's order).
"""

from __future__ import annotations

import copy
import json
import random
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from server.protocol.generated import grpc_service_pb2 as pb
from tests.differential.conftest import start_triton
from tests.differential.http_wire import comparable, send
from tests.differential.test_request_checks_vs_triton import (
    _CONFIG,
    _ECHO,
    _OPTIONAL,
    _grpc_answer,
)
from tests.harness import run_server
from tests.models import write_python_model

pytestmark = pytest.mark.triton

CASES = 300
_BASE = {
    "inputs": [
        {"name": "I32", "shape": [3], "datatype": "INT32", "data": [1, 2, 3]},
        {"name": "S", "shape": [2], "datatype": "BYTES", "data": ["a", "bc"]},
    ],
    "outputs": [{"name": "O32"}, {"name": "OS", "parameters": {"binary_data": False}}],
}
_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63) - 1, 1.5, -0.0, 1e308, "", "x",
    "INT32", "BYTES", "BOOL", [], [1], [[1]], {}, {"a": 1}, [1.5, 2], ["a"], [True], [None], 3,
]  # fmt: skip
_KEYS = [
    "name", "shape", "datatype", "data", "parameters", "id", "outputs", "inputs",
    "binary_data", "binary_data_size", "shared_memory_region", "classification",
    "binary_data_output", "sequence_id", "priority", "timeout",
]  # fmt: skip


def _containers(value: Any, found: list[Any]) -> list[Any]:
    if isinstance(value, (dict, list)):
        found.append(value)
        for item in value.values() if isinstance(value, dict) else value:
            _containers(item, found)
    return found


def _mutated_json(rng: random.Random) -> bytes:
    document = copy.deepcopy(_BASE)
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(_containers(document, []))
        roll = rng.random()
        if isinstance(target, dict):
            if target and roll < 0.3:
                del target[rng.choice(list(target))]
            elif target and roll < 0.7:
                target[rng.choice(list(target))] = copy.deepcopy(rng.choice(_VALUES))
            else:
                target[rng.choice(_KEYS)] = copy.deepcopy(rng.choice(_VALUES))
        elif target and roll < 0.3:
            target.pop(rng.randrange(len(target)))
        elif target and roll < 0.7:
            target[rng.randrange(len(target))] = copy.deepcopy(rng.choice(_VALUES))
        else:
            target.append(copy.deepcopy(rng.choice(_VALUES)))
    body = json.dumps(document).encode()
    if rng.random() < 0.15:
        at = rng.randrange(len(body))
        body = body[:at] + bytes([rng.choice(b'{}[],:"0a-e.')]) + body[at + 1 :]
    return body


def _servable_json(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return True
    for container in _containers(document, []):
        shape = container.get("shape") if isinstance(container, dict) else None
        if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape):
            count = 1
            for d in shape:
                count *= d
            if count >= 2**31 or any(d >= 2**63 for d in shape):
                return False
    return True


def _strings(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _mutated_grpc(rng: random.Random) -> Any:
    message = pb.ModelInferRequest(model_name="echo_optional")
    numbers = message.inputs.add(name="I32", datatype="INT32", shape=[3])
    strings = message.inputs.add(name="S", datatype="BYTES", shape=[2])
    if rng.random() < 0.6:
        message.raw_input_contents.extend([struct.pack("<3i", 1, 2, 3), _strings(b"a", b"bc")])
    else:
        numbers.contents.int_contents.extend([1, 2, 3])
        strings.contents.bytes_contents.extend([b"a", b"bc"])
    datatypes = ["INT32", "FP32", "BYTES", "BOOL", "FP16", "INT64", "UINT8", "FOO", ""]
    shapes = [[], [0], [3], [2], [1, 3], [-1], [4], [2, 2]]
    parameter_set = False
    for _ in range(rng.randint(1, 3)):
        roll = rng.randrange(12)
        tensors = message.inputs
        raws = message.raw_input_contents
        if roll == 0 and tensors:
            tensors[rng.randrange(len(tensors))].datatype = rng.choice(datatypes)
        elif roll == 1 and tensors:
            tensor = tensors[rng.randrange(len(tensors))]
            del tensor.shape[:]
            tensor.shape.extend(rng.choice(shapes))
        elif roll == 2 and raws:
            at = rng.randrange(len(raws))
            raw = raws[at]
            raws[at] = (
                raw[: rng.randrange(len(raw) + 1)]
                if rng.random() < 0.5
                else raw + bytes(rng.randrange(1, 9))
            )
        elif roll == 3 and raws:
            del raws[-1]
        elif roll == 4:
            raws.append(bytes(rng.randrange(0, 12)))
        elif roll == 5 and tensors:
            del tensors[rng.randrange(len(tensors))]
        elif roll == 6:
            name = rng.choice(["B", "X", "I32", ""])
            tensors.add(name=name, datatype=rng.choice(datatypes), shape=[1])
        elif roll == 7:
            message.outputs.add(name=rng.choice(["O32", "OS", "NOPE", ""]))
        elif roll == 8 and tensors:
            tensor = tensors[rng.randrange(len(tensors))]
            tensor.contents.int_contents.extend([1] * rng.randrange(0, 4))
        elif roll == 9 and tensors:
            tensor = tensors[rng.randrange(len(tensors))]
            tensor.contents.bytes_contents.extend([b"z"] * rng.randrange(0, 3))
        elif roll == 10 and not parameter_set:
            parameter_set = True
            key = rng.choice(["priority", "timeout", "sequence_id", "x", "triton_y"])
            param = message.parameters[key]
            kind = rng.randrange(4)
            if kind == 0:
                param.int64_param = rng.choice([-1, 0, 5])
            elif kind == 1:
                param.bool_param = True
            elif kind == 2:
                param.string_param = "s"
            else:
                param.uint64_param = 7
        elif roll == 11 and tensors:
            tensor = tensors[rng.randrange(len(tensors))]
            key = rng.choice(["binary_data_size", "shared_memory_region", "x"])
            tensor.parameters[key].int64_param = 3
    return message


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repo = tmp_path_factory.mktemp("mutations")
    write_python_model(repo, "echo", _ECHO, _CONFIG)
    write_python_model(repo, "echo_optional", _ECHO, _OPTIONAL)
    args = ["--model-repository", str(repo), "--allow-client-shm=true"]
    with run_server(args, services=("http", "grpc")) as ours, start_triton(repo) as theirs:
        yield {"ours": ours, "triton": theirs}


def test_mutated_http_json_requests(servers: dict[str, Any]) -> None:
    rng = random.Random(20261127)
    differing = []
    for _ in range(CASES):
        model = rng.choice(["echo", "echo_optional"])
        body = _mutated_json(rng)
        if not _servable_json(body):
            continue
        path = f"/v2/models/{model}/infer"
        ours = comparable(send(servers["ours"].http_url, "POST", path, body), path)
        theirs = comparable(send(servers["triton"].http_url, "POST", path, body), path)
        if ours != theirs:
            differing.append((body, ours[:2], theirs[:2]))
    assert differing == []


def test_mutated_grpc_requests(servers: dict[str, Any]) -> None:
    rng = random.Random(20261128)
    differing = []
    for _ in range(CASES):
        message = _mutated_grpc(rng)
        ours = _grpc_answer(servers["ours"].grpc_url, message)
        theirs = _grpc_answer(servers["triton"].grpc_url, message)
        if ours != theirs:
            differing.append((str(message), ours, theirs))
    assert differing == []
