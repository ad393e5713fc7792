"""The datatype a response declares for each output: the configured one, or the one the
backend actually produced when it differs (as Triton answers for Python-backend models)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from server.core import Core, CoreOptions
from server.errors import Code, ServerError
from server.repository.view import ModelView, TensorSpec
from server.tensors import NUMPY_DTYPES, to_bytes
from server.types import InferRequest, RequestedOutput


def _view(datatype: str) -> ModelView:
    spec = TensorSpec("OUT", datatype, (-1,))
    return ModelView("m", "1", "", "python", 8, {}, {"OUT": spec})


def _build(datatype: str, array: np.ndarray, **params: Any) -> tuple[str, np.ndarray]:
    core = Core(None, CoreOptions())  # type: ignore[arg-type]
    outputs = None if not params else [RequestedOutput("OUT", params)]
    request = InferRequest("m", outputs=outputs)
    (tensor,) = core.build_response(request, _view(datatype), {"OUT": array}).outputs
    return tensor.datatype, tensor.data


@pytest.mark.parametrize("datatype", [d for d in NUMPY_DTYPES if d != "BYTES"])
def test_an_array_of_the_configured_type_keeps_it(datatype: str) -> None:
    array = np.zeros((1, 3), dtype=NUMPY_DTYPES[datatype])
    assert _build(datatype, array)[0] == datatype


def test_bytes_outputs_keep_bytes() -> None:
    assert _build("BYTES", np.array([[b"a", b"b"]], dtype=object))[0] == "BYTES"


@pytest.mark.parametrize(
    ("configured", "array", "sent"),
    [
        ("FP32", np.array([[1.5, -2.0]], dtype=np.float64), "FP64"),
        ("INT32", np.array([[7, -3]], dtype=np.int64), "INT64"),
        ("FP32", np.array([[1, -2]], dtype=np.int8), "INT8"),
        ("FP32", np.array([[True, False]]), "BOOL"),
        ("FP32", np.array([[1.5, -2.0]], dtype=np.float16), "FP16"),
        ("FP32", np.array([[b"ab", b""]], dtype=object), "BYTES"),
        ("FP32", np.array([["ab", "c"]]), "BYTES"),
        ("BYTES", np.array([[0, 1]], dtype=np.int32), "INT32"),
    ],
)
def test_another_type_is_sent_as_it_is(configured: str, array: np.ndarray, sent: str) -> None:
    datatype, data = _build(configured, array)
    assert datatype == sent
    # The wire bytes are the array's own, not a conversion to the configured type.
    expected = array if sent == "BYTES" else array.astype(NUMPY_DTYPES[sent])
    assert bytes(to_bytes(data, datatype)) == bytes(to_bytes(expected, sent))


def test_classification_is_still_bytes() -> None:
    array = np.array([[0.1, 0.9]], dtype=np.float64)
    datatype, data = _build("FP32", array, classification=1)
    assert datatype == "BYTES" and data.tolist() == [[b"0.900000:1"]]


def test_a_type_no_wire_datatype_carries_is_internal() -> None:
    with pytest.raises(ServerError) as info:
        _build("FP32", np.array([[1 + 2j]]))
    assert info.value.code == Code.INTERNAL
    assert info.value.message == (
        "output 'OUT' of model 'm' has numpy datatype complex128, which no wire datatype carries"
    )
