"""The shared-memory registry on its own: regions made with the standard library's POSIX
shared memory, requests built by hand."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np
import pytest

from server.cuda_ipc import CudaRuntimeIpc
from server.devices import FakeDeviceLayer
from server.errors import Code, ServerError
from server.shm import SharedMemoryRegistry
from server.types import InferInput, InferRequest, InferResponse, OutputTensor, RequestedOutput


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    block = shared_memory.SharedMemory(
        name=f"shmtest_{uuid.uuid4().hex[:12]}", create=True, size=4096
    )
    try:
        yield block
    finally:
        block.close()
        block.unlink()


def _request(
    region: str, size: int, offset: int = 0, out_size: int = 16, out_offset: int = 0
) -> InferRequest:
    params = {
        "shared_memory_region": region,
        "shared_memory_byte_size": size,
        "shared_memory_offset": offset,
    }
    return InferRequest(
        model_name="m",
        inputs=[InferInput("X", "INT32", (4,), np.empty(0), params)],
        outputs=[
            RequestedOutput(
                "Y",
                {
                    "shared_memory_region": region,
                    "shared_memory_byte_size": out_size,
                    "shared_memory_offset": out_offset,
                },
            )
        ],
    )


def _error(call: object, *args: object) -> ServerError:
    with pytest.raises(ServerError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


def test_disabled_registry_refuses_everything(segment: shared_memory.SharedMemory) -> None:
    registry = SharedMemoryRegistry(enabled=False)
    for error in (
        _error(registry.register_system, "r", segment.name, 0, 64),
        _error(registry.system_status),
        _error(registry.unregister_system),
        _error(registry.cuda_status),
        _error(registry.acquire, _request("r", 16)),
    ):
        assert error.code == Code.UNSUPPORTED and "--allow-client-shm" in error.message


def test_register_status_read_write_unregister(segment: shared_memory.SharedMemory) -> None:
    registry = SharedMemoryRegistry(enabled=True)
    registry.register_system("r", "/" + segment.name, 1024, 2048)
    assert registry.system_status() == [
        {"name": "r", "key": "/" + segment.name, "offset": 1024, "byte_size": 2048}
    ]
    np.frombuffer(segment.buf, dtype="<i4", count=4, offset=1024 + 64)[:] = [1, 2, 3, 4]

    request = _request("r", 16, offset=64, out_offset=128)
    with registry.acquire(request) as lease:
        np.testing.assert_array_equal(request.inputs[0].data, [1, 2, 3, 4])
        out = OutputTensor(
            "Y", "INT32", (4,), request.inputs[0].data * 10, dict(request.outputs[0].parameters)
        )  # type: ignore[index]
        lease.write_outputs(InferResponse("m", "1", [out]))
        del out
    np.testing.assert_array_equal(
        np.frombuffer(segment.buf, dtype="<i4", count=4, offset=1024 + 128), [10, 20, 30, 40]
    )
    del request

    assert (
        _error(registry.register_system, "r", "/" + segment.name, 0, 16).code == Code.ALREADY_EXISTS
    )
    registry.unregister_system("r")
    assert registry.system_status() == []
    registry.unregister_system("never-registered")  # not an error, as in Triton
    assert (
        _error(registry.system_status, "r").message
        == "Unable to find system shared memory region: 'r'"
    )


def test_register_errors(segment: shared_memory.SharedMemory) -> None:
    registry = SharedMemoryRegistry(enabled=True)
    missing = _error(registry.register_system, "r", "/no_such_region_here", 0, 16)
    assert (missing.code, missing.message) == (
        Code.INTERNAL,
        "Unable to open shared memory region: '/no_such_region_here'",
    )
    too_big = _error(registry.register_system, "r", segment.name, 4000, 200)
    assert too_big.code == Code.INVALID_ARG and "'r'" in too_big.message
    assert _error(registry.register_system, "r", "../etc/passwd", 0, 16).code == Code.INTERNAL


def test_bounds_and_names_are_checked_per_tensor(segment: shared_memory.SharedMemory) -> None:
    registry = SharedMemoryRegistry(enabled=True)
    registry.register_system("r", segment.name, 0, 64)
    cases = [
        (_request("nope", 16), Code.NOT_FOUND, "Unable to find shared memory region: 'nope'"),
        (
            _request("r", 16, offset=64),
            Code.INVALID_ARG,
            "Invalid offset for shared memory region: 'r'",
        ),
        (
            _request("r", 16, offset=56),
            Code.INVALID_ARG,
            "Invalid offset + byte size for shared memory region: 'r'",
        ),
        (
            _request("r", 16, out_offset=60),
            Code.INVALID_ARG,
            "Invalid offset + byte size for shared memory region: 'r'",
        ),
        # Triton's unsigned offset + size - 1 wraps around for a size and offset of 0.
        (
            _request("r", 0),
            Code.INVALID_ARG,
            "Invalid offset + byte size for shared memory region: 'r'",
        ),
    ]
    for request, code, message in cases:
        error = _error(registry.acquire, request)
        assert (error.code, error.message) == (code, message)
    mismatch = _error(registry.acquire, _request("r", 12))
    assert (
        mismatch.message
        == "[request id: <id_unknown>] input byte size mismatch for input 'X' for model 'm'. Expected 16, got 12"
    )


def test_output_smaller_than_the_result_is_an_error(segment: shared_memory.SharedMemory) -> None:
    registry = SharedMemoryRegistry(enabled=True)
    registry.register_system("r", segment.name, 0, 64)
    request = _request("r", 16, out_size=8)
    with registry.acquire(request) as lease:
        out = OutputTensor("Y", "INT32", (4,), np.arange(4, dtype=np.int32), {})
        error = _error(lease.write_outputs, InferResponse("m", "1", [out]))
    assert error.code == Code.INTERNAL
    assert error.message == (
        "shared memory size specified with the request for output 'Y' (8 bytes) should be at least 16 bytes to hold the results"
    )


def test_unregister_while_in_flight_is_deferred_until_the_request_ends(
    segment: shared_memory.SharedMemory,
) -> None:
    registry = SharedMemoryRegistry(enabled=True)
    registry.register_system("r", segment.name, 0, 64)
    request = _request("r", 16)
    lease = registry.acquire(request)
    region = lease.regions[0]
    registry.unregister_system()
    assert registry.system_status() == []
    assert _error(registry.acquire, _request("r", 16)).code == Code.NOT_FOUND
    # The request still owns the mapping and can write its outputs.
    out = OutputTensor("Y", "INT32", (4,), np.array([7, 7, 7, 7], dtype=np.int32), {})
    lease.write_outputs(InferResponse("m", "1", [out]))
    assert not region.buffer.closed
    np.testing.assert_array_equal(np.frombuffer(segment.buf, dtype="<i4", count=4), [7, 7, 7, 7])
    request.inputs[0].data = np.empty(0)  # drop the view so the mapping can close now
    lease.release()
    assert region.buffer.closed


def test_cuda_shared_memory_says_why_it_cannot_work() -> None:
    # No device visible, whatever the machine: registration must say why it cannot work.
    registry = SharedMemoryRegistry(enabled=True, cuda=CudaRuntimeIpc(FakeDeviceLayer([])))
    error = _error(registry.register_cuda, "c", b"\0" * 64, 0, 64)
    assert error.code == Code.UNSUPPORTED and "CUDA" in error.message
    assert registry.cuda_status() == []
    assert _error(registry.cuda_status, "c").code == Code.NOT_FOUND
    registry.unregister_cuda("c")
