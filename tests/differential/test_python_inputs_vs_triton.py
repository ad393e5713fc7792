"""A Python model that changes its inputs in place (``x /= 2``), side by side with
tritonserver, whose models get writable inputs over every protocol: JSON, binary HTTP and
gRPC, small tensors and large ones (a large gRPC request's inputs are read where they
arrived, a compressed one's from the inflated bytes), and system shared memory, whose
region the client reads again afterwards and must find unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shared_memory

from tests.differential.conftest import start_triton
from tests.harness import run_server
from tests.models import model_config, write_python_model

pytestmark = pytest.mark.triton

_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            x /= 2
            x += 1
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]))
        return responses
"""

# Passes its input through; the caller sends it its own input by BLS, changes the answer in
# place, and adds its input, which must be unchanged.
_PASS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]
            )
            for r in requests
        ]
"""
_CALLER = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN")
            answer = pb_utils.InferenceRequest(
                model_name="py_pass", inputs=[x], requested_output_names=["OUT"]
            ).exec()
            y = pb_utils.get_output_tensor_by_name(answer, "OUT").as_numpy()
            y += 100
            out = pb_utils.Tensor("OUT", y + x.as_numpy())
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

SIZES = (4, 40_000)  # 16 bytes, and 160 KB: past the size read in place


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repo = tmp_path_factory.mktemp("inputs")
    config = model_config(
        "py_in_place",
        backend="python",
        inputs=[("IN", "FP32", [-1])],
        outputs=[("OUT", "FP32", [-1])],
    )
    write_python_model(repo, "py_in_place", _MODEL, config)
    for name, source in (("py_pass", _PASS), ("py_caller", _CALLER)):
        write_python_model(repo, name, source, config.replace("py_in_place", name))
    args = ["--model-repository", str(repo), "--allow-client-shm=true"]
    with run_server(args, services=("http", "grpc")) as ours, start_triton(repo) as theirs:
        yield {"ours": ours, "triton": theirs}


def _values(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float32).reshape(1, size) * 2


def _http(url: str, size: int, binary: bool) -> Any:
    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("IN", [1, size], "FP32")
        tensor.set_data_from_numpy(_values(size), binary_data=binary)
        return client.infer("py_in_place", [tensor]).as_numpy("OUT")


def _grpc(url: str, size: int, compression: str | None) -> Any:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("IN", [1, size], "FP32")
        tensor.set_data_from_numpy(_values(size))
        result = client.infer("py_in_place", [tensor], compression_algorithm=compression)
        return result.as_numpy("OUT")


@pytest.mark.parametrize("size", SIZES)
def test_models_change_their_inputs_in_place(servers: dict[str, Any], size: int) -> None:
    expected = _values(size) / 2 + 1
    for name, server in servers.items():
        answers = [
            _http(server.http_url, size, binary=True),
            _grpc(server.grpc_url, size, compression=None),
            _grpc(server.grpc_url, size, compression="gzip"),
        ]
        if size < 1000:
            answers.append(_http(server.http_url, size, binary=False))
        for answer in answers:
            np.testing.assert_array_equal(answer, expected, err_msg=name)


def test_a_shared_memory_input_is_the_models_own_copy(servers: dict[str, Any]) -> None:
    values = _values(4)
    expected = values / 2 + 1
    for name, server in servers.items():
        key = f"/py_in_place_{name}_{uuid.uuid4().hex[:8]}"
        region = shared_memory.create_shared_memory_region("in_place", key, values.nbytes)
        try:
            shared_memory.set_shared_memory_region(region, [values])
            with httpclient.InferenceServerClient(server.http_url) as client:
                client.register_system_shared_memory("in_place", key, values.nbytes)
                try:
                    for _ in range(2):  # the second request reads the region again
                        tensor = httpclient.InferInput("IN", [1, 4], "FP32")
                        tensor.set_shared_memory("in_place", values.nbytes)
                        answer = client.infer("py_in_place", [tensor]).as_numpy("OUT")
                        np.testing.assert_array_equal(answer, expected, err_msg=name)
                finally:
                    client.unregister_system_shared_memory("in_place")
            left = shared_memory.get_contents_as_numpy(region, np.float32, [1, 4])
            np.testing.assert_array_equal(left, values, err_msg=name)
        finally:
            shared_memory.destroy_shared_memory_region(region)


def test_the_two_sides_of_a_bls_call_do_not_share_memory(servers: dict[str, Any]) -> None:
    values = _values(4)
    for name, server in servers.items():
        for binary in (False, True):
            with httpclient.InferenceServerClient(server.http_url) as client:
                tensor = httpclient.InferInput("IN", [1, 4], "FP32")
                tensor.set_data_from_numpy(values, binary_data=binary)
                answer = client.infer("py_caller", [tensor]).as_numpy("OUT")
            np.testing.assert_array_equal(answer, 2 * values + 100, err_msg=name)
