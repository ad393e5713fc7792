"""The Python backend over gRPC: unary calls, and decoupled models over ModelStreamInfer."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.harness import ServerProcess, run_server
from tests.models import write_python_probe
from tests.python_models import build_repository

STREAM_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = build_repository(tmp_path_factory.mktemp("python_grpc_repo"))
    with run_server(["--model-repository", str(repo)], services=("http", "grpc")) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


class Stream:
    """Collects a stream's callbacks; ``next()`` waits for the next one."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client
        self.items: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.items.put((result, error)))

    def next(self) -> tuple[Any, Any]:
        return self.items.get(timeout=STREAM_TIMEOUT)

    def close(self) -> None:
        self.client.stop_stream()


@pytest.fixture()
def stream(client: grpcclient.InferenceServerClient) -> Iterator[Stream]:
    collector = Stream(client)
    try:
        yield collector
    finally:
        collector.close()


def _final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def test_add_sub_python_over_grpc(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    b = np.ones((1, 4), dtype=np.float32)
    result = client.infer(
        "add_sub_python", [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_http_and_grpc_agree(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    text = np.array([b"same", b"answer"], dtype=np.object_)
    via_grpc = client.infer("py_strings", [_input("TEXT", text, "BYTES")], request_id="p")
    with httpclient.InferenceServerClient(server.http_url) as http:
        tensor = httpclient.InferInput("TEXT", [2], "BYTES")
        tensor.set_data_from_numpy(text)
        via_http = http.infer("py_strings", [tensor], request_id="p")
    for name in ("UPPER", "LENGTHS", "INFO"):
        assert via_grpc.as_numpy(name).tolist() == via_http.as_numpy(name).tolist()


def test_exception_over_grpc(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("py_raise", [_input("IN", np.array([-1], dtype=np.int32), "INT32")])
    assert caught.value.status() == "StatusCode.INTERNAL"
    assert "message: ValueError: negative input -1" in caught.value.message()


def test_bls_async_over_grpc(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    result = client.infer(
        "py_bls_async", [_input("INPUT0", a, "INT32"), _input("INPUT1", b, "INT32")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), b - a)


def test_decoupled_unary_is_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("py_repeat", [_input("IN", np.array([1], dtype=np.int32), "INT32")])
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "decoupled transaction policy" in caught.value.message()


def test_decoupled_stream(stream: Stream) -> None:
    values = np.array([3, 1, -2, 9], dtype=np.int32)
    stream.client.async_stream_infer(
        "py_repeat",
        [_input("IN", values, "INT32")],
        request_id="r1",
        enable_empty_final_response=True,
    )
    outs, errors = [], []
    while True:
        result, error = stream.next()
        if error is not None:
            errors.append(error.message())
            continue
        assert result.get_response().id == "r1"
        if _final(result):
            assert result.as_numpy("OUT") is None  # the empty final response
            break
        outs.append((int(result.as_numpy("OUT")[0]), int(result.as_numpy("IDX")[0])))
    assert outs == [(3, 0), (1, 1), (9, 3)]
    assert errors == ["negative value -2"]


def test_stream_from_a_reused_buffer_keeps_each_response(stream: Stream) -> None:
    # The model refills one buffer right after each send: every response must keep what
    # the buffer held when it was sent.
    count = 100
    stream.client.async_stream_infer(
        "py_stream_reuse_buffer", [_input("N", np.array([count], dtype=np.int32), "INT32")]
    )
    firsts = []
    for _ in range(count):
        result, error = stream.next()
        assert error is None
        out = result.as_numpy("OUT")
        assert (out == out[0]).all()
        firsts.append(int(out[0]))
    assert firsts == list(range(count))


def test_model_reusing_its_output_buffer_over_grpc(
    client: grpcclient.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for k in range(200):
        client.async_infer(
            "py_reuse_buffer",
            [_input("IN", np.full(1024, k, dtype=np.float32), "FP32")],
            callback=lambda result, error, k=k: answers.put((k, result, error)),
        )
    wrong = []
    for _ in range(200):
        k, result, error = answers.get(timeout=STREAM_TIMEOUT)
        assert error is None
        if not (result.as_numpy("OUT") == k).all():
            wrong.append(k)
    assert wrong == []


@pytest.mark.parametrize(("size", "copied"), [(16, True), (200_000, False)])
def test_large_inputs_reach_the_model_without_a_copy(
    server: ServerProcess, size: int, copied: bool
) -> None:
    # A small request's raw input is protobuf's read-only bytes, copied for the model; a
    # large one's is read where it arrived, in memory the model may write in.
    values = np.ones(size, dtype=np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer("py_input_memory", [_input("IN", values, "FP32")])
    assert result.as_numpy("COPIED").tolist() == [copied]
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("IN", [size], "FP32")
        tensor.set_data_from_numpy(values, binary_data=True)
        result = client.infer("py_input_memory", [tensor])
    assert result.as_numpy("COPIED").tolist() == [copied]


def test_stream_of_ordinary_models_keeps_order(stream: Stream) -> None:
    words = [b"one", b"two", b"three", b"four"]
    for index, word in enumerate(words):
        stream.client.async_stream_infer(
            "py_strings",
            [_input("TEXT", np.array([word], dtype=np.object_), "BYTES")],
            request_id=str(index),
        )
    stream.client.async_stream_infer(
        "py_raise", [_input("IN", np.array([0], dtype=np.int32), "INT32")]
    )
    for index, word in enumerate(words):
        result, error = stream.next()
        assert error is None
        assert result.get_response().id == str(index)
        assert result.as_numpy("UPPER").tolist() == [word.upper()]
        assert json.loads(result.as_numpy("INFO")[0])["request_id"] == str(index)
    _, error = stream.next()
    assert error is not None and error.message() == "zero is not accepted"


def test_two_decoupled_requests_interleave_on_one_stream(stream: Stream) -> None:
    for request_id, values in (("a", [10, 11]), ("b", [20, 21, 22])):
        stream.client.async_stream_infer(
            "py_repeat",
            [_input("IN", np.array(values, dtype=np.int32), "INT32")],
            request_id=request_id,
        )
    received: dict[str, list[int]] = {"a": [], "b": []}
    while sum(len(v) for v in received.values()) < 5:
        result, error = stream.next()
        assert error is None
        received[result.get_response().id].append(int(result.as_numpy("OUT")[0]))
    assert received == {"a": [10, 11], "b": [20, 21, 22]}


_PARAMETERS_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", np.array([1], dtype=np.int32))],
                parameters={"label": "cat", "count": 3, "sure": True},
            )
            for _ in requests
        ]
"""


def test_response_parameters_a_model_sets_reach_the_client(tmp_path: Path) -> None:
    write_python_probe(tmp_path, "py_parameters", _PARAMETERS_MODEL, output="INT32")
    with run_server(["--model-repository", str(tmp_path)], services=("http", "grpc")) as srv:
        with httpclient.InferenceServerClient(srv.http_url) as client:
            tensor = httpclient.InferInput("IN", [1], "INT32")
            tensor.set_data_from_numpy(np.array([0], dtype=np.int32))
            answer = client.infer("py_parameters", [tensor]).get_response()
        assert answer["parameters"] == {"label": "cat", "count": 3, "sure": True}
        with grpcclient.InferenceServerClient(srv.grpc_url) as client:
            values = np.array([0], dtype=np.int32)
            response = client.infer("py_parameters", [_input("IN", values, "INT32")])
        parameters = response.get_response().parameters
        assert parameters["label"].string_param == "cat"
        assert parameters["count"].int64_param == 3
        assert parameters["sure"].bool_param is True
