"""The gRPC front end against a real server, driven by tritonclient.grpc (sync, aio and
streaming) and by raw stubs for requests tritonclient never builds."""

from __future__ import annotations

import asyncio
import queue
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from server.protocol.generated import grpc_service_pb2 as pb
from server.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from server.protocol.generated import health_pb2, health_pb2_grpc
from tests.harness import ServerProcess, run_server
from tests.models import ROOT, bf16_client_array, copy_bundled_model, write_onnx_identity

PYTHON_MODELS = ROOT / "tests" / "python_models"


def build_repository(repo: Path) -> Path:
    copy_bundled_model(repo, "simple")
    copy_bundled_model(repo, "identity_fp32")
    write_onnx_identity(
        repo, "identity_bytes", "BYTES", (-1,), max_batch_size=0, dynamic_batching=False
    )
    write_onnx_identity(repo, "identity_bf16", "BF16", (-1,), max_batch_size=8)
    shutil.copytree(PYTHON_MODELS / "py_repeat", repo / "py_repeat")
    shutil.copytree(PYTHON_MODELS / "py_sleep", repo / "py_sleep")
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = build_repository(tmp_path_factory.mktemp("grpc_repo"))
    with run_server(["--model-repository", str(repo)]) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _int_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("INPUT0", list(a.shape), "INT32"),
        grpcclient.InferInput("INPUT1", list(b.shape), "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def _fp32_input(values: np.ndarray, name: str = "INPUT0") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return tensor


def _status(stub_call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub_call(request)
    return info.value.code(), info.value.details()


def test_health_and_metadata(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "triton" and "system_shared_memory" in meta["extensions"]
    model = client.get_model_metadata("simple", as_json=True)
    assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("INPUT0", "INT32", ["-1", "16"]),
        ("INPUT1", "INT32", ["-1", "16"]),
    ]
    config = client.get_model_config("simple").config
    assert config.name == "simple" and config.max_batch_size == 8
    index = {(m.name, m.state) for m in client.get_model_repository_index().models}
    assert ("simple", "READY") in index and ("py_repeat", "READY") in index
    with grpc.insecure_channel(server.grpc_url) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_infer_with_raw_contents(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    result = client.infer(
        "simple",
        _int_inputs(a, b),
        request_id="r1",
        outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
    )
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r1", "simple", "1")
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_infer_with_typed_contents(stub: Any) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(
        model_name="simple",
        inputs=[
            tensor(name="INPUT0", datatype="INT32", shape=[1, 16]),
            tensor(name="INPUT1", datatype="INT32", shape=[1, 16]),
        ],
    )
    request.inputs[0].contents.int_contents.extend(range(16))
    request.inputs[1].contents.int_contents.extend([1] * 16)
    response = stub.ModelInfer(request)
    assert len(response.raw_output_contents) == 2 and not response.outputs[0].HasField("contents")
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[0], "<i4"), np.arange(16) + 1
    )


def test_bytes_round_trip_and_a_50_mib_response(client: grpcclient.InferenceServerClient) -> None:
    words = np.array([b"alpha", b"", "ünï".encode(), b"\x00\x01"], dtype=object)
    tensor = grpcclient.InferInput("INPUT0", [4], "BYTES")
    tensor.set_data_from_numpy(words)
    assert client.infer("identity_bytes", [tensor]).as_numpy("OUTPUT0").tolist() == words.tolist()

    big = np.array([b"x" * (50 * 1024 * 1024)], dtype=object)
    tensor = grpcclient.InferInput("INPUT0", [1], "BYTES")
    tensor.set_data_from_numpy(big)
    result = client.infer("identity_bytes", [tensor])
    assert len(result.get_response().raw_output_contents[0]) == 4 + 50 * 1024 * 1024
    assert result.as_numpy("OUTPUT0")[0] == big[0]


def test_bf16_round_trip(client: grpcclient.InferenceServerClient) -> None:
    # Floats cut to their upper half, which BF16 holds exactly.
    floats = np.array([[1.5, -2.0, 3.25, 0.0], [-0.0, 65280.0, 1e-38, -7.0]], dtype=np.float32)
    floats = ((floats.view(np.uint32) >> 16) << 16).view(np.float32)
    tensor = grpcclient.InferInput("INPUT0", [2, 4], "BF16")
    tensor.set_data_from_numpy(bf16_client_array(floats))
    result = client.infer("identity_bf16", [tensor])
    assert result.get_output("OUTPUT0").datatype == "BF16"
    raw = result.get_response().raw_output_contents[0]
    assert raw == (floats.view(np.uint32) >> 16).astype("<u2").tobytes()
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0").astype(np.float32), floats)


def test_non_utf8_bytes_into_onnxruntime_are_invalid_argument(stub: Any) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(
        model_name="identity_bytes",
        inputs=[tensor(name="INPUT0", datatype="BYTES", shape=[2])],
        raw_input_contents=[b"\1\0\0\0a\2\0\0\0\xc3\x28"],
    )
    code, message = _status(stub.ModelInfer, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith(
        "input 'INPUT0' of model 'identity_bytes': element 1 is not valid UTF-8"
    )


def test_bad_requests_get_a_clear_status_and_the_server_keeps_serving(
    stub: Any, client: grpcclient.InferenceServerClient
) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor
    ones = np.ones(16, dtype=np.int32).tobytes()

    def simple(raw: list[bytes], **kwargs: Any) -> Any:
        inputs = [
            tensor(name="INPUT0", datatype="INT32", shape=[1, 16]),
            tensor(name="INPUT1", datatype="INT32", shape=[1, 16]),
        ]
        return pb.ModelInferRequest(
            model_name="simple", inputs=inputs, raw_input_contents=raw, **kwargs
        )

    assert _status(stub.ModelInfer, pb.ModelInferRequest(model_name="nope")) == (
        grpc.StatusCode.NOT_FOUND,
        "Request for unknown model: 'nope' is not found",
    )
    assert _status(stub.ModelInfer, simple([ones, ones], model_version="7")) == (
        grpc.StatusCode.NOT_FOUND,
        "Request for unknown model: 'simple' version 7 is not found",
    )
    code, message = _status(stub.ModelInfer, simple([ones, ones[:-4]]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'INPUT1'" in message
    both = simple([ones, ones])
    both.inputs[0].contents.int_contents.extend(range(16))
    assert _status(stub.ModelInfer, both) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'simple'",
    )
    code, message = _status(
        stub.ModelInfer,
        pb.ModelInferRequest(
            model_name="identity_bytes",
            inputs=[tensor(name="INPUT0", datatype="BYTES", shape=[1])],
            raw_input_contents=[b"\x64\0\0\0abc"],
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'INPUT0'" in message
    code, message = _status(
        stub.ModelInfer,
        simple(
            [ones, ones], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="NOPE")]
        ),
    )
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "unexpected inference output 'NOPE' for model 'simple'",
    )
    repeat = pb.ModelInferRequest(
        model_name="py_repeat",
        inputs=[tensor(name="IN", datatype="INT32", shape=[1])],
        raw_input_contents=[b"\1\0\0\0"],
    )
    code, message = _status(stub.ModelInfer, repeat)
    assert code == grpc.StatusCode.UNIMPLEMENTED and "decoupled" in message
    assert (
        _status(stub.ModelMetadata, pb.ModelMetadataRequest(name="simple", version="x"))[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _status(stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="other")) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "'repository_name' specification is not supported",
    )
    assert _status(
        stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="simple")
    ) == (
        grpc.StatusCode.UNAVAILABLE,
        "explicit model load / unload is not allowed if polling is enabled",
    )
    assert client.is_server_live()
    np.testing.assert_array_equal(
        np.frombuffer(stub.ModelInfer(simple([ones, ones])).raw_output_contents[0], "<i4"), [2] * 16
    )


def test_statistics_count_grpc_inferences(client: grpcclient.InferenceServerClient) -> None:
    def count() -> int:
        stats = client.get_inference_statistics("identity_fp32", as_json=True)["model_stats"]
        return int(stats[0].get("inference_count", 0))

    before = count()
    client.infer("identity_fp32", [_fp32_input(np.ones((3, 2), np.float32))])
    assert count() == before + 3
    with pytest.raises(InferenceServerException, match="requested model 'nope' is not available"):
        client.get_inference_statistics("nope")


def test_trace_and_log_settings(client: grpcclient.InferenceServerClient) -> None:
    trace = client.get_trace_settings(as_json=True)["settings"]
    assert trace["trace_level"]["value"] == ["OFF"] and trace["trace_rate"]["value"] == ["1000"]
    updated = client.update_trace_settings(
        model_name="simple", settings={"trace_rate": "7"}, as_json=True
    )["settings"]
    assert updated["trace_rate"]["value"] == ["7"]
    assert client.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["1000"]
    cleared = client.update_trace_settings(
        model_name="simple", settings={"trace_rate": None}, as_json=True
    )["settings"]
    assert cleared["trace_rate"]["value"] == ["1000"]
    with pytest.raises(InferenceServerException, match="Unable to parse 'trace_rate', got: abc"):
        client.update_trace_settings(settings={"trace_rate": "abc"})
    with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
        client.get_trace_settings(model_name="nope")

    log = client.get_log_settings(as_json=True)["settings"]
    assert log["log_info"]["bool_param"] is True and log["log_format"]["string_param"] == "default"
    changed = client.update_log_settings({"log_verbose_level": 1}, as_json=True)["settings"]
    assert changed["log_verbose_level"]["uint32_param"] == 1
    client.update_log_settings({"log_verbose_level": 0})
    with pytest.raises(InferenceServerException, match="log file location can not be updated"):
        client.update_log_settings({"log_file": "/tmp/elsewhere.log"})


def test_aio_client(server: ServerProcess) -> None:
    async def run() -> None:
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            assert await c.is_server_ready()
            values = np.arange(8, dtype=np.float32).reshape(2, 4)
            results = await asyncio.gather(
                *(c.infer("identity_fp32", [_fp32_input(values * i)]) for i in range(5))
            )
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values * i)
            with pytest.raises(InferenceServerException, match="is not found"):
                await c.infer("nope", [_fp32_input(values)])

    asyncio.run(run())


def _stream_results(
    client: grpcclient.InferenceServerClient, sends: list[dict[str, Any]], expected: int
) -> list[tuple[Any, Any]]:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for kwargs in sends:
            client.async_stream_infer(**kwargs)
        return [results.get(timeout=30) for _ in range(expected)]
    finally:
        client.stop_stream()


def test_stream_answers_in_request_order_with_errors_in_band(
    client: grpcclient.InferenceServerClient,
) -> None:
    sends: list[dict[str, Any]] = []
    for i in range(12):
        if i == 4:
            sends.append(
                {
                    "model_name": "no_such_model",
                    "inputs": [_fp32_input(np.ones((1, 1), np.float32))],
                    "request_id": str(i),
                }
            )
        elif i == 7:
            sends.append(
                {
                    "model_name": "identity_fp32",
                    "inputs": [_fp32_input(np.ones((9, 1), np.float32))],
                    "request_id": str(i),
                }
            )
        else:
            # Larger requests first, so that a server answering in completion order would show it.
            sends.append(
                {
                    "model_name": "identity_fp32",
                    "inputs": [_fp32_input(np.full((1, 4000 - i * 300), i, np.float32))],
                    "request_id": str(i),
                }
            )
    answers = _stream_results(client, sends, len(sends))
    for i, (result, error) in enumerate(answers):
        if i == 4:
            assert (
                result is None
                and "Request for unknown model: 'no_such_model' is not found" in str(error)
            )
        elif i == 7:
            assert result is None and "batch-size must be <= 8" in str(error)
        else:
            assert error is None
            response = result.get_response()
            assert response.id == str(i)
            assert response.parameters["triton_final_response"].bool_param is True
            assert float(result.as_numpy("OUTPUT0")[0, 0]) == i


def test_decoupled_stream_with_an_empty_final_response(
    client: grpcclient.InferenceServerClient,
) -> None:
    values = np.array([3, -1, 5], dtype=np.int32)
    tensor = grpcclient.InferInput("IN", [3], "INT32")
    tensor.set_data_from_numpy(values)
    answers = _stream_results(
        client,
        [
            {
                "model_name": "py_repeat",
                "inputs": [tensor],
                "request_id": "d",
                "enable_empty_final_response": True,
            }
        ],
        4,
    )
    outputs = [
        (int(r.as_numpy("OUT")[0]), r.get_response().parameters["triton_final_response"].bool_param)
        for r, e in answers
        if r is not None and r.as_numpy("OUT") is not None
    ]
    assert outputs == [(3, False), (5, False)]
    errors = [str(e) for r, e in answers if e is not None]
    assert len(errors) == 1 and "negative value -1" in errors[0]
    final = answers[-1][0].get_response()
    assert (
        final.id == "d"
        and final.parameters["triton_final_response"].bool_param
        and not final.outputs
    )
    # As Triton: the data responses carry the version, the empty final one does not.
    assert (final.model_name, final.model_version) == ("py_repeat", "")
    versions = {r.get_response().model_version for r, _ in answers[:-1] if r is not None}
    assert versions == {"1"}


def test_client_cancel_makes_the_scheduler_skip_the_request(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    def seconds(value: float) -> list[grpcclient.InferInput]:
        return [_fp32_input(np.array([value], np.float32), "SECONDS")]

    busy: queue.Queue[Any] = queue.Queue()
    client.async_infer(
        "py_sleep", seconds(1.25), callback=lambda result, error: busy.put((result, error))
    )
    server.wait_for_log(r"py_sleep: sleeping 1\.25")
    with pytest.raises(InferenceServerException, match="Deadline Exceeded"):
        client.infer("py_sleep", seconds(0.375), client_timeout=0.2)
    result, error = busy.get(timeout=30)
    assert error is None
    client.infer("py_sleep", seconds(0.0625))
    server.wait_for_log(r"py_sleep: sleeping 0\.0625")
    assert "sleeping 0.375" not in server.log()


def test_compression_and_message_limit_flags(tmp_path: Path) -> None:
    copy_bundled_model(tmp_path, "identity_fp32")
    args = [
        "--model-repository",
        str(tmp_path),
        "--grpc-infer-response-compression-level=high",
        "--grpc-keepalive-time=10000",
    ]
    with (
        run_server(args, services=("http", "grpc")) as srv,
        grpcclient.InferenceServerClient(srv.grpc_url) as c,
    ):
        values = np.zeros((1, 100000), np.float32)
        np.testing.assert_array_equal(
            c.infer("identity_fp32", [_fp32_input(values)]).as_numpy("OUTPUT0"), values
        )
