"""The PyTorch backend's handling of input memory, without a server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.backends.pytorch import PyTorchInstance
from server.repository.view import ModelView, TensorSpec


# The server's own filter for torch's warning is replaced by pytest's while a test runs.
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_pytorch_inputs_for_a_device_are_read_in_place_and_for_the_cpu_copied() -> None:
    # A request's tensor may be a read-only view of the bytes it arrived in. On the CPU the
    # module gets a writable copy it may change; for a device the upload is that copy, so the
    # host array is read in place ("meta" stands in for a GPU: it uploads nothing).
    view = ModelView(
        name="m",
        version="1",
        platform="pytorch_libtorch",
        backend="pytorch",
        max_batch_size=0,
        inputs={"x": TensorSpec("x", "FP32", (4,)), "h": TensorSpec("h", "BF16", (4,))},
        outputs={},
    )
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
