"""Which of several things wrong with an inference request is reported, side by side with
tritonserver: the same Python-backend models on both servers, the same requests.

Triton's HTTP front end reads the whole document (inputs, then outputs) before its core
checks each input's datatype, shape and then contents (a byte size, a BYTES element count),
walking the inputs in its map's order; it reads no ``data`` for a tensor of no elements,
walks JSON elements in order, and ignores output ``parameters`` that are not an object.
Found by sending both servers mutated requests and comparing the answers.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shared_memory

from server.protocol.generated import grpc_service_pb2 as pb
from server.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from tests.differential.conftest import start_triton
from tests.differential.http_wire import comparable, send
from tests.harness import run_server
from tests.models import model_config, write_python_identity, write_python_model

pytestmark = pytest.mark.triton

_ECHO = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            numbers = pb_utils.get_input_tensor_by_name(request, "I32").as_numpy()
            strings = pb_utils.get_input_tensor_by_name(request, "S").as_numpy()
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("O32", numbers), pb_utils.Tensor("OS", strings)]
                )
            )
        return responses
"""

_CONFIG = model_config(
    "echo",
    backend="python",
    max_batch_size=0,
    dynamic_batching=False,
    inputs=[("I32", "INT32", [-1]), ("S", "BYTES", [2])],
    outputs=[("O32", "INT32", [-1]), ("OS", "BYTES", [2])],
)
# A third input, BOOL, that requests may leave out.
_OPTIONAL = _CONFIG.replace('name: "echo"', 'name: "echo_optional"').replace(
    "input [",
    'input [\n  { name: "B" data_type: TYPE_BOOL dims: [ -1 ] optional: true },',
    1,
)


def _tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


NUMBERS = _tensor("I32", "INT32", [3], [1, 2, 3])
STRINGS = _tensor("S", "BYTES", [2], ["a", "bc"])


def _json(*inputs: dict[str, Any], **rest: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"inputs": list(inputs), **rest}).encode(), {}


def _binary(inputs: list[dict[str, Any]], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": inputs}).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def _sized(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


CASES: dict[str, tuple[str, tuple[bytes, dict[str, str]]]] = {
    # JSON syntax errors are placed where RapidJSON stops consuming.
    "json-minus-alone": ("echo", (b'{"inputs": [-]}', {})),
    "json-nan-cut": ("echo", (b'{"inputs": -Nab}', {})),
    "json-infinity-cut": ("echo", (b'{"inputs": [Infinit]}', {})),
    # RapidJSON's overflow checks, and a number past the largest double that passes them.
    "json-exponent-too-big": ("echo", (b'{"id": "a", "inputs": [{"data": [-1e400]}]}', {})),
    "json-integer-too-big": (
        "batched",
        (
            b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1'
            + b"0" * 400
            + b"]}]}",
            {},
        ),
    ),
    "json-infinity-by-overflow": (
        "batched",
        (
            b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], '
            b'"data": [1.5e309, -0.5e309]}]}',
            {},
        ),
    ),
    # No elements: no data is read, whatever it holds.
    "zero-elements-ignore-data": ("echo", _json(_tensor("I32", "INT32", [0], "zzz"), STRINGS)),
    "empty-shape-then-shape-error": ("echo", _json(_tensor("I32", "INT32", [], [1, 2]), STRINGS)),
    "empty-bytes-shape": ("echo", _json(NUMBERS, _tensor("S", "BYTES", [0], [1]))),
    "empty-shape-with-batching": (
        "batched",
        _json(_tensor("INPUT0", "FP32", [], [1.0]), outputs=[{"name": "OUTPUT0"}]),
    ),
    # JSON elements are walked in order.
    "surplus-before-wrong-kind": (
        "echo",
        _json(_tensor("I32", "INT32", [3], [1, 2, 3, "x"]), STRINGS),
    ),
    "wrong-kind-before-surplus": (
        "echo",
        _json(_tensor("I32", "INT32", [3], [1, "y", 3, "x"]), STRINGS),
    ),
    # Output parameters that are not an object are not read.
    "output-parameters-number": (
        "echo",
        _json(NUMBERS, STRINGS, outputs=[{"name": "O32", "parameters": 1.5}]),
    ),
    "output-parameters-array": (
        "echo",
        _json(NUMBERS, STRINGS, outputs=[{"name": "OS", "parameters": [{"binary_data": 5}]}]),
    ),
    # Contents are checked after the whole document is read, and after each input's shape.
    "bytes-surplus-named-at-the-first": (
        "echo",
        _json(NUMBERS, _tensor("S", "BYTES", [2], ["a", "b", "c", "d", "e"])),
    ),
    "bytes-count-then-bad-output": (
        "echo",
        _json(NUMBERS, _tensor("S", "BYTES", [2], ["a", "b", "c"]), outputs=[{"name": 5}]),
    ),
    "bytes-count-then-shape": (
        "echo",
        _json(_tensor("S", "BYTES", [2], ["a"]), _tensor("I32", "INT32", [3, 1], [1, 2, 3])),
    ),
    "shape-then-bytes-count": (
        "echo",
        _json(_tensor("I32", "INT32", [3, 1], [1, 2, 3]), _tensor("S", "BYTES", [2], ["a"])),
    ),
    "byte-size-then-shape": (
        "echo",
        _binary(
            [_sized("I32", "INT32", [3], 8), _tensor("S", "BYTES", [3], ["a", "b", "c"])],
            [struct.pack("<2i", 1, 2)],
        ),
    ),
    "shape-then-byte-size": (
        "echo",
        _binary(
            [_tensor("S", "BYTES", [3], ["a", "b", "c"]), _sized("I32", "INT32", [3], 8)],
            [struct.pack("<2i", 1, 2)],
        ),
    ),
    "binary-bytes-count-then-shape": (
        "echo",
        _binary(
            [_sized("S", "BYTES", [2], 5), _tensor("I32", "INT32", [3, 1], [1, 2, 3])],
            [struct.pack("<I", 1) + b"a"],
        ),
    ),
    # Optional inputs: the expected count is a range.
    "optional-too-few": ("echo_optional", _json(STRINGS)),
    "optional-none": ("echo_optional", _json()),
    "optional-too-many": (
        "echo_optional",
        _json(
            NUMBERS,
            STRINGS,
            _tensor("B", "BOOL", [1], [True]),
            _tensor("X", "BOOL", [1], [True]),
        ),
    ),
    "optional-left-out": ("echo_optional", _json(NUMBERS, STRINGS)),
    "required-missing-and-wrong-datatype": (
        "echo_optional",
        _json(STRINGS, _tensor("B", "FP32", [1], [1.0])),
    ),
    # Requested outputs are settled before the inputs are counted.
    "unknown-output-and-missing-input": (
        "echo_optional",
        _json(STRINGS, outputs=[{"name": "NOPE"}]),
    ),
    "unknown-output-and-wrong-shape": (
        "echo",
        _json(_tensor("I32", "INT32", [3, 1], [1, 2, 3]), STRINGS, outputs=[{"name": "NOPE"}]),
    ),
    # A name already in the request is refused before anything else of that input is read.
    "repeated-input-short-data": (
        "echo",
        _json(NUMBERS, STRINGS, _tensor("I32", "INT32", [3], [1, 2])),
    ),
    "repeated-input-unknown-datatype": (
        "echo",
        _json(NUMBERS, STRINGS, _tensor("I32", "FOO", [3], [1, 2, 3])),
    ),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repo = tmp_path_factory.mktemp("request_checks")
    write_python_model(repo, "echo", _ECHO, _CONFIG)
    write_python_model(repo, "echo_optional", _ECHO, _OPTIONAL)
    write_python_identity(repo, "batched")
    # This tritonserver serves client shared memory without being asked to.
    args = ["--model-repository", str(repo), "--allow-client-shm=true"]
    with run_server(args, services=("http", "grpc")) as ours, start_triton(repo) as theirs:
        yield {"ours": ours, "triton": theirs}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_check_answers(servers: dict[str, Any], case: str) -> None:
    model, (body, headers) = CASES[case]
    path = f"/v2/models/{model}/infer"
    theirs = send(servers["triton"].http_url, "POST", path, body, headers)
    ours = send(servers["ours"].http_url, "POST", path, body, headers)
    assert comparable(ours, path) == comparable(theirs, path)


def _grpc_answer(url: str, message: Any) -> tuple[str, str]:
    with grpc.insecure_channel(url) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
        except grpc.RpcError as exc:
            return str(exc.code()), str(exc.details())
    return "OK", ""


@pytest.mark.parametrize("order", ["size-first", "shape-first"])
def test_grpc_raw_contents_are_checked_after_shapes(servers: dict[str, Any], order: str) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor
    sized = tensor(name="I32", datatype="INT32", shape=[3])
    strings = tensor(name="S", datatype="BYTES", shape=[3])
    raw_sized = np.array([1, 2], dtype="<i4").tobytes()
    raw_strings = b"".join(struct.pack("<I", 1) + c for c in (b"a", b"b", b"c"))
    pairs = [(sized, raw_sized), (strings, raw_strings)]
    if order == "shape-first":
        pairs.reverse()
    message = pb.ModelInferRequest(
        model_name="echo",
        inputs=[p[0] for p in pairs],
        raw_input_contents=[p[1] for p in pairs],
    )
    ours = _grpc_answer(servers["ours"].grpc_url, message)
    theirs = _grpc_answer(servers["triton"].grpc_url, message)
    assert ours == theirs
    assert ours[0] == "StatusCode.INVALID_ARGUMENT"


# A tensor's shared-memory parameters as Triton's HTTP front end reads them: the region's
# name, then the offset, then the byte size (0 when left out), each with its JSON accessor.
SHARED_MEMORY: dict[str, dict[str, Any]] = {
    "fine": {"shared_memory_region": "reg", "shared_memory_byte_size": 12},
    "region-number": {"shared_memory_region": 5, "shared_memory_byte_size": 12},
    "region-null": {"shared_memory_region": None, "shared_memory_byte_size": 12},
    "size-string": {"shared_memory_region": "reg", "shared_memory_byte_size": "x"},
    "size-negative": {"shared_memory_region": "reg", "shared_memory_byte_size": -1},
    "size-float": {"shared_memory_region": "reg", "shared_memory_byte_size": 12.0},
    "size-beyond-64-bits": {"shared_memory_region": "reg", "shared_memory_byte_size": 2**64},
    "offset-before-size": {
        "shared_memory_region": "reg",
        "shared_memory_byte_size": "x",
        "shared_memory_offset": "y",
    },
    "size-left-out": {"shared_memory_region": "reg"},
    "size-left-out-with-offset": {"shared_memory_region": "reg", "shared_memory_offset": 4},
    "size-zero": {"shared_memory_region": "reg", "shared_memory_byte_size": 0},
    "unknown-region-size-left-out": {"shared_memory_region": "nope"},
}


@pytest.fixture(scope="module")
def regions(servers: dict[str, Any]) -> Iterator[None]:
    handles = []
    for name, server in servers.items():
        key = f"/request_checks_{name}_{uuid.uuid4().hex[:8]}"
        handle = shared_memory.create_shared_memory_region("reg", key, 64)
        shared_memory.set_shared_memory_region(handle, [np.array([7, 8, 9], dtype=np.int32)])
        handles.append(handle)
        with httpclient.InferenceServerClient(server.http_url) as client:
            client.register_system_shared_memory("reg", key, 64)
    yield
    for server in servers.values():
        with httpclient.InferenceServerClient(server.http_url) as client:
            client.unregister_system_shared_memory("reg")
    for handle in handles:
        shared_memory.destroy_shared_memory_region(handle)


@pytest.mark.usefixtures("regions")
@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("case", sorted(SHARED_MEMORY))
def test_shared_memory_parameters_answer_alike(
    servers: dict[str, Any], case: str, where: str
) -> None:
    params = SHARED_MEMORY[case]
    if where == "input":
        numbers = {"name": "I32", "datatype": "INT32", "shape": [3], "parameters": params}
        body, headers = _json(numbers, STRINGS)
    else:
        body, headers = _json(NUMBERS, STRINGS, outputs=[{"name": "O32", "parameters": params}])
    path = "/v2/models/echo/infer"
    theirs = send(servers["triton"].http_url, "POST", path, body, headers)
    ours = send(servers["ours"].http_url, "POST", path, body, headers)
    assert comparable(ours, path) == comparable(theirs, path)


def _grpc_echo(*extra: Any) -> Any:
    message = pb.ModelInferRequest(model_name="echo")
    message.inputs.add(name="I32", datatype="INT32", shape=[3])
    message.inputs.add(name="S", datatype="BYTES", shape=[2])
    message.raw_input_contents.extend(
        [
            np.array([1, 2, 3], dtype="<i4").tobytes(),
            b"".join(struct.pack("<I", len(c)) + c for c in (b"a", b"bc")),
        ]
    )
    for tensor, raw in extra:
        message.inputs.append(tensor)
        if raw is not None:
            message.raw_input_contents.append(raw)
    return message


GRPC_PARAMETERS = [
    ("priority", "int64_param", -1),
    ("priority", "uint64_param", 2**64 - 1),
    ("timeout", "uint64_param", 7),
    ("timeout", "string_param", "s"),
    ("timeout", "int64_param", -1),
    ("sequence_id", "uint64_param", 7),
    ("custom", "uint64_param", 7),
    ("custom", "double_param", 1.5),
    ("triton_enable_empty_final_response", "int64_param", 1),
]


@pytest.mark.parametrize(("key", "kind", "value"), GRPC_PARAMETERS)
def test_grpc_request_parameters_are_typed_alike(
    servers: dict[str, Any], key: str, kind: str, value: Any
) -> None:
    message = _grpc_echo()
    setattr(message.parameters[key], kind, value)
    ours = _grpc_answer(servers["ours"].grpc_url, message)
    assert ours == _grpc_answer(servers["triton"].grpc_url, message)


@pytest.mark.parametrize("case", ["repeated-name", "unknown-datatype"])
def test_grpc_inputs_are_refused_alike(servers: dict[str, Any], case: str) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor
    if case == "repeated-name":  # refused before its missing data is looked for
        message = _grpc_echo((tensor(name="I32", datatype="INT32", shape=[1]), None))
    else:  # reported by the core's datatype check, as '<invalid>'
        message = _grpc_echo((tensor(name="B", datatype="FOO", shape=[1]), b"\0"))
        message.model_name = "echo_optional"
    ours = _grpc_answer(servers["ours"].grpc_url, message)
    assert ours == _grpc_answer(servers["triton"].grpc_url, message)


def test_grpc_typed_contents_are_checked_as_raw_ones(servers: dict[str, Any]) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor
    message = pb.ModelInferRequest(model_name="echo")
    numbers = tensor(name="I32", datatype="INT32", shape=[3])
    numbers.contents.int_contents.extend([1, 2, 3])
    numbers.contents.bytes_contents.append(b"z")  # after the datatype's own field
    strings = tensor(name="S", datatype="BYTES", shape=[2])
    strings.contents.bytes_contents.extend([b"a", b"b", b"c", b"d"])
    message.inputs.extend([numbers, strings])
    for change in ("mixed fields", "surplus strings", "short numbers"):
        if change == "surplus strings":
            numbers.contents.ClearField("bytes_contents")
            message.inputs[0].CopyFrom(numbers)
        if change == "short numbers":
            numbers.contents.ClearField("int_contents")
            numbers.contents.int_contents.extend([1, 2])
            strings.contents.ClearField("bytes_contents")
            strings.contents.bytes_contents.extend([b"a"])
            message.inputs[0].CopyFrom(numbers)
            message.inputs[1].CopyFrom(strings)
        ours = _grpc_answer(servers["ours"].grpc_url, message)
        assert ours == _grpc_answer(servers["triton"].grpc_url, message), change
