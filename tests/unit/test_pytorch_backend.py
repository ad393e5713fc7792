"""The PyTorch backend's handling of input memory, without a server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.backends.pytorch import PyTorchInstance
from server.repository.view import ModelView, TensorSpec


def _view() -> ModelView:
    return ModelView(
        name="m",
        version="1",
        platform="pytorch_libtorch",
        backend="pytorch",
        max_batch_size=0,
        inputs={"x": TensorSpec("x", "FP32", (4,)), "h": TensorSpec("h", "BF16", (4,))},
        outputs={},
    )


# The server's own filter for torch's warning is replaced by pytest's while a test runs.
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_pytorch_inputs_for_a_device_are_read_in_place_and_for_the_cpu_copied() -> None:
    # A request's tensor may be a read-only view of the bytes it arrived in. On the CPU the
    # module gets a writable copy it may change; for a device the upload is that copy, so the
    # host array is read in place ("meta" stands in for a GPU: it uploads nothing).
    view = _view()
    frozen = np.frombuffer(bytes(range(16)), np.float32)
    bits = np.frombuffer(bytes(range(8)), np.uint16)

    def instance(device: str) -> PyTorchInstance:
        return PyTorchInstance(torch, None, torch.device(device), view, ("positional", []), True)

    on_device = instance("meta")
    assert on_device._tensor(frozen, "x").data_ptr() == frozen.ctypes.data
    assert on_device._tensor(bits, "h").data_ptr() == bits.ctypes.data
    assert on_device._tensor(bits, "h").dtype == torch.bfloat16
    on_cpu = instance("cpu")._tensor(frozen, "x")
    assert on_cpu.data_ptr() != frozen.ctypes.data
    on_cpu.add_(1)  # the module's own copy
    assert frozen.tolist() == np.frombuffer(bytes(range(16)), np.float32).tolist()


def test_device_outputs_come_back_into_page_locked_memory() -> None:
    asked: list[bool] = []

    class RecordingTorch:
        """torch, with page-locked allocations recorded instead of asked of a driver."""

        def __getattr__(self, name: str) -> object:
            return getattr(torch, name)

        def empty(self, shape: object, dtype: object, pin_memory: bool) -> torch.Tensor:
            asked.append(pin_memory)
            return torch.empty(shape, dtype=dtype)  # type: ignore[call-overload]

    instance = PyTorchInstance(
        RecordingTorch(), None, torch.device("meta"), _view(), ("positional", []), True
    )
    value = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # strided, as outputs may be
    array = instance._download(value)
    assert asked == [True]
    assert array.tolist() == value.tolist() and array.flags.c_contiguous
