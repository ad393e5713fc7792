"""gRPC against NVIDIA's tritonserver: the same requests give the same status codes, messages,
stream behaviour and shared-memory answers. Both servers run the same Python-backend models."""

from __future__ import annotations

import json
import shutil
import struct
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.utils.shared_memory as shared_memory
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.differential.conftest import start_triton
from tests.harness import run_server
from tests.models import ROOT, write_python_add_sub, write_python_identity

pytestmark = pytest.mark.triton

Tensor = pb.ModelInferRequest.InferInputTensor
Output = pb.ModelInferRequest.InferRequestedOutputTensor
ONES = np.ones(16, dtype=np.int32).tobytes()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grpc_diff_repo")
    write_python_add_sub(path, "add_sub")
    write_python_identity(path, "ident_fp32", "FP32", (-1,))
    write_python_identity(path, "ident_bytes", "BYTES", (-1,))
    write_python_identity(path, "ident_fp16", "FP16", (-1,))
    shutil.copytree(ROOT / "tests" / "python_models" / "py_repeat", path / "py_repeat")
    return path


@pytest.fixture(scope="module")
def servers(repo: Path) -> Iterator[dict[str, Any]]:
    args = ["--model-repository", str(repo), "--allow-client-shm=true"]
    with run_server(args, services=("http", "grpc")) as ours, start_triton(repo) as theirs:
        yield {"ours": ours, "triton": theirs}


@pytest.fixture(scope="module")
def stubs(servers: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with (
        grpc.insecure_channel(servers["ours"].grpc_url) as our_channel,
        grpc.insecure_channel(servers["triton"].grpc_url) as their_channel,
    ):
        yield {
            "ours": pb_grpc.GRPCInferenceServiceStub(our_channel),
            "triton": pb_grpc.GRPCInferenceServiceStub(their_channel),
        }


def add_sub(raw: list[bytes] | None = None, **kwargs: Any) -> pb.ModelInferRequest:
    inputs = [
        Tensor(name="INPUT0", datatype="INT32", shape=[1, 16]),
        Tensor(name="INPUT1", datatype="INT32", shape=[1, 16]),
    ]
    return pb.ModelInferRequest(
        model_name="add_sub",
        inputs=inputs,
        raw_input_contents=[ONES, ONES] if raw is None else raw,
        **kwargs,
    )


def with_param(request: pb.ModelInferRequest, key: str, **value: Any) -> pb.ModelInferRequest:
    request.parameters[key].CopyFrom(pb.InferParameter(**value))
    return request


def typed(field: str, values: list[Any], datatype: str = "INT32") -> pb.ModelInferRequest:
    request = add_sub(raw=[])
    request.inputs[0].datatype = datatype
    getattr(request.inputs[0].contents, field).extend(values)
    request.inputs[1].contents.int_contents.extend(range(16))
    return request


def raw_request(
    model: str, datatype: str, shape: list[int], raw: bytes, **kwargs: Any
) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[Tensor(name="INPUT0", datatype=datatype, shape=shape)],
        raw_input_contents=[raw],
        **kwargs,
    )


def raw_bytes(shape: list[int], raw: bytes, **kwargs: Any) -> pb.ModelInferRequest:
    return raw_request("ident_bytes", "BYTES", shape, raw, **kwargs)


def prefixed(length: int, data: bytes) -> bytes:
    return struct.pack("<I", length) + data


def both_contents() -> pb.ModelInferRequest:
    request = add_sub()
    request.inputs[0].contents.int_contents.extend(range(16))
    return request


def shm_input(
    request: pb.ModelInferRequest, index: int, region: str, size: int, offset: int = 0
) -> pb.ModelInferRequest:
    tensor = request.inputs[index]
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = size
    if offset:
        tensor.parameters["shared_memory_offset"].int64_param = offset
    return request


def shm_request(
    size: int = 64, offset: int = 0, region: str = "r", out: tuple[str, int, int] | None = None
) -> pb.ModelInferRequest:
    request = shm_input(shm_input(add_sub(raw=[]), 0, region, size, offset), 1, "r", 64, 64)
    if out is not None:
        output = request.outputs.add(name="OUTPUT0")
        output.parameters["shared_memory_region"].string_param = out[0]
        output.parameters["shared_memory_byte_size"].int64_param = out[1]
        output.parameters["shared_memory_offset"].int64_param = out[2]
    return request


def log_setting(key: str, **value: Any) -> pb.LogSettingsRequest:
    request = pb.LogSettingsRequest()
    request.settings[key].CopyFrom(pb.LogSettingsRequest.SettingValue(**value))
    return request


def trace_setting(key: str, value: str, model: str = "") -> pb.TraceSettingRequest:
    request = pb.TraceSettingRequest(model_name=model)
    request.settings[key].value.append(value)
    return request


Case = tuple[str, Callable[[], Any]]

# The same status code and the same message on both servers.
EXACT: dict[str, Case] = {
    "unknown_model": ("ModelInfer", lambda: pb.ModelInferRequest(model_name="nope")),
    "unknown_version": ("ModelInfer", lambda: add_sub(model_version="7")),
    "both_contents": ("ModelInfer", both_contents),
    "missing_raw_entry": ("ModelInfer", lambda: add_sub(raw=[ONES])),
    "no_data": ("ModelInfer", lambda: add_sub(raw=[])),
    "typed_wrong_field": ("ModelInfer", lambda: typed("fp32_contents", [1.0] * 16)),
    "typed_count_mismatch": ("ModelInfer", lambda: typed("int_contents", list(range(15)))),
    "typed_bytes_count": (
        "ModelInfer",
        lambda: pb.ModelInferRequest(
            model_name="ident_bytes",
            id="tb",
            inputs=[
                Tensor(
                    name="INPUT0",
                    datatype="BYTES",
                    shape=[1, 2],
                    contents=pb.InferTensorContents(bytes_contents=[b"a"]),
                )
            ],
        ),
    ),
    "typed_bytes_too_many": (
        "ModelInfer",
        lambda: pb.ModelInferRequest(
            model_name="ident_bytes",
            id="tm",
            inputs=[
                Tensor(
                    name="INPUT0",
                    datatype="BYTES",
                    shape=[1, 1],
                    contents=pb.InferTensorContents(bytes_contents=[b"a", b"b"]),
                )
            ],
        ),
    ),
    "fp16_typed": ("ModelInfer", lambda: typed("fp32_contents", [1.0] * 16, "FP16")),
    "reserved_parameter": (
        "ModelInfer",
        lambda: with_param(add_sub(), "triton_x", bool_param=True),
    ),
    "priority_type": ("ModelInfer", lambda: with_param(add_sub(), "priority", string_param="x")),
    "sequence_id_type": (
        "ModelInfer",
        lambda: with_param(add_sub(), "sequence_id", double_param=1.5),
    ),
    "unexpected_output": ("ModelInfer", lambda: add_sub(outputs=[Output(name="NOPE")])),
    "missing_input": (
        "ModelInfer",
        lambda: pb.ModelInferRequest(
            model_name="add_sub",
            id="m",
            inputs=[Tensor(name="INPUT0", datatype="INT32", shape=[1, 16])],
            raw_input_contents=[ONES],
        ),
    ),
    "wrong_datatype": (
        "ModelInfer",
        lambda: pb.ModelInferRequest(
            model_name="ident_fp32",
            inputs=[Tensor(name="INPUT0", datatype="INT32", shape=[1, 1])],
            raw_input_contents=[b"\0" * 4],
        ),
    ),
    "batch_too_large": (
        "ModelInfer",
        lambda: pb.ModelInferRequest(
            model_name="ident_fp32",
            inputs=[Tensor(name="INPUT0", datatype="FP32", shape=[9, 1])],
            raw_input_contents=[b"\0" * 36],
        ),
    ),
    # Raw contents whose size or BYTES layout is wrong: the words of Triton's core.
    "raw_size_short": ("ModelInfer", lambda: add_sub(raw=[ONES, ONES[:-4]])),
    "raw_size_short_with_id": ("ModelInfer", lambda: add_sub(raw=[ONES[:-4], ONES], id="r7")),
    "raw_size_long": ("ModelInfer", lambda: add_sub(raw=[ONES, ONES + b"xxxx"], id="r8")),
    "raw_size_empty": (
        "ModelInfer",
        lambda: raw_request("ident_fp32", "FP32", [1, 2], b""),
    ),
    "raw_size_fp16": (
        "ModelInfer",
        lambda: raw_request("ident_fp16", "FP16", [1, 3], b"\0" * 4, id="h"),
    ),
    "bytes_overrun": ("ModelInfer", lambda: raw_bytes([1, 1], prefixed(100, b"abc"))),
    "bytes_overrun_second": (
        "ModelInfer",
        lambda: raw_bytes([1, 2], prefixed(1, b"a") + prefixed(9, b"bc"), id="b9"),
    ),
    "bytes_overrun_and_count": (
        "ModelInfer",
        lambda: raw_bytes([1, 2], prefixed(100, b"abcdef"), id="b2"),
    ),
    "bytes_count_short": ("ModelInfer", lambda: raw_bytes([1, 2], prefixed(3, b"abc"))),
    "bytes_count_long": (
        "ModelInfer",
        lambda: raw_bytes([1, 1], prefixed(3, b"abc") * 2, id="b4"),
    ),
    "bytes_empty_raw": ("ModelInfer", lambda: raw_bytes([1, 1], b"", id="b7")),
    "bytes_zero_elements": ("ModelInfer", lambda: raw_bytes([1, 0], prefixed(0, b""))),
    "bytes_partial_prefix": (
        "ModelInfer",
        lambda: raw_bytes([1, 1], prefixed(3, b"abcXY"), id="b5"),
    ),
    "bytes_short_prefix": ("ModelInfer", lambda: raw_bytes([1, 1], b"ab")),
    "metadata_unknown": ("ModelMetadata", lambda: pb.ModelMetadataRequest(name="nope")),
    "config_unknown": ("ModelConfig", lambda: pb.ModelConfigRequest(name="nope")),
    "statistics_unknown": ("ModelStatistics", lambda: pb.ModelStatisticsRequest(name="nope")),
    "model_ready_unknown": ("ModelReady", lambda: pb.ModelReadyRequest(name="nope")),
    "named_repository": ("RepositoryIndex", lambda: pb.RepositoryIndexRequest(repository_name="x")),
    "load_when_not_explicit": (
        "RepositoryModelLoad",
        lambda: pb.RepositoryModelLoadRequest(model_name="add_sub"),
    ),
    "log_file": ("LogSettings", lambda: log_setting("log_file", string_param="/tmp/elsewhere.log")),
    "log_info_type": ("LogSettings", lambda: log_setting("log_info", string_param="x")),
    "log_format": ("LogSettings", lambda: log_setting("log_format", string_param="bad")),
    "trace_unknown_model": ("TraceSetting", lambda: pb.TraceSettingRequest(model_name="nope")),
    "trace_rate": ("TraceSetting", lambda: trace_setting("trace_rate", "abc")),
    "shm_status_unknown": (
        "SystemSharedMemoryStatus",
        lambda: pb.SystemSharedMemoryStatusRequest(name="nope"),
    ),
    "shm_unregister_unknown": (
        "SystemSharedMemoryUnregister",
        lambda: pb.SystemSharedMemoryUnregisterRequest(name="nope"),
    ),
    "shm_open_failure": (
        "SystemSharedMemoryRegister",
        lambda: pb.SystemSharedMemoryRegisterRequest(
            name="x", key="/no_such_key_here", byte_size=64
        ),
    ),
    "cuda_status_unknown": (
        "CudaSharedMemoryStatus",
        lambda: pb.CudaSharedMemoryStatusRequest(name="nope"),
    ),
    "shm_unknown_region": ("ModelInfer", lambda: shm_request(region="nope")),
    "shm_invalid_offset": ("ModelInfer", lambda: shm_request(offset=128)),
    "shm_invalid_end": ("ModelInfer", lambda: shm_request(offset=100)),
    "shm_size_mismatch": ("ModelInfer", lambda: shm_request(size=60)),
    "shm_output_too_small": ("ModelInfer", lambda: shm_request(out=("r", 32, 0))),
    "shm_output_unknown_region": ("ModelInfer", lambda: shm_request(out=("gone", 64, 0))),
    "shm_missing_byte_size": (
        "ModelInfer",
        lambda: pb.ModelInferRequest(model_name="add_sub", inputs=[_no_size()]),
    ),
}

# Same status code; the message wording differs.
CODE_ONLY: dict[str, Case] = {
    "decoupled_on_infer": (
        "ModelInfer",
        lambda: pb.ModelInferRequest(
            model_name="py_repeat",
            inputs=[Tensor(name="IN", datatype="INT32", shape=[1])],
            raw_input_contents=[b"\1\0\0\0"],
        ),
    ),
    "bad_version_string": (
        "ModelMetadata",
        lambda: pb.ModelMetadataRequest(name="add_sub", version="x"),
    ),
}


def _no_size() -> Any:
    tensor = Tensor(name="INPUT0", datatype="INT32", shape=[1, 16])
    tensor.parameters["shared_memory_region"].string_param = "r"
    return tensor


@pytest.fixture(scope="module")
def region(stubs: dict[str, Any]) -> Iterator[str]:
    """One 128-byte region "r" registered on both servers, holding two INT32[16] tensors."""
    key = f"/griddiff_{uuid.uuid4().hex[:12]}"
    handle = shared_memory.create_shared_memory_region("r", key, 128)
    shared_memory.set_shared_memory_region(
        handle, [np.arange(16, dtype=np.int32), np.ones(16, dtype=np.int32)]
    )
    for stub in stubs.values():
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="r", key=key, byte_size=128)
        )
    yield key
    for stub in stubs.values():
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())
    shared_memory.destroy_shared_memory_region(handle)


def answer(stub: Any, rpc: str, request: Any) -> tuple[str, str]:
    try:
        return "OK", str(getattr(stub, rpc)(request))
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()


@pytest.mark.parametrize("case", sorted(EXACT))
def test_same_status_and_message(stubs: dict[str, Any], region: str, case: str) -> None:
    rpc, build = EXACT[case]
    ours, theirs = (answer(stubs[side], rpc, build()) for side in ("ours", "triton"))
    assert ours == theirs


@pytest.mark.parametrize("case", sorted(CODE_ONLY))
def test_same_status_code(stubs: dict[str, Any], case: str) -> None:
    rpc, build = CODE_ONLY[case]
    ours, theirs = (answer(stubs[side], rpc, build()) for side in ("ours", "triton"))
    assert ours[0] == theirs[0] != "OK", (ours, theirs)


def test_shared_memory_status_and_results(stubs: dict[str, Any], region: str) -> None:
    seen = {}
    for side, stub in stubs.items():
        regions = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
        response = stub.ModelInfer(shm_request())
        seen[side] = (
            {name: (r.name, r.key, r.offset, r.byte_size) for name, r in regions.items()},
            [np.frombuffer(raw, "<i4").tolist() for raw in response.raw_output_contents],
            [o.name for o in response.outputs],
        )
    assert seen["ours"] == seen["triton"]
    assert seen["ours"][1][0] == (np.arange(16) + 1).tolist()


Row = tuple[str, str, str, str, bool | None, list[int]]


def _stream(stub: Any, requests: list[pb.ModelInferRequest]) -> list[Row]:
    """(error, model name, model version, id, final flag, first output's values) per message."""
    rows = []
    for item in stub.ModelStreamInfer(iter(requests)):
        response = item.infer_response
        final = (
            response.parameters["triton_final_response"].bool_param
            if "triton_final_response" in response.parameters
            else None
        )
        values = [
            int(v) for raw in response.raw_output_contents[:1] for v in np.frombuffer(raw, "<i4")
        ]
        rows.append(
            (
                item.error_message,
                response.model_name,
                response.model_version,
                response.id,
                final,
                values,
            )
        )
    return rows


def test_stream_order_and_in_band_errors(stubs: dict[str, Any]) -> None:
    requests = [
        add_sub(id="a"),
        pb.ModelInferRequest(model_name="nope", id="b"),
        add_sub(raw=[ONES, ONES[:-4]], id="c"),
        with_param(add_sub(id="d"), "triton_x", bool_param=True),
        pb.ModelInferRequest(
            model_name="add_sub",
            id="e",
            inputs=[Tensor(name="INPUT0", datatype="INT32", shape=[1, 16])],
            raw_input_contents=[ONES],
        ),
        add_sub(id="f"),
    ]
    ours, theirs = (_stream(stubs[side], requests) for side in ("ours", "triton"))
    assert [row[3] for row in ours] == [row[3] for row in theirs] == list("abcdef")
    assert ours == theirs


def test_decoupled_stream(stubs: dict[str, Any]) -> None:
    def repeat(values: list[int], request_id: str, empty_final: bool) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(
            model_name="py_repeat",
            id=request_id,
            inputs=[Tensor(name="IN", datatype="INT32", shape=[len(values)])],
            raw_input_contents=[np.array(values, dtype=np.int32).tobytes()],
        )
        if empty_final:
            request.parameters["triton_enable_empty_final_response"].bool_param = True
        return request

    for empty_final in (False, True):
        requests = [repeat([4, -2, 6], "x", empty_final)]
        ours, theirs = (_stream(stubs[side], requests) for side in ("ours", "triton"))
        assert ours == theirs, (empty_final, ours, theirs)
    # The empty final response names the model, and no version.
    assert ours[-1][1:5] == ("py_repeat", "", "x", True)
    assert {row[2] for row in ours[:-1] if not row[0]} == {"1"}


HTTP_CASES: list[tuple[str, str, Any]] = [
    ("GET", "/v2/trace/setting", None),
    ("GET", "/v2/models/add_sub/trace/setting", None),
    ("GET", "/v2/models/nope/trace/setting", None),
    ("POST", "/v2/trace/setting", {"trace_rate": "abc"}),
    ("POST", "/v2/models/add_sub/trace/setting", {"trace_rate": "20"}),
    ("GET", "/v2/models/add_sub/trace/setting", None),
    ("POST", "/v2/models/add_sub/trace/setting", {"trace_rate": None}),
    ("GET", "/v2/models/add_sub/versions/1/trace/setting", None),
    # Values of the wrong kind meet Triton's JSON accessors; unknown levels are dropped; the
    # other values are read before the level is judged.
    ("POST", "/v2/trace/setting", {"trace_level": "OFF"}),
    ("POST", "/v2/trace/setting", {"trace_level": [1]}),
    ("POST", "/v2/trace/setting", {"trace_rate": 5}),
    ("POST", "/v2/trace/setting", {"trace_count": ["1"]}),
    ("POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"], "trace_rate": "x"}),
    ("POST", "/v2/models/add_sub/trace/setting", {"trace_level": ["nope"]}),
    ("POST", "/v2/trace/setting", [1]),
    ("GET", "/v2/logging", None),
    ("POST", "/v2/logging", {"log_file": "/tmp/elsewhere.log"}),
    ("POST", "/v2/logging", {"log_verbose_level": 0}),
    # Members of the wrong kind meet Triton's JSON accessors; a body that is not an object
    # has no members.
    ("POST", "/v2/logging", {"log_info": 1}),
    ("POST", "/v2/logging", {"log_error": "true"}),
    ("POST", "/v2/logging", {"log_verbose_level": -1}),
    ("POST", "/v2/logging", {"log_verbose_level": "1"}),
    ("POST", "/v2/logging", {"log_format": 4096}),
    ("POST", "/v2/logging", []),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("GET", "/v2/systemsharedmemory/region/nope/status", None),
    ("POST", "/v2/systemsharedmemory/region/nope/unregister", None),
    (
        "POST",
        "/v2/systemsharedmemory/region/x/register",
        {"key": "/no_such_key_here", "offset": 0, "byte_size": 64},
    ),
    ("POST", "/v2/systemsharedmemory/region/x/register", {"offset": 0, "byte_size": 64}),
    ("POST", "/v2/systemsharedmemory/region/x/register", {"key": "/no_such_key_here"}),
    ("POST", "/v2/systemsharedmemory/region/x/register", {"key": 5, "byte_size": 64}),
    ("POST", "/v2/systemsharedmemory/region/x/register", {"key": None, "byte_size": 64}),
    ("POST", "/v2/systemsharedmemory/region/x/register", {"key": "/k", "offset": []}),
    ("POST", "/v2/systemsharedmemory/region/x/register", {"key": "/k", "offset": "0"}),
    ("POST", "/v2/systemsharedmemory/region/x/register", {"key": "/k", "byte_size": -1}),
    ("POST", "/v2/systemsharedmemory/region/x/register", {"key": "/k", "byte_size": True}),
    ("POST", "/v2/systemsharedmemory/region/x/register", [{"key": "/k"}]),
    ("GET", "/v2/cudasharedmemory/status", None),
    ("GET", "/v2/cudasharedmemory/region/nope/status", None),
    ("POST", "/v2/cudasharedmemory/unregister", None),
]


def http_answer(url: str, method: str, path: str, body: Any) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{url}{path}", method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    return status, json.loads(payload) if payload else None


def test_http_extension_endpoints(servers: dict[str, Any]) -> None:
    for method, path, body in HTTP_CASES:
        ours = http_answer(servers["ours"].http_url, method, path, body)
        theirs = http_answer(servers["triton"].http_url, method, path, body)
        assert ours == theirs, (method, path, body)
