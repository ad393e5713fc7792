"""The ``triton_python_backend_utils`` API as models use it, without a server."""

from __future__ import annotations

import ctypes
import logging

import numpy as np
import pytest

from server.backends.python import create_backend
from server.backends.python import pb_utils as pb
from server.backends.python import tensor as tensor_module
from server.backends.python.request import response_outputs
from server.backends.python.tensor import capsule_info, to_host
from server.errors import Code, ServerError
from server.repository.view import ModelView, TensorSpec
from server.tensors import CONFIG_TO_WIRE, NUMPY_DTYPES
from server.types import InferInput, InferRequest, RequestedOutput

CONFIG_TYPES = sorted(CONFIG_TO_WIRE)


def _view(outputs: dict[str, str], decoupled: bool = False) -> ModelView:
    return ModelView(
        name="m",
        version="1",
        platform="",
        backend="python",
        max_batch_size=0,
        inputs={},
        outputs={n: TensorSpec(n, dt, (-1,)) for n, dt in outputs.items()},
        decoupled=decoupled,
    )


def test_module_is_importable_under_tritons_name() -> None:
    create_backend()
    import triton_python_backend_utils

    assert triton_python_backend_utils is pb
    assert pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL == 1


@pytest.mark.parametrize("config_type", CONFIG_TYPES)
def test_datatype_helpers_agree(config_type: str) -> None:
    numpy_type = pb.triton_string_to_numpy(config_type)
    wire_type = NUMPY_DTYPES[CONFIG_TO_WIRE[config_type]].type
    # Triton's table gives Python's bool for TYPE_BOOL (the same dtype to numpy).
    assert numpy_type is (bool if config_type == "TYPE_BOOL" else wire_type)
    assert np.dtype(numpy_type) == np.dtype(wire_type)
    code = pb.numpy_to_triton_type(numpy_type)
    assert code is not None and 1 <= code <= 14
    assert pb.triton_to_numpy_type(code) is wire_type


def test_datatype_codes_are_tritons() -> None:
    assert pb.numpy_to_triton_type(np.bool_) == 1
    assert pb.numpy_to_triton_type(np.int32) == 8
    assert pb.numpy_to_triton_type(np.float32) == 11
    assert pb.numpy_to_triton_type(np.object_) == 13
    assert pb.numpy_to_triton_type(np.bytes_) == 13
    assert pb.triton_to_numpy_type(99) is None
    with pytest.raises(ValueError):
        pb.triton_string_to_numpy("TYPE_NOPE")


def test_tensor_numeric_and_strings() -> None:
    numbers = pb.Tensor("X", np.arange(6, dtype=np.int16).reshape(2, 3))
    assert numbers.name() == "X"
    assert numbers.shape() == [2, 3]
    assert numbers.triton_dtype() == 7
    assert numbers.as_numpy().dtype == np.int16
    words = pb.Tensor("W", np.array(["a", "b\u00e9"]))
    assert words.as_numpy().dtype == np.object_
    assert words.as_numpy().tolist() == [b"a", "b\u00e9".encode()]
    assert words.triton_dtype() == 13
    with pytest.raises(TypeError):
        pb.Tensor(3, np.zeros(1))  # type: ignore[arg-type]


def test_tensor_dlpack_round_trip() -> None:
    source = np.arange(5, dtype=np.float32)
    source.flags.writeable = False  # decoded request inputs are read-only
    tensor = pb.Tensor("T", source)
    back = pb.Tensor.from_dlpack("U", tensor.to_dlpack())
    assert back.name() == "U"
    np.testing.assert_array_equal(back.as_numpy(), source)
    via_protocol = pb.Tensor.from_dlpack("V", np.arange(3, dtype=np.int64))
    assert via_protocol.as_numpy().tolist() == [0, 1, 2]


def _fake_capsule(name: bytes, device_type: int) -> tuple[object, object]:
    """A capsule named ``name`` over a zeroed DLPack structure whose device type is
    ``device_type`` and data type float32, as torch or CuPy would hand over a tensor in device
    memory; the structure is returned too, to outlive the capsule."""
    memory = ctypes.create_string_buffer(96)
    offset = 8 if name == b"dltensor" else 40
    ctypes.c_int32.from_buffer(memory, offset).value = device_type
    memory[offset + 12] = 2  # kDLFloat
    memory[offset + 13] = 32
    new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
        ("PyCapsule_New", ctypes.pythonapi)
    )
    label = ctypes.create_string_buffer(name)
    return new(ctypes.addressof(memory), label, None), (memory, label)


def test_dlpack_capsule_is_read_without_consuming_it() -> None:
    import torch

    host = np.arange(4, dtype=np.float32)
    assert capsule_info(host.__dlpack__()) == (1, 2, 32)
    assert capsule_info(host.__dlpack__(max_version=(1, 0))) == (1, 2, 32)
    assert capsule_info(np.zeros(2, np.int64).__dlpack__(max_version=(1, 0))) == (1, 0, 64)
    assert capsule_info(torch.utils.dlpack.to_dlpack(torch.zeros(2, dtype=torch.bfloat16))) == (
        1,
        4,
        16,
    )
    versioned = pb.Tensor.from_dlpack("V", host.__dlpack__(max_version=(1, 0)))
    assert versioned.as_numpy().tolist() == [0, 1, 2, 3]
    for name in (b"dltensor", b"dltensor_versioned"):
        capsule, _keep = _fake_capsule(name, 2)  # kDLCUDA
        assert capsule_info(capsule) == (2, 2, 32)
        assert capsule_info(capsule) == (2, 2, 32)
    used, _keep = _fake_capsule(b"used_dltensor", 1)
    with pytest.raises(ValueError, match="used_dltensor"):
        pb.Tensor.from_dlpack("U", used)
    with pytest.raises(TypeError, match="list"):
        pb.Tensor.from_dlpack("U", [1, 2])


def test_device_tensors_are_copied_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[object] = []

    def fake_copy(source: object) -> tuple[np.ndarray, str]:
        copied.append(source)
        return np.full(3, 7, dtype=np.int32), "INT32"

    monkeypatch.setattr(tensor_module, "to_host", fake_copy)
    capsule, _keep = _fake_capsule(b"dltensor", 2)
    from_capsule = pb.Tensor.from_dlpack("A", capsule)
    assert copied == [capsule] and from_capsule.as_numpy().tolist() == [7, 7, 7]

    class OnDevice:
        def __dlpack__(self, stream: object = None) -> object:
            raise AssertionError("exported here; torch exports it once, itself")

        def __dlpack_device__(self) -> tuple[int, int]:
            return (2, 0)

    on_device = OnDevice()
    assert pb.Tensor.from_dlpack("B", on_device).as_numpy().tolist() == [7, 7, 7]
    assert copied[-1] is on_device
    # Host memory, pinned or not, is read in place and never copied.
    pb.Tensor.from_dlpack("C", np.arange(3).__dlpack__())
    assert len(copied) == 2


def test_read_only_arrays_come_through_dlpack_read_only() -> None:
    # Only a DLPack 1.0 capsule can carry a read-only array; numpy refuses the older kind.
    shared = np.broadcast_to(np.arange(3, dtype=np.float32), (2, 3))
    tensor = pb.Tensor.from_dlpack("R", shared)
    assert tensor.as_numpy().tolist() == shared.tolist()
    assert not tensor.as_numpy().flags.writeable


def test_bf16_tensors_go_through_dlpack_as_triton_allows() -> None:
    import torch

    values = torch.tensor([[1.5, -2.25, 3.0e38, 0.0078125]], dtype=torch.bfloat16)
    bits = values.view(torch.int16).numpy()
    for source in (values, torch.utils.dlpack.to_dlpack(values)):
        tensor = pb.Tensor.from_dlpack("H", source)
        assert tensor.datatype() == "BF16" and tensor.triton_dtype() == 14
        assert tensor.shape() == [1, 4]
        assert tensor.as_numpy().view(np.int16).tolist() == bits.tolist()
        back = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
        assert back.dtype == torch.bfloat16 and torch.equal(back, values)
    # A BF16 input as the server decodes it (its raw little-endian bits) reaches torch too.
    given = pb.Tensor._wrap("IN", bits.view(NUMPY_DTYPES["BF16"]), "BF16")
    assert torch.equal(torch.utils.dlpack.from_dlpack(given.to_dlpack()), values)


def test_to_host_reads_through_torch() -> None:
    import torch

    source = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    back, datatype = to_host(torch.utils.dlpack.to_dlpack(source))
    assert back.tolist() == source.tolist() and datatype == "FP32"
    back, datatype = to_host(source.t() == 1)
    assert back.tolist() == (source.t() == 1).tolist() and datatype == "BOOL"


def test_byte_tensor_serialization_round_trip() -> None:
    values = np.array([b"", b"xy", "z\u00fc".encode()], dtype=np.object_)
    packed = pb.serialize_byte_tensor(values)
    assert packed[0] == b"\x00\x00\x00\x00\x02\x00\x00\x00xy\x03\x00\x00\x00" + "z\u00fc".encode()
    assert pb.deserialize_bytes_tensor(packed[0]).tolist() == values.tolist()


def test_config_lookups() -> None:
    config = {"input": [{"name": "A", "data_type": "TYPE_FP32"}], "output": [{"name": "B"}]}
    assert pb.get_input_config_by_name(config, "A") == {"name": "A", "data_type": "TYPE_FP32"}
    assert pb.get_input_config_by_name(config, "B") is None
    assert pb.get_output_config_by_name(config, "B") == {"name": "B"}


def test_response_and_error() -> None:
    error = pb.TritonError("bad", pb.TritonError.INVALID_ARG)
    assert error.message() == "bad" and error.code() == pb.TritonError.INVALID_ARG
    response = pb.InferenceResponse(error=error)
    assert response.has_error() and response.output_tensors() == []
    ok = pb.InferenceResponse([pb.Tensor("A", np.zeros(2))], parameters={"k": 1})
    assert pb.get_output_tensor_by_name(ok, "A") is not None
    assert pb.get_output_tensor_by_name(ok, "B") is None
    assert ok.parameters() == '{"k": 1}'
    with pytest.raises(pb.TritonModelException):
        pb.InferenceResponse([np.zeros(2)])  # type: ignore[list-item]


def test_response_outputs_keep_the_model_datatype() -> None:
    # Triton sends what the model produced, even where the config declares another type.
    view = _view({"F": "FP32", "S": "BYTES"})
    outputs = response_outputs(
        pb.InferenceResponse(
            [pb.Tensor("F", np.array([1.5, 2.5])), pb.Tensor("S", np.array(["x"]))]
        ),
        view,
    )
    assert isinstance(outputs, dict)
    assert outputs["F"].dtype == np.float64 and outputs["F"].tolist() == [1.5, 2.5]
    assert outputs["S"].tolist() == [b"x"]
    text = response_outputs(pb.InferenceResponse([pb.Tensor("F", np.array(["x"]))]), view)
    assert isinstance(text, dict) and text["F"].tolist() == [b"x"]
    errored = response_outputs(
        pb.InferenceResponse(error=pb.TritonError("nope", pb.TritonError.NOT_FOUND)), view
    )
    assert isinstance(errored, ServerError) and errored.code == Code.NOT_FOUND
    wrong = response_outputs("not a response", view)
    assert isinstance(wrong, ServerError) and wrong.code == Code.INTERNAL


def _received(view: ModelView, source: InferRequest) -> pb.InferenceRequest:
    return pb.InferenceRequest.incoming(source, view, None, {})


def test_request_a_model_receives() -> None:
    view = _view({"B": "FP32", "A": "FP32"})
    data = np.arange(3, dtype=np.float32)
    plain = _received(view, InferRequest("m", "1", [InferInput("X", "FP32", (3,), data)]))
    assert plain.model_name() == "m" and plain.model_version() == 1
    assert plain.correlation_id() == 0 and plain.flags() == 0
    assert pb.get_input_tensor_by_name(plain, "X") is not None
    assert pb.get_input_tensor_by_name(plain, "Y") is None
    # Every output in the config's order when none was asked for, as a list of its own.
    names = plain.requested_output_names()
    assert names == ["B", "A"]
    names.append("C")
    assert plain.requested_output_names() == ["B", "A"]
    sequence = _received(
        view,
        InferRequest(
            "m",
            "1",
            parameters={"sequence_id": 42, "sequence_start": True, "sequence_end": True},
            outputs=[RequestedOutput("A")],
        ),
    )
    assert sequence.correlation_id() == 42
    assert sequence.flags() == (
        pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START | pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
    )
    assert sequence.requested_output_names() == ["A"]
    unnumbered = ModelView("m", "latest", "", "python", 0, {}, {})
    assert _received(unnumbered, InferRequest("m")).model_version() == -1


def test_request_built_for_bls() -> None:
    request = pb.InferenceRequest(
        model_name="other",
        inputs=[pb.Tensor("A", np.zeros(2))],
        requested_output_names=["B"],
        parameters={"p": "v"},
    )
    assert [t.name() for t in request.inputs()] == ["A"]
    assert request.requested_output_names() == ["B"]
    assert request.parameters() == '{"p": "v"}'
    with pytest.raises(pb.TritonModelException):
        request.get_response_sender()
    with pytest.raises(pb.TritonModelException, match="running server"):
        request.exec()
    with pytest.raises(pb.TritonModelException):
        pb.InferenceRequest(model_name="x", inputs=[np.zeros(1)])  # type: ignore[list-item]
    with pytest.raises(pb.TritonModelException):
        pb.InferenceRequest(model_name="x", parameters={"p": [1]})


def test_logger_writes_to_the_server_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="server.python_model"):
        pb.Logger.log_info("info line")
        pb.Logger.log_warn("warn line")
        pb.Logger.log_error("error line")
        pb.Logger.log_verbose("verbose line")
        pb.Logger.log("default line")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels == [
        (logging.INFO, "info line"),
        (logging.WARNING, "warn line"),
        (logging.ERROR, "error line"),
        (logging.DEBUG, "verbose line"),
        (logging.INFO, "default line"),
    ]


def test_metrics_keep_values() -> None:
    family = pb.MetricFamily("requests", "handled requests", pb.MetricFamily.COUNTER)
    metric = family.Metric(labels={"model": "m"})
    metric.increment(2)
    metric.increment(3)
    assert metric.value() == 5
    with pytest.raises(pb.TritonModelException):
        metric.increment(-1)
    with pytest.raises(pb.TritonModelException):
        metric.set(1)
