"""The Python backend over HTTP: Triton-style model.py files served unmodified."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server.devices import DeviceLayer
from tests.harness import ServerProcess, run_server
from tests.models import bf16_client_array, model_config, write_python_model
from tests.python_models import build_repository


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = build_repository(tmp_path_factory.mktemp("python_repo"))
    with run_server(["--model-repository", str(repo)], services=("http",)) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server.http_url, concurrency=8) as c:
        yield c


def _input(name: str, array: np.ndarray, datatype: str) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_bundled_add_sub_python(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, dtype=np.float32)
    result = client.infer(
        "add_sub_python", [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert client.get_model_metadata("add_sub_python")["platform"] == "python"


def test_batched_requests_reach_execute_together(client: httpclient.InferenceServerClient) -> None:
    # preferred_batch_size 4 with a long queue delay: four concurrent requests form one batch,
    # and the model sees them as one list of four requests.
    rng = np.random.default_rng(3)
    pending = []
    for _ in range(4):
        a = rng.standard_normal((1, 4)).astype(np.float32)
        b = rng.standard_normal((1, 4)).astype(np.float32)
        inputs = [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")]
        pending.append((a, b, client.async_infer("py_add_sub", inputs)))
    for a, b, handle in pending:
        result = handle.get_result()
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        assert result.as_numpy("REQUESTS").tolist() == [[4]]


def test_model_reusing_its_output_buffer_answers_each_request(
    client: httpclient.InferenceServerClient,
) -> None:
    # The model overwrites one kept buffer at every execution; answers are encoded after
    # execute returned, so each must be a copy taken then, as Triton's are.
    pending = []
    for k in range(200):
        values = np.full(1024, k, dtype=np.float32)
        tensor = httpclient.InferInput("IN", [1024], "FP32")
        tensor.set_data_from_numpy(values, binary_data=k % 2 == 0)
        pending.append((k, client.async_infer("py_reuse_buffer", [tensor])))
    wrong = [k for k, handle in pending if not (handle.get_result().as_numpy("OUT") == k).all()]
    assert wrong == []


def test_strings_parameters_and_initialize_args(client: httpclient.InferenceServerClient) -> None:
    text = np.array([b"hello", "w\u00f6rld".encode()], dtype=np.object_)
    result = client.infer(
        "py_strings",
        [_input("TEXT", text, "BYTES")],
        request_id="req-7",
        parameters={"flavour": "mint", "count": 3},
    )
    assert result.as_numpy("UPPER").tolist() == [b"HELLO", "W\u00d6RLD".encode()]
    assert result.as_numpy("LENGTHS").tolist() == [5, 6]
    info = json.loads(result.as_numpy("INFO")[0])
    assert info["request_id"] == "req-7"
    assert info["parameters"] == {"flavour": "mint", "count": 3}
    assert info["requested_output_names"] == ["INFO", "LENGTHS", "UPPER"]
    assert info["input_type"] == 13  # TRITONSERVER_TYPE_BYTES
    assert info["args"] == {
        "keys": [
            "model_config",
            "model_instance_device_id",
            "model_instance_kind",
            "model_instance_name",
            "model_name",
            "model_repository",
            "model_version",
        ],
        "model_name": "py_strings",
        "model_version": "1",
        # The model leaves placement to KIND_AUTO: a GPU where the server sees one.
        "model_instance_kind": "GPU" if DeviceLayer().gpus() else "CPU",
        "model_instance_name": info["args"]["model_instance_name"],
        "model_instance_device_id": "0",
        "model_repository_basename": "py_strings",
        "config_name": "py_strings",
    }
    assert info["args"]["model_instance_name"].startswith("py_strings")


def test_requested_output_subset(client: httpclient.InferenceServerClient) -> None:
    text = np.array([b"abc"], dtype=np.object_)
    result = client.infer(
        "py_strings",
        [_input("TEXT", text, "BYTES")],
        outputs=[httpclient.InferRequestedOutput("INFO")],
    )
    assert json.loads(result.as_numpy("INFO")[0])["requested_output_names"] == ["INFO"]
    assert result.as_numpy("UPPER") is None


@pytest.mark.parametrize("model", ["py_bls", "py_bls_async"])
def test_bls_calls_onnx_model(client: httpclient.InferenceServerClient, model: str) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 7, dtype=np.int32)
    result = client.infer(model, [_input("INPUT0", a, "INT32"), _input("INPUT1", b, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    expected = a - b if model == "py_bls" else b - a
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), expected)
    # The inner calls went through the ONNX model's own scheduler and statistics.
    stats = client.get_inference_statistics("onnx_add_sub")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 1


def test_bls_error_reaches_the_caller(client: httpclient.InferenceServerClient) -> None:
    a = np.zeros((1, 16), dtype=np.int32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            "py_bls",
            [_input("INPUT0", a, "INT32"), _input("INPUT1", a, "INT32")],
            parameters={"target": "no_such_model"},
        )
    assert caught.value.status() == "500"
    assert "TritonModelException" in caught.value.message()
    assert "no_such_model" in caught.value.message()


def test_bls_streams_from_decoupled_model(client: httpclient.InferenceServerClient) -> None:
    values = np.array([4, 8, 15], dtype=np.int32)
    result = client.infer("py_bls_stream", [_input("IN", values, "INT32")])
    assert result.as_numpy("COLLECTED").tolist() == values.tolist()
    # One response per value, then the empty final response.
    assert result.as_numpy("RESPONSES").tolist() == [len(values) + 1]


def test_exception_fails_only_its_request(client: httpclient.InferenceServerClient) -> None:
    def call(value: int) -> httpclient.InferResult:
        return client.infer("py_raise", [_input("IN", np.array([value], dtype=np.int32), "INT32")])

    with pytest.raises(InferenceServerException) as caught:
        call(-3)
    assert caught.value.status() == "500"
    message = caught.value.message()
    assert message.startswith("Failed to process the request(s) for model 'py_raise_0")
    assert "message: ValueError: negative input -3" in message
    assert "model.py(" in message and "): execute" in message
    with pytest.raises(InferenceServerException) as caught:
        call(0)
    assert caught.value.status() == "500"
    assert caught.value.message() == "zero is not accepted"
    assert call(5).as_numpy("OUT").tolist() == [5]


def test_autocompleted_config(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("py_autocomplete")
    assert config["max_batch_size"] == 4
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [-1])
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [-1])
    ]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    x = np.array([[1.5, -2.0, 3.0]], dtype=np.float32)
    result = client.infer("py_autocomplete", [_input("INPUT0", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)


def test_decoupled_model_rejects_unary_infer(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("py_repeat", [_input("IN", np.array([1], dtype=np.int32), "INT32")])
    assert caught.value.status() == "501"
    assert "decoupled transaction policy" in caught.value.message()


def test_hanging_model_does_not_block_the_server(
    server: ServerProcess, client: httpclient.InferenceServerClient
) -> None:
    outcome: dict[str, object] = {}

    def sleep() -> None:
        with httpclient.InferenceServerClient(server.http_url, network_timeout=60) as own:
            result = own.infer(
                "py_sleep", [_input("SECONDS", np.array([4.0], dtype=np.float32), "FP32")]
            )
            outcome["slept"] = result.as_numpy("SLEPT").tolist()

    sleeper = threading.Thread(target=sleep)
    sleeper.start()
    server.wait_for_log(r"py_sleep: sleeping 4\.0 s")
    # The model holds its instance; probes, metadata and other models answer meanwhile.
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("py_sleep")
    text = np.array([b"ok"], dtype=np.object_)
    assert client.infer("py_strings", [_input("TEXT", text, "BYTES")]).as_numpy(
        "UPPER"
    ).tolist() == [b"OK"]
    assert sleeper.is_alive()
    sleeper.join(30)
    assert outcome["slept"] == [4.0]


def test_finalize_runs_at_unload(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "repo", ["py_add_sub"], bls_target=False, bundled=False)
    with run_server(["--model-repository", str(repo)], services=("http",)) as srv:
        srv.stop()
        assert "py_add_sub finalized" in srv.log()


DLPACK_BF16_MODEL = """
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = from_dlpack(pb_utils.get_input_tensor_by_name(request, "IN").to_dlpack())
            doubled = x * 2
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor.from_dlpack("DOUBLED", to_dlpack(doubled)),
                pb_utils.Tensor.from_dlpack("WIDENED", doubled.float()),
            ]))
        return responses
"""


def test_bf16_tensors_through_dlpack(tmp_path: Path) -> None:
    # Triton's way to BF16 in a Python model: numpy has no such type, DLPack and torch do.
    config = model_config(
        "py_bf16",
        backend="python",
        max_batch_size=0,
        inputs=[("IN", "BF16", [4])],
        outputs=[("DOUBLED", "BF16", [4]), ("WIDENED", "FP32", [4])],
    )
    write_python_model(tmp_path, "py_bf16", DLPACK_BF16_MODEL, config)
    given = np.array([1.5, -3.0, 0.0078125, 1000.0], dtype=np.float32)  # exact in BF16
    with run_server(["--model-repository", str(tmp_path)]) as srv:
        for module, url in ((httpclient, srv.http_url), (grpcclient, srv.grpc_url)):
            client = module.InferenceServerClient(url)
            tensor = module.InferInput("IN", [4], "BF16")
            tensor.set_data_from_numpy(bf16_client_array(given))
            result = client.infer("py_bf16", [tensor])
            output = result.get_output("DOUBLED")
            assert (output["datatype"] if module is httpclient else output.datatype) == "BF16"
            assert result.as_numpy("DOUBLED").astype(np.float32).tolist() == (given * 2).tolist()
            assert result.as_numpy("WIDENED").dtype == np.float32
            assert result.as_numpy("WIDENED").tolist() == (given * 2).tolist()
            client.close()
