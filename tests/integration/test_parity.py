"""The same requests over HTTP and gRPC give the same answers and the same errors: both
front ends are thin codecs over one core."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shared_memory
from tritonclient.utils import InferenceServerException

from tests.harness import ServerProcess, run_server
from tests.models import ROOT, copy_bundled_model, write_onnx_identity

# gRPC status -> the HTTP status Triton gives the same error code.
HTTP_OF_GRPC = {
    "StatusCode.INVALID_ARGUMENT": "400",
    "StatusCode.NOT_FOUND": "404",
    "StatusCode.UNAVAILABLE": "503",
    "StatusCode.UNIMPLEMENTED": "501",
    "StatusCode.INTERNAL": "500",
    "StatusCode.ALREADY_EXISTS": "400",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("parity_repo")
    copy_bundled_model(repo, "simple")
    copy_bundled_model(repo, "identity_fp32")
    copy_bundled_model(repo, "digits_classifier")
    write_onnx_identity(
        repo, "identity_bytes", "BYTES", (-1,), max_batch_size=0, dynamic_batching=False
    )
    shutil.copytree(ROOT / "tests" / "python_models" / "py_repeat", repo / "py_repeat")
    with run_server(["--model-repository", str(repo), "--allow-client-shm=true"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[dict[str, Any]]:
    pair = {
        "http": httpclient.InferenceServerClient(server.http_url),
        "grpc": grpcclient.InferenceServerClient(server.grpc_url),
    }
    yield pair
    for c in pair.values():
        c.close()


Build = Callable[[Any], tuple[str, list[Any], list[Any] | None, dict[str, Any]]]


def tensor(mod: Any, name: str, array: np.ndarray, datatype: str) -> Any:
    item = mod.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def ints(shape: tuple[int, ...], start: int = 0) -> np.ndarray:
    return (np.arange(int(np.prod(shape)), dtype=np.int32) + start).reshape(shape)


def simple(shape: tuple[int, ...] = (1, 16), datatype: str = "INT32", **extra: Any) -> Build:
    def build(mod: Any) -> tuple[str, list[Any], list[Any] | None, dict[str, Any]]:
        array = ints(shape) if datatype == "INT32" else ints(shape).astype(np.float32)
        inputs = [
            tensor(mod, "INPUT0", array, datatype),
            tensor(mod, "INPUT1", array + 1, datatype),
        ]
        return "simple", inputs, None, extra

    return build


def only(
    model: str,
    name: str,
    array: np.ndarray,
    datatype: str,
    outputs: list[tuple[str, int]] | None = None,
    **extra: Any,
) -> Build:
    def build(mod: Any) -> tuple[str, list[Any], list[Any] | None, dict[str, Any]]:
        wanted = (
            None
            if outputs is None
            else [mod.InferRequestedOutput(n, class_count=k) for n, k in outputs]
        )
        return model, [tensor(mod, name, array, datatype)], wanted, extra

    return build


ANSWERS: dict[str, Build] = {
    "simple_batch_1": simple(),
    "simple_batch_8": simple((8, 16)),
    "identity_fp32": only(
        "identity_fp32", "INPUT0", np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4), "FP32"
    ),
    "identity_bytes": only(
        "identity_bytes", "INPUT0", np.array([b"a", b"", "\u00fc".encode()], dtype=object), "BYTES"
    ),
    "classification": only(
        "identity_fp32",
        "INPUT0",
        np.array([[0.5, 3.0, -1.0, 2.0]], dtype=np.float32),
        "FP32",
        [("OUTPUT0", 2)],
    ),
    "with_id_and_version": simple(request_id="abc", model_version="1"),
}

ERRORS: dict[str, Build] = {
    "unknown_model": only("no_such_model", "INPUT0", np.ones((1, 1), np.float32), "FP32"),
    "unknown_version": simple(model_version="9"),
    "wrong_datatype": simple(datatype="FP32"),
    "wrong_shape": simple((1, 15)),
    "batch_too_large": simple((9, 16)),
    "missing_input": only("simple", "INPUT0", ints((1, 16)), "INT32"),
    "unexpected_input": only("identity_fp32", "BOGUS", np.ones((1, 1), np.float32), "FP32"),
    "unexpected_output": only(
        "identity_fp32", "INPUT0", np.ones((1, 1), np.float32), "FP32", [("NOPE", 0)]
    ),
    "decoupled_on_infer": only("py_repeat", "IN", ints((2,)), "INT32"),
    "no_batch_dim": only("identity_fp32", "INPUT0", np.ones(3, np.float32), "FP32"),
}


def outcome(c: Any, mod: Any, build: Build) -> tuple[str, Any]:
    model, inputs, outputs, extra = build(mod)
    try:
        result = c.infer(model, inputs, outputs=outputs, **extra)
    except InferenceServerException as exc:
        status = exc.status()
        return "error", (HTTP_OF_GRPC.get(status, status), exc.message())
    response = result.get_response(as_json=True) if mod is grpcclient else result.get_response()
    names = [o["name"] for o in response["outputs"]]
    return "ok", (
        response.get("id", ""),
        response["model_version"],
        {n: result.as_numpy(n) for n in names},
    )


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_same_answers(clients: dict[str, Any], case: str) -> None:
    kind_h, (id_h, version_h, arrays_h) = outcome(clients["http"], httpclient, ANSWERS[case])
    kind_g, (id_g, version_g, arrays_g) = outcome(clients["grpc"], grpcclient, ANSWERS[case])
    assert kind_h == kind_g == "ok"
    assert (id_h, version_h) == (id_g, version_g)
    assert sorted(arrays_h) == sorted(arrays_g)
    for name, array in arrays_h.items():
        assert array.dtype == arrays_g[name].dtype and array.shape == arrays_g[name].shape
        np.testing.assert_array_equal(array, arrays_g[name])


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_same_errors(clients: dict[str, Any], case: str) -> None:
    over_http = outcome(clients["http"], httpclient, ERRORS[case])
    over_grpc = outcome(clients["grpc"], grpcclient, ERRORS[case])
    assert over_http[0] == "error", over_http
    assert over_http == over_grpc


def test_same_metadata_and_config(clients: dict[str, Any]) -> None:
    for model in ("simple", "identity_bytes", "py_repeat"):
        http_meta = clients["http"].get_model_metadata(model)
        grpc_meta = clients["grpc"].get_model_metadata(model, as_json=True)
        for side in ("inputs", "outputs"):
            for tensor_h, tensor_g in zip(http_meta[side], grpc_meta[side], strict=True):
                assert (
                    tensor_h["name"] == tensor_g["name"]
                    and tensor_h["datatype"] == tensor_g["datatype"]
                )
                assert tensor_h["shape"] == [int(d) for d in tensor_g["shape"]]
        assert (http_meta["name"], http_meta["versions"], http_meta["platform"]) == (
            grpc_meta["name"],
            grpc_meta["versions"],
            grpc_meta["platform"],
        )
        http_config = clients["http"].get_model_config(model)
        grpc_config = clients["grpc"].get_model_config(model, as_json=True)["config"]
        assert http_config["name"] == grpc_config["name"]
        assert http_config.get("max_batch_size", 0) == grpc_config.get("max_batch_size", 0)
        assert [i["name"] for i in http_config["input"]] == [
            i["name"] for i in grpc_config["input"]
        ]


def test_same_shared_memory_answers(clients: dict[str, Any]) -> None:
    key = f"/parity_{uuid.uuid4().hex[:12]}"
    handle = shared_memory.create_shared_memory_region("parity", key, 256)
    try:
        shared_memory.set_shared_memory_region(handle, [ints((1, 16)), ints((1, 16), 100)])
        seen: dict[str, list[Any]] = {}
        for protocol, mod in (("http", httpclient), ("grpc", grpcclient)):
            c = clients[protocol]
            c.register_system_shared_memory("r", key, 256)
            answers: list[Any] = []
            for offsets, size in (((0, 64), 64), ((200, 64), 64), ((0, 64), 60), ((250, 0), 64)):
                inputs = [
                    mod.InferInput("INPUT0", [1, 16], "INT32"),
                    mod.InferInput("INPUT1", [1, 16], "INT32"),
                ]
                inputs[0].set_shared_memory("r", size, offsets[0])
                inputs[1].set_shared_memory("r", 64, offsets[1])
                out = mod.InferRequestedOutput("OUTPUT0")
                out.set_shared_memory("r", 64, 128)
                try:
                    c.infer("simple", inputs, outputs=[out])
                    answers.append(
                        shared_memory.get_contents_as_numpy(
                            handle, np.int32, [16], offset=128
                        ).tolist()
                    )
                except InferenceServerException as exc:
                    answers.append((HTTP_OF_GRPC.get(exc.status(), exc.status()), exc.message()))
            try:
                c.register_system_shared_memory("r", key, 16)
            except InferenceServerException as exc:
                answers.append((HTTP_OF_GRPC.get(exc.status(), exc.status()), exc.message()))
            c.unregister_system_shared_memory("r")
            try:
                c.get_system_shared_memory_status("r")
            except InferenceServerException as exc:
                answers.append((HTTP_OF_GRPC.get(exc.status(), exc.status()), exc.message()))
            seen[protocol] = answers
        assert seen["http"] == seen["grpc"]
        assert seen["http"][0] == (ints((16,)) + ints((16,), 100)).tolist()
        assert all(isinstance(a, tuple) for a in seen["http"][1:])
    finally:
        shared_memory.destroy_shared_memory_region(handle)
