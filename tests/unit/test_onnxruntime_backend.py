"""The ONNX Runtime backend without a server: BF16 in and out through OrtValues, and BYTES
that onnxruntime's string tensors cannot carry failing only their own request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from server.backends.base import InstanceSpec, Timing
from server.backends.onnxruntime import OnnxRuntimeBackend
from server.errors import Code, ServerError
from server.repository.config import load_model_config
from server.repository.view import build_view
from server.tensors import NUMPY_DTYPES, from_buffer
from server.types import InferInput, InferRequest, RequestedOutput
from tests import models

CPU = InstanceSpec("m_0_0", "m_0", "CPU")
BF16 = NUMPY_DTYPES["BF16"]


def _load(repo: Path, name: str):  # type: ignore[no-untyped-def]
    backend = OnnxRuntimeBackend()
    model_dir = repo / name
    config = load_model_config(
        model_dir, name, autocomplete=lambda c, d: backend.autocomplete(c, d, d / "1")
    )
    view = build_view(config, "1", {})
    return backend.load(config, view, model_dir / "1", CPU)


def _request(*inputs: InferInput, outputs: list[str] | None = None) -> InferRequest:
    batch = inputs[0].shape[0]
    wanted = None if outputs is None else [RequestedOutput(n, {}) for n in outputs]
    return InferRequest("m", inputs=list(inputs), outputs=wanted, batch_size=batch)


def _bf16(values: list[float]) -> np.ndarray:
    # The wire form: the top half of each float32, as tritonclient sends it.
    bits = (np.asarray(values, np.float32).view(np.uint32) >> 16).astype("<u2")
    return from_buffer(bits.tobytes(), "BF16", (1, len(values)), "IN")


def test_bf16_identity_keeps_every_bit(tmp_path: Path) -> None:
    models.write_onnx_identity(tmp_path, "id_bf16", "BF16", [-1], 8)
    instance = _load(tmp_path, "id_bf16")
    first, second = _bf16([1.5, -2.0, 3.25]), _bf16([0.0, -0.0, 65280.0])
    results = instance.execute(
        [
            _request(InferInput("INPUT0", "BF16", (1, 3), first)),
            _request(InferInput("INPUT0", "BF16", (1, 3), second)),
        ],
        Timing(),
    )
    for sent, result in zip((first, second), results, strict=True):
        assert isinstance(result, dict)
        out = result["OUTPUT0"]
        assert out.dtype == BF16 and out.shape == (1, 3)
        assert out.tobytes() == sent.tobytes()


def test_bf16_in_float_out_and_float_in_bf16_out(tmp_path: Path) -> None:
    # Casts both ways: BF16 only on the input side keeps the plain run, BF16 only on the
    # output side goes through OrtValues with an ordinary numpy input.
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["A"], ["A_FLOAT"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["F"], ["F_BF16"], to=TensorProto.BFLOAT16),
        ],
        "casts",
        [
            helper.make_tensor_value_info("A", TensorProto.BFLOAT16, ["b", 2]),
            helper.make_tensor_value_info("F", TensorProto.FLOAT, ["b", 2]),
        ],
        [
            helper.make_tensor_value_info("A_FLOAT", TensorProto.FLOAT, ["b", 2]),
            helper.make_tensor_value_info("F_BF16", TensorProto.BFLOAT16, ["b", 2]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=models.ONNX_IR_VERSION
    )
    onnx.checker.check_model(model)
    models.write_onnx_model(tmp_path, "casts", model)
    (tmp_path / "casts" / "config.pbtxt").write_text("max_batch_size: 4\n")
    instance = _load(tmp_path, "casts")
    inputs = (
        InferInput("A", "BF16", (1, 2), _bf16([0.5, -7.0])),
        InferInput("F", "FP32", (1, 2), np.array([[1.0, -3.5]], np.float32)),
    )
    (only_float,) = instance.execute([_request(*inputs, outputs=["A_FLOAT"])], Timing())
    assert isinstance(only_float, dict) and list(only_float) == ["A_FLOAT"]
    np.testing.assert_array_equal(only_float["A_FLOAT"], [[0.5, -7.0]])
    (both,) = instance.execute([_request(*inputs)], Timing())
    assert isinstance(both, dict)
    np.testing.assert_array_equal(both["A_FLOAT"], [[0.5, -7.0]])
    assert both["F_BF16"].dtype == BF16
    np.testing.assert_array_equal(both["F_BF16"].astype(np.float32), [[1.0, -3.5]])


def _bytes_request(*items: bytes) -> InferRequest:
    data = np.empty((1, len(items)), dtype=object)
    data[0, :] = list(items)
    return _request(InferInput("INPUT0", "BYTES", data.shape, data))


def test_non_utf8_bytes_fail_only_their_request(tmp_path: Path) -> None:
    models.write_onnx_identity(tmp_path, "id_bytes", "BYTES", [-1], 8)
    instance = _load(tmp_path, "id_bytes")
    requests = [
        _bytes_request("caf\u00e9".encode(), b"a\x00b"),
        _bytes_request(b"ok", b"\x00\xff"),
        _bytes_request(b"", b"z"),
        _bytes_request(b"\xc3", b"fine"),
    ]
    results = instance.execute(requests, Timing())
    assert isinstance(results[0], dict) and isinstance(results[2], dict)
    # onnxruntime hands strings back as str; the codecs send them as UTF-8.
    assert results[0]["OUTPUT0"].tolist() == [["caf\u00e9", "a\x00b"]]
    assert results[2]["OUTPUT0"].tolist() == [["", "z"]]
    for result, index, byte in ((results[1], 1, 1), (results[3], 0, 0)):
        assert isinstance(result, ServerError) and result.code == Code.INVALID_ARG
        assert result.message.startswith(
            f"input 'INPUT0' of model 'id_bytes': element {index} is not valid UTF-8 ("
        )
        assert f"at byte {byte})" in result.message


def test_non_utf8_bytes_alone_fail_without_running(tmp_path: Path) -> None:
    models.write_onnx_identity(tmp_path, "id_bytes", "BYTES", [-1], 8)
    instance = _load(tmp_path, "id_bytes")
    timing = Timing()
    (result,) = instance.execute([_bytes_request(b"\xff")], timing)
    assert isinstance(result, ServerError) and "element 0 is not valid UTF-8" in result.message
    assert timing.infer_end_ns == 0


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BOOL"])
def test_ordinary_models_do_not_take_the_ort_value_path(tmp_path: Path, datatype: str) -> None:
    models.write_onnx_identity(tmp_path, "m", datatype, [-1], 8)
    instance = _load(tmp_path, "m")

    def refuse(*_args: object) -> None:
        raise AssertionError("run_with_ort_values used for a model without BF16")

    instance._session.run_with_ort_values = refuse  # type: ignore[attr-defined]
    data = models.sample_array(datatype, (1, 4))
    (result,) = instance.execute([_request(InferInput("INPUT0", datatype, (1, 4), data))], Timing())
    assert isinstance(result, dict)
    np.testing.assert_array_equal(result["OUTPUT0"], data)


def test_cpu_sessions_may_run_short_batches_on_the_event_loop(tmp_path: Path) -> None:
    models.write_onnx_identity(tmp_path, "m", "FP32", [-1], 8)
    assert _load(tmp_path, "m").short_runs_inline is True


def test_the_cuda_probe_model_is_an_identity_over_one_float() -> None:
    from server.backends.onnxruntime import PROBE_MODEL

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    assert onnx.load_from_string(PROBE_MODEL) == model
    import onnxruntime

    session = onnxruntime.InferenceSession(PROBE_MODEL, providers=["CPUExecutionProvider"])
    value = np.array([2.5], dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": value})[0], value)
