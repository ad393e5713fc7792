"""The request flows of Triton's Python client samples, against the bundled repository.

Triton ships sample clients (``simple_http_infer_client.py``, ``simple_grpc_custom_repeat.py``
...) that its users run first; they must work against this server unchanged. These tests
make the same calls with tritonclient and check the same answers, so a change that would
break a sample breaks a test here.
"""

from __future__ import annotations

import asyncio
import base64
import queue
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import tritonclient.utils.shared_memory as shm
from tritonclient import utils
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from server.cuda_ipc import CudaRuntimeIpc
from tests.harness import ServerProcess, run_server
from tests.models import BUNDLED_REPOSITORY

COUNTING = np.arange(16, dtype=np.int32).reshape(1, 16)
ONES = np.ones((1, 16), dtype=np.int32)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    args = ["--model-repository", str(BUNDLED_REPOSITORY), "--allow-client-shm=true"]
    with run_server(args) as srv:
        yield srv


def _decimal(values: np.ndarray) -> np.ndarray:
    return np.array([str(v).encode() for v in values.ravel()], dtype=object).reshape(values.shape)


def _check_add_sub(result: Any, a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def _http_inputs(a: np.ndarray, b: np.ndarray, datatype: str = "INT32") -> list[Any]:
    inputs = [httpclient.InferInput(f"INPUT{i}", list(a.shape), datatype) for i in (0, 1)]
    inputs[0].set_data_from_numpy(a, binary_data=False)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    return inputs


def _grpc_inputs(a: np.ndarray, b: np.ndarray, datatype: str = "INT32") -> list[Any]:
    inputs = [grpcclient.InferInput(f"INPUT{i}", list(a.shape), datatype) for i in (0, 1)]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def test_http_add_sub_mixes_json_and_binary_tensors(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url, concurrency=2)
    minus = -ONES
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    params = {"test_1": 1, "test_2": 2}
    inputs = _http_inputs(COUNTING, minus)
    _check_add_sub(
        client.infer("simple", inputs, outputs=outputs, query_params=params), COUNTING, minus
    )
    _check_add_sub(client.infer("simple", inputs, query_params=params), COUNTING, minus)
    assert len(client.get_inference_statistics(model_name="simple")["model_stats"]) == 1
    pending = [client.async_infer("simple", inputs, outputs=outputs) for _ in range(2)]
    for request in pending:
        _check_add_sub(request.get_result(), COUNTING, minus)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("wrong_model_name", inputs)
    assert caught.value.message().startswith("Request for unknown model")
    client.close()


def test_http_aio_requests_in_parallel(server: ServerProcess) -> None:
    async def flow() -> None:
        client = httpaio.InferenceServerClient(server.http_url)
        inputs = [httpaio.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
        inputs[0].set_data_from_numpy(COUNTING, binary_data=False)
        inputs[1].set_data_from_numpy(ONES, binary_data=True)
        results = await asyncio.gather(*(client.infer("simple", inputs) for _ in range(3)))
        for result in results:
            _check_add_sub(result, COUNTING, ONES)
        assert await client.is_server_live(query_params={"test_1": 1})
        assert (await client.get_server_metadata())["name"] == "triton"
        await client.close()

    asyncio.run(flow())


def test_grpc_add_sub_with_headers_compression_and_callbacks(server: ServerProcess) -> None:
    keepalive = grpcclient.KeepAliveOptions(keepalive_time_ms=2**31 - 1, keepalive_timeout_ms=20000)
    channel_args = [("grpc.max_send_message_length", 1 << 20), ("grpc.dns_enable_srv_queries", 1)]
    answers: queue.Queue[Any] = queue.Queue()
    for client in (
        grpcclient.InferenceServerClient(server.grpc_url, keepalive_options=keepalive),
        grpcclient.InferenceServerClient(server.grpc_url, channel_args=channel_args),
    ):
        inputs = _grpc_inputs(COUNTING, ONES)
        outputs = [grpcclient.InferRequestedOutput(f"OUTPUT{i}") for i in (0, 1)]
        result = client.infer(
            "simple", inputs, outputs=outputs, headers={"test": "1"}, compression_algorithm="gzip"
        )
        _check_add_sub(result, COUNTING, ONES)
        _check_add_sub(client.infer("simple", inputs), COUNTING, ONES)
        assert len(client.get_inference_statistics(model_name="simple").model_stats) == 1
        client.async_infer("simple", inputs, lambda result, error: answers.put(error or result))
        _check_add_sub(answers.get(timeout=30), COUNTING, ONES)
        client.close()


def test_grpc_aio_requests_in_parallel(server: ServerProcess) -> None:
    async def flow() -> None:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        inputs = [grpcaio.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
        inputs[0].set_data_from_numpy(COUNTING)
        inputs[1].set_data_from_numpy(ONES)
        for result in await asyncio.gather(*(client.infer("simple", inputs) for _ in range(3))):
            _check_add_sub(result, COUNTING, ONES)
        assert (await client.get_model_config("simple")).config.name == "simple"
        await client.close()

    asyncio.run(flow())


def test_health_and_metadata_name_unknown_models(server: ServerProcess) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("simple")
    assert http.get_model_metadata("simple", query_params={"test_1": 1})["name"] == "simple"
    rpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert rpc.is_server_live(headers={"test": "1"}) and rpc.get_server_metadata().name == "triton"
    assert rpc.get_model_metadata("simple", headers={"dummy": "2"}).name == "simple"
    assert rpc.get_model_config("simple").config.name == "simple"
    for client in (http, rpc):
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_metadata("wrong_model_name")
        assert "Request for unknown model" in caught.value.message()
    http.close()
    rpc.close()


def test_string_models_over_http_json_binary_and_grpc(server: ServerProcess) -> None:
    words, ones = _decimal(COUNTING), _decimal(ONES)
    http = httpclient.InferenceServerClient(server.http_url)
    rpc = grpcclient.InferenceServerClient(server.grpc_url)
    results = [
        http.infer("simple_string", _http_inputs(words, ones, "BYTES")),
        rpc.infer("simple_string", _grpc_inputs(words, ones, "BYTES")),
    ]
    for result in results:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), _decimal(COUNTING + ONES))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), _decimal(COUNTING - ONES))
    nul = np.array([b"he\x00llo"] * 16, dtype=object).reshape(1, 16)
    blobs = np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)
    for data in (nul, blobs):
        for binary in (True, False):
            tensor = httpclient.InferInput("INPUT0", [1, 16], "BYTES")
            tensor.set_data_from_numpy(data, binary_data=binary)
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
            echoed = http.infer("simple_identity", [tensor], outputs=[out]).as_numpy("OUTPUT0")
            as_bytes = [x if isinstance(x, bytes) else str(x).encode() for x in echoed.ravel()]
            assert as_bytes == list(data.ravel())
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "BYTES")
        tensor.set_data_from_numpy(data)
        echoed = rpc.infer("simple_identity", [tensor]).as_numpy("OUTPUT0")
        assert list(echoed.ravel()) == list(data.ravel())
    http.close()
    rpc.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory_round_trips(server: ServerProcess, protocol: str) -> None:
    lib = httpclient if protocol == "http" else grpcclient
    client: Any = lib.InferenceServerClient(
        server.http_url if protocol == "http" else server.grpc_url
    )
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    tag = uuid.uuid4().hex[:8]
    words = [_decimal(COUNTING.ravel()), _decimal(ONES.ravel())]
    payloads = [COUNTING.ravel().tobytes(), ONES.ravel().tobytes()]
    payloads += [utils.serialize_byte_tensor(w).item() for w in words]
    expected = [_decimal(COUNTING.ravel() + 1), _decimal(COUNTING.ravel() - 1)]
    out_sizes = [64, 64] + [len(utils.serialize_byte_tensor(e).item()) for e in expected]
    handles = []
    try:
        for i, (data, out_size) in enumerate(zip(payloads, out_sizes, strict=True)):
            for kind, size in (("in", len(data)), ("out", out_size)):
                name, key = f"{kind}{i}", f"/ex_{tag}_{kind}{i}"
                handles.append(shm.create_shared_memory_region(name, key, size))
                client.register_system_shared_memory(name, key, size)
                if kind == "in":
                    shm.set_shared_memory_region(handles[-1], [np.frombuffer(data, np.uint8)])
        for model, datatype, first in (("simple", "INT32", 0), ("simple_string", "BYTES", 2)):
            inputs = [lib.InferInput(f"INPUT{j}", [1, 16], datatype) for j in (0, 1)]
            outputs = [lib.InferRequestedOutput(f"OUTPUT{j}") for j in (0, 1)]
            for j in (0, 1):
                inputs[j].set_shared_memory(f"in{first + j}", len(payloads[first + j]))
                outputs[j].set_shared_memory(f"out{first + j}", out_sizes[first + j])
            client.infer(model, inputs, outputs=outputs)
            dtype = utils.triton_to_np_dtype(datatype)
            got = [
                shm.get_contents_as_numpy(handles[2 * (first + j) + 1], dtype, [1, 16])
                for j in (0, 1)
            ]
            if datatype == "INT32":
                want = [COUNTING + ONES, COUNTING - ONES]
            else:
                want = [e.reshape(1, 16) for e in expected]
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
            # The same tensor objects go back to carrying their data in the request.
            for j in (0, 1):
                outputs[j].unset_shared_memory()
            if datatype == "INT32":
                inputs[0].set_data_from_numpy(COUNTING)
                inputs[1].set_data_from_numpy(ONES * 2)
                _check_add_sub(client.infer(model, inputs, outputs=outputs), COUNTING, ONES * 2)
        status = client.get_system_shared_memory_status()
        names = {r["name"] for r in status} if protocol == "http" else set(status.regions)
        assert names == {f"{k}{i}" for i in range(4) for k in ("in", "out")}
    finally:
        client.unregister_system_shared_memory()
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
        client.close()


def _raw_request(model: str, datatype: str, version: str = "") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for i in (0, 1):
        tensor = request.inputs.add(name=f"INPUT{i}", datatype=datatype, shape=[1, 16])
        values = COUNTING.ravel() if i == 0 else ONES.ravel()
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend(_decimal(values).tolist())
        else:
            tensor.contents.int_contents.extend(values.tolist())
        request.outputs.add(name=f"OUTPUT{i}")
    return request


def test_grpc_typed_contents_fields(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for model, datatype in (("simple", "INT32"), ("simple_int8", "INT8")):
            response = stub.ModelInfer(_raw_request(model, datatype))
            assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
            dtype = utils.triton_to_np_dtype(datatype)
            got = [np.frombuffer(raw, dtype).reshape(1, 16) for raw in response.raw_output_contents]
            np.testing.assert_array_equal(got[0], COUNTING + ONES)
            np.testing.assert_array_equal(got[1], COUNTING - ONES)
        response = stub.ModelInfer(_raw_request("simple_string", "BYTES"))
        sums = utils.deserialize_bytes_tensor(response.raw_output_contents[0])
        assert [int(s) for s in sums] == list(range(1, 17))

        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_raw_request("simple_int8", "INT8", "wrong_specification"))
        assert (
            "failed to get model version from specified version string 'wrong_specification'"
            in str(caught.value)
        )
        both = _raw_request("simple", "INT32")
        both.raw_input_contents.append(COUNTING.ravel()[:8].tobytes())
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(both)
        assert (
            "contents field must not be specified when using raw_input_contents for 'INPUT0' "
            "for model 'simple'" in str(caught.value)
        )


def test_decoupled_repeat_streams_one_response_per_element(server: ServerProcess) -> None:
    values = np.arange(100, 110, dtype=np.int32)
    inputs = [
        grpcclient.InferInput("IN", [10], "INT32"),
        grpcclient.InferInput("DELAY", [10], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(values)
    inputs[1].set_data_from_numpy(np.full(10, 5, np.uint32))
    inputs[2].set_data_from_numpy(np.array([5], np.uint32))
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer(
            "repeat_int32", inputs, outputs=[grpcclient.InferRequestedOutput("OUT")]
        )
        received = [answers.get(timeout=30) for _ in values]
    for item in received:
        assert not isinstance(item, InferenceServerException), item
    assert [r.as_numpy("OUT").tolist() for r in received] == [[int(v)] for v in values]
    # Only the requested output comes back.
    assert all(r.as_numpy("IDX") is None for r in received)


def test_cuda_shared_memory_is_refused_clearly(server: ServerProcess) -> None:
    handle = base64.b64encode(bytes(64))
    http = httpclient.InferenceServerClient(server.http_url)
    rpc = grpcclient.InferenceServerClient(server.grpc_url)
    for client in (http, rpc):
        with pytest.raises(InferenceServerException) as caught:
            client.register_cuda_shared_memory("gpu_region", handle, 0, 64)
        assert "CUDA shared memory" in caught.value.message()
    # Without a CUDA device the server has no CUDA shared memory at all; with one, a handle
    # of zeros is one the CUDA runtime cannot open.
    without_cuda = CudaRuntimeIpc().unavailable_reason() is not None
    status = "UNIMPLEMENTED" if without_cuda else "INTERNAL"
    assert caught.value.status() == f"StatusCode.{status}"
    assert http.get_cuda_shared_memory_status() == []
    http.close()
    rpc.close()


@pytest.fixture(scope="module")
def explicit_server() -> Iterator[ServerProcess]:
    args = [
        "--model-repository",
        str(BUNDLED_REPOSITORY),
        "--model-control-mode=explicit",
        "--load-model=simple",
    ]
    with run_server(args) as srv:
        yield srv


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_control_load_override_and_unload(
    explicit_server: ServerProcess, protocol: str
) -> None:
    if protocol == "http":
        client: Any = httpclient.InferenceServerClient(explicit_server.http_url)
        index = client.get_model_repository_index()
    else:
        client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
        index = client.get_model_repository_index().models
    on_disk = [p for p in BUNDLED_REPOSITORY.iterdir() if (p / "config.pbtxt").exists()]
    assert len(index) == len(on_disk)

    client.load_model("simple")
    assert client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    assert "failed to load" in caught.value.message()
    client.load_model("simple", config='{"max_batch_size":"16"}')
    config = client.get_model_config("simple")
    assert (config["max_batch_size"] if protocol == "http" else config.config.max_batch_size) == 16

    with pytest.raises(InferenceServerException) as caught:
        client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
    assert caught.value.message().startswith("Invalid file path")
    assert client.is_server_live()

    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("wrong_model_name")
    assert "failed to load" in caught.value.message()
    # A load without an override goes back to the configuration on disk.
    client.load_model("simple")
    config = client.get_model_config("simple")
    assert (config["max_batch_size"] if protocol == "http" else config.config.max_batch_size) == 8
    client.close()
