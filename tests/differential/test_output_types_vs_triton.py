"""Outputs whose numpy type is not the configured one: Triton answers with the type the model
returned (FP64 where the config says FP32), on HTTP in JSON and binary and on gRPC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.differential.conftest import start_triton
from tests.differential.http_wire import comparable, send
from tests.harness import run_server
from tests.models import identity_config, write_python_model

pytestmark = pytest.mark.triton

_SOURCE = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", CONVERT)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

# model name -> (configured datatype, what execute returns)
MODELS = {
    "fp32_returns_fp64": ("FP32", "x.astype(np.float64)"),
    "int32_returns_int64": ("INT32", "x.astype(np.int64)"),
    "fp32_returns_int8": ("FP32", "x.astype(np.int8)"),
    "fp32_returns_bool": ("FP32", "x > 0"),
    "fp32_returns_fp16": ("FP32", "x.astype(np.float16)"),
    "fp32_returns_bytes": ("FP32", "np.full(x.shape, b'ab', dtype=object)"),
    "bytes_returns_int32": ("BYTES", "np.arange(x.size, dtype=np.int32).reshape(x.shape)"),
}
INPUTS = {"FP32": [1.5, -2.0], "INT32": [7, -3], "BYTES": ["a", "b"]}
CASES = sorted(MODELS)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repo = tmp_path_factory.mktemp("output_types")
    for name, (datatype, convert) in MODELS.items():
        config = identity_config(name, datatype, [-1], 8, backend="python")
        write_python_model(repo, name, _SOURCE.replace("CONVERT", convert), config)
    args = ["--model-repository", str(repo)]
    with run_server(args, services=("http", "grpc")) as ours, start_triton(repo) as theirs:
        yield {"ours": ours, "triton": theirs}


def _http(url: str, name: str, binary: bool) -> Any:
    datatype = MODELS[name][0]
    document = {
        "inputs": [
            {"name": "INPUT0", "datatype": datatype, "shape": [1, 2], "data": INPUTS[datatype]}
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": binary}}],
    }
    path = f"/v2/models/{name}/infer"
    return comparable(send(url, "POST", path, json.dumps(document).encode()), path)


def _grpc(url: str, name: str) -> Any:
    datatype = MODELS[name][0]
    if datatype == "BYTES":
        raw = b"".join(len(s).to_bytes(4, "little") + s.encode() for s in INPUTS[datatype])
    else:
        raw = np.array(INPUTS[datatype], dtype="<f4" if datatype == "FP32" else "<i4").tobytes()
    request = pb.ModelInferRequest(
        model_name=name,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype=datatype, shape=[1, 2])
        ],
        raw_input_contents=[raw],
    )
    with grpc.insecure_channel(url) as channel:
        try:
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()
    return (
        [(o.name, o.datatype, list(o.shape)) for o in response.outputs],
        list(response.raw_output_contents),
    )


@pytest.mark.parametrize("name", CASES)
def test_output_datatype_is_the_one_the_model_returned(servers: dict[str, Any], name: str) -> None:
    ours, theirs = servers["ours"], servers["triton"]
    for binary in (False, True):
        assert _http(ours.http_url, name, binary) == _http(theirs.http_url, name, binary)
    assert _grpc(ours.grpc_url, name) == _grpc(theirs.grpc_url, name)
