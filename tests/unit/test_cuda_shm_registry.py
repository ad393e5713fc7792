"""CUDA shared memory in the registry, with host shared memory standing in for device memory
(``HostIpc``) so the checks, copies and deferred close run without a GPU."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory

import numpy as np
import pytest

from server import cuda_ipc
from server.cuda_ipc import CudaRuntimeIpc, HostIpc, host_handle
from server.devices import FakeDeviceLayer
from server.errors import Code, ServerError
from server.shm import SharedMemoryRegistry
from server.types import InferInput, InferRequest, InferResponse, OutputTensor, RequestedOutput

Segment = shared_memory.SharedMemory


@pytest.fixture
def device_memory() -> Iterator[Callable[[int], Segment]]:
    made: list[Segment] = []

    def allocate(size: int) -> Segment:
        block = Segment(name=f"cudatest_{uuid.uuid4().hex[:12]}", create=True, size=size)
        made.append(block)
        return block

    yield allocate
    for block in made:
        block.close()
        block.unlink()


def _request(
    region: str, offset: int = 0, size: int = 16, out: tuple[str, int, int] | None = None
) -> InferRequest:
    params = {
        "shared_memory_region": region,
        "shared_memory_byte_size": size,
        "shared_memory_offset": offset,
    }
    out_region, out_size, out_offset = out or (region, 16, 0)
    return InferRequest(
        model_name="m",
        id="req-1",
        inputs=[InferInput("X", "INT32", (4,), np.empty(0), params)],
        outputs=[
            RequestedOutput(
                "Y",
                {
                    "shared_memory_region": out_region,
                    "shared_memory_byte_size": out_size,
                    "shared_memory_offset": out_offset,
                },
            )
        ],
    )


def _error(call: Callable[..., object], *args: object) -> ServerError:
    with pytest.raises(ServerError) as info:
        call(*args)
    return info.value


def test_register_status_unregister(device_memory: Callable[[int], Segment]) -> None:
    ipc = HostIpc(devices=2)
    registry = SharedMemoryRegistry(enabled=True, cuda=ipc)
    a, b = device_memory(256), device_memory(64)
    registry.register_cuda("b", host_handle(b.name), 1, 64)
    registry.register_cuda("a", host_handle(a.name), 0, 128)
    assert registry.cuda_status() == [
        {"name": "a", "device_id": 0, "byte_size": 128},
        {"name": "b", "device_id": 1, "byte_size": 64},
    ]
    assert registry.cuda_status("b") == [{"name": "b", "device_id": 1, "byte_size": 64}]
    assert registry.system_status() == []

    registry.unregister_cuda("b")
    registry.unregister_cuda("never_registered")
    assert [r["name"] for r in registry.cuda_status()] == ["a"]
    missing = _error(registry.cuda_status, "b")
    assert (missing.code, missing.message) == (
        Code.NOT_FOUND,
        "Unable to find cuda shared memory region: 'b'",
    )
    registry.unregister_cuda()
    assert registry.cuda_status() == []
    assert (ipc.opened, ipc.closed) == (2, 2)


def test_register_checks(device_memory: Callable[[int], Segment]) -> None:
    ipc = HostIpc(devices=1)
    registry = SharedMemoryRegistry(enabled=True, cuda=ipc)
    block = device_memory(64)
    handle = host_handle(block.name)
    registry.register_cuda("r", handle, 0, 64)

    duplicate = _error(registry.register_cuda, "r", handle, 0, 64)
    assert (duplicate.code, duplicate.message) == (
        Code.ALREADY_EXISTS,
        "shared memory region 'r' already in manager",
    )
    short = _error(registry.register_cuda, "s", handle[:60], 0, 64)
    assert short.code == Code.INVALID_ARG and "64-byte" in short.message and "60" in short.message
    device = _error(registry.register_cuda, "s", handle, 1, 64)
    assert device.code == Code.INVALID_ARG and "invalid device id 1" in device.message
    empty = _error(registry.register_cuda, "s", handle, 0, 0)
    assert empty.code == Code.INVALID_ARG and "'s'" in empty.message
    too_big = _error(registry.register_cuda, "s", handle, 0, 4096)
    assert too_big.code == Code.INTERNAL and "exceeds" in too_big.message
    unknown = _error(registry.register_cuda, "s", host_handle("cudatest_nothing_here"), 0, 8)
    assert unknown.code == Code.INTERNAL and "failed to open CUDA IPC handle" in unknown.message
    assert [r["name"] for r in registry.cuda_status()] == ["r"]
    assert ipc.opened == 1


def test_names_are_shared_with_system_regions(device_memory: Callable[[int], Segment]) -> None:
    registry = SharedMemoryRegistry(enabled=True, cuda=HostIpc())
    system, device = device_memory(64), device_memory(64)
    registry.register_system("r", "/" + system.name, 0, 64)
    assert _error(registry.register_cuda, "r", host_handle(device.name), 0, 64).code == (
        Code.ALREADY_EXISTS
    )
    registry.register_cuda("c", host_handle(device.name), 0, 64)
    assert _error(registry.register_system, "c", "/" + system.name, 0, 64).code == (
        Code.ALREADY_EXISTS
    )


def test_inputs_copied_in_and_outputs_copied_out(device_memory: Callable[[int], Segment]) -> None:
    registry = SharedMemoryRegistry(enabled=True, cuda=HostIpc())
    block = device_memory(256)
    registry.register_cuda("r", host_handle(block.name), 0, 256)
    values = np.array([7, -1, 3, 9], dtype="<i4")
    np.frombuffer(block.buf, dtype="<i4", count=4, offset=40)[:] = values

    request = _request("r", offset=40, out=("r", 16, 100))
    with registry.acquire(request) as lease:
        np.testing.assert_array_equal(request.inputs[0].data, values)
        # The tensor is a host copy: changing device memory afterwards does not reach it.
        np.frombuffer(block.buf, dtype="<i4", count=4, offset=40)[:] = 0
        np.testing.assert_array_equal(request.inputs[0].data, values)
        lease.write_outputs(
            InferResponse("m", "1", outputs=[OutputTensor("Y", "INT32", (4,), values * 2)])
        )
    np.testing.assert_array_equal(
        np.frombuffer(block.buf, dtype="<i4", count=4, offset=100), values * 2
    )


def test_bounds_and_sizes(device_memory: Callable[[int], Segment]) -> None:
    registry = SharedMemoryRegistry(enabled=True, cuda=HostIpc())
    block = device_memory(64)
    registry.register_cuda("r", host_handle(block.name), 0, 64)
    cases = {
        64: "Invalid offset for shared memory region: 'r'",
        56: "Invalid offset + byte size for shared memory region: 'r'",
    }
    for offset, message in cases.items():
        error = _error(registry.acquire, _request("r", offset=offset))
        assert (error.code, error.message) == (Code.INVALID_ARG, message)
    mismatch = _error(registry.acquire, _request("r", size=12))
    assert mismatch.code == Code.INVALID_ARG and "Expected 16, got 12" in mismatch.message

    lease = registry.acquire(_request("r", out=("r", 8, 0)))
    too_small = _error(
        lease.write_outputs,
        InferResponse("m", "1", outputs=[OutputTensor("Y", "INT32", (4,), np.zeros(4, np.int32))]),
    )
    assert too_small.code == Code.INTERNAL and "should be at least 16 bytes" in too_small.message
    lease.release()


def test_unregister_waits_for_requests_in_flight(device_memory: Callable[[int], Segment]) -> None:
    ipc = HostIpc()
    registry = SharedMemoryRegistry(enabled=True, cuda=ipc)
    block = device_memory(64)
    registry.register_cuda("r", host_handle(block.name), 0, 64)
    first = registry.acquire(_request("r"))
    second = registry.acquire(_request("r", offset=16))
    registry.unregister_cuda("r")
    assert registry.cuda_status() == []
    assert _error(registry.acquire, _request("r")).code == Code.NOT_FOUND
    # The name is free again although the old mapping is still in use.
    registry.register_cuda("r", host_handle(block.name), 0, 32)
    assert (ipc.opened, ipc.closed) == (2, 0)

    values = np.arange(4, dtype=np.int32)
    first.write_outputs(InferResponse("m", "1", outputs=[OutputTensor("Y", "INT32", (4,), values)]))
    first.release()
    assert ipc.closed == 0
    second.release()
    assert ipc.closed == 1
    np.testing.assert_array_equal(np.frombuffer(block.buf, dtype="<i4", count=4), values)
    registry.unregister_cuda()
    assert ipc.closed == 2


class _Unavailable(HostIpc):
    def unavailable_reason(self) -> str | None:
        return "no CUDA device is visible to this server"


def test_unusable_layer_says_why(device_memory: Callable[[int], Segment]) -> None:
    registry = SharedMemoryRegistry(enabled=True, cuda=_Unavailable())
    block = device_memory(64)
    error = _error(registry.register_cuda, "r", host_handle(block.name), 0, 64)
    assert error.code == Code.UNSUPPORTED
    assert error.message == (
        "failed to register CUDA shared memory region 'r': no CUDA device is visible to this "
        "server; use system shared memory"
    )
    assert registry.cuda_status() == []
    disabled = SharedMemoryRegistry(enabled=False, cuda=HostIpc())
    assert "--allow-client-shm" in _error(disabled.register_cuda, "r", b"", 0, 1).message


def test_runtime_layer_without_devices_is_unavailable() -> None:
    """Whatever this machine has, a process that sees no device cannot open a handle."""
    layer = CudaRuntimeIpc(FakeDeviceLayer())
    reason = layer.unavailable_reason()
    assert reason is not None and ("CUDA" in reason or "cuda-python" in reason)
    error = _error(SharedMemoryRegistry(True, cuda=layer).register_cuda, "r", b"\0" * 64, 0, 64)
    assert error.code == Code.UNSUPPORTED and reason in error.message


def test_registries_use_the_default_layer(device_memory: Callable[[int], Segment]) -> None:
    ipc = HostIpc()
    cuda_ipc.set_default_layer(ipc)
    try:
        registry = SharedMemoryRegistry(enabled=True)
        registry.register_cuda("r", host_handle(device_memory(8).name), 0, 8)
        assert ipc.opened == 1
    finally:
        cuda_ipc.set_default_layer(None)
    assert isinstance(cuda_ipc.default_layer(), CudaRuntimeIpc)
