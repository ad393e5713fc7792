"""Client shared memory: the regions clients register, and tensors read from and written
to them. Both front ends reach this through the core, so the checks and messages exist once.

A region stays mapped while any request that resolved it is in flight: unregistering it
removes the name at once (new requests no longer find it) and unmaps when the last such
request ends.

CUDA regions are device memory another process exported with ``cudaIpcGetMemHandle``; they
are opened through ``server.cuda_ipc`` and tensors are copied between them and host memory.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from server import cuda_ipc
from server.errors import Code, ServerError, invalid_arg, unsupported
from server.tensors import from_buffer, to_bytes
from server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"

DISABLED_MESSAGE = (
    "Client shared memory is disabled. Start the server with --allow-client-shm=true to "
    "register and use shared memory regions"
)


@dataclass(eq=False)
class SystemRegion:
    name: str
    key: str
    offset: int
    byte_size: int
    buffer: mmap.mmap
    users: int = 0
    retired: bool = False

    def read(self, offset: int, size: int) -> memoryview:
        start = self.offset + offset
        return memoryview(self.buffer)[start : start + size]

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.read(offset, len(data))[:] = data

    def close(self) -> None:
        try:
            self.buffer.close()
        except BufferError:
            # A tensor still views the mapping; it is unmapped when that tensor is freed.
            pass


@dataclass(eq=False)
class CudaRegion:
    name: str
    device_id: int
    byte_size: int
    memory: cuda_ipc.DeviceMemory
    users: int = 0
    retired: bool = False

    def read(self, offset: int, size: int) -> memoryview:
        return self._device_call(self.memory.read, offset, size)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._device_call(self.memory.write, offset, data)

    def _device_call(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except cuda_ipc.IpcError as exc:
            raise ServerError(
                Code.INTERNAL, f"CUDA shared memory region '{self.name}': {exc}"
            ) from None

    def close(self) -> None:
        try:
            self.memory.close()
        except cuda_ipc.IpcError as exc:
            log.warning("CUDA shared memory region '%s': %s", self.name, exc)


Region = SystemRegion | CudaRegion


@dataclass(eq=False)
class _Binding:
    region: Region
    offset: int
    byte_size: int


@dataclass(eq=False)
class Lease:
    """The regions one request uses, held until the request ends."""

    registry: SharedMemoryRegistry
    regions: list[Region] = field(default_factory=list)
    outputs: dict[str, _Binding] = field(default_factory=dict)

    def write_outputs(self, response: InferResponse) -> None:
        for tensor in response.outputs:
            binding = self.outputs.get(tensor.name)
            if binding is None:
                continue
            raw = to_bytes(tensor.data, tensor.datatype)
            if len(raw) > binding.byte_size:
                raise ServerError(
                    Code.INTERNAL,
                    f"shared memory size specified with the request for output '{tensor.name}' "
                    f"({binding.byte_size} bytes) should be at least {len(raw)} bytes to hold the "
                    "results",
                )
            binding.region.write(binding.offset, raw)

    def release(self) -> None:
        regions, self.regions = self.regions, []
        self.registry._release(regions)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def uses_shared_memory(request: InferRequest) -> bool:
    for tensor in request.inputs:
        if tensor.parameters and REGION in tensor.parameters:
            return True
    if request.outputs:
        for output in request.outputs:
            if output.parameters and REGION in output.parameters:
                return True
    return False


class SharedMemoryRegistry:
    def __init__(self, enabled: bool = False, cuda: cuda_ipc.IpcLayer | None = None) -> None:
        self.enabled = enabled
        self._ipc = cuda
        self._system: dict[str, SystemRegion] = {}
        self._cuda: dict[str, CudaRegion] = {}
        self._lock = threading.Lock()

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise unsupported(DISABLED_MESSAGE)

    # --- system shared memory --------------------------------------------------------
    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_enabled()
        with self._lock:
            self._check_free(name)
        buffer = _map(name, key, offset, byte_size)
        with self._lock:
            try:
                self._check_free(name)
            except ServerError:
                buffer.close()
                raise
            self._system[name] = SystemRegion(name, key, offset, byte_size, buffer)

    def _check_free(self, name: str) -> None:
        """Both kinds share one namespace, since requests name a region without its kind."""
        if name in self._system or name in self._cuda:
            raise ServerError(
                Code.ALREADY_EXISTS, f"shared memory region '{name}' already in manager"
            )

    def system_status(self, name: str = "") -> list[dict[str, Any]]:
        self._check_enabled()
        with self._lock:
            regions = _select(self._system, name, "system")
            return [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in regions
            ]

    def unregister_system(self, name: str = "") -> None:
        """Unknown names are not an error, as in Triton."""
        self._check_enabled()
        self._retire(self._system, name)

    def _retire(self, regions: dict[str, Any], name: str) -> None:
        with self._lock:
            names = [name] if name else list(regions)
            closing = [regions.pop(n) for n in names if n in regions]
            for region in closing:
                region.retired = True
            idle = [r for r in closing if r.users == 0]
        for region in idle:
            region.close()

    # --- CUDA shared memory ------------------------------------------------------------
    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._check_enabled()
        failed = f"failed to register CUDA shared memory region '{name}'"
        with self._lock:
            self._check_free(name)
        ipc = self._ipc or cuda_ipc.default_layer()
        reason = ipc.unavailable_reason()
        if reason is not None:
            raise unsupported(f"{failed}: {reason}; use system shared memory")
        if len(raw_handle) != cuda_ipc.HANDLE_SIZE:
            raise invalid_arg(
                f"{failed}: 'raw_handle' must be a {cuda_ipc.HANDLE_SIZE}-byte "
                f"cudaIpcMemHandle_t, got {len(raw_handle)} bytes"
            )
        count = ipc.device_count()
        if not 0 <= device_id < count:
            raise invalid_arg(
                f"{failed}: invalid device id {device_id}, this server sees {count} CUDA device(s)"
            )
        if byte_size == 0:
            raise invalid_arg(f"{failed}: 'byte_size' must be greater than 0")
        try:
            memory = ipc.open(raw_handle, device_id, byte_size)
        except cuda_ipc.IpcError as exc:
            raise ServerError(Code.INTERNAL, f"{failed}: {exc}") from None
        with self._lock:
            try:
                self._check_free(name)
            except ServerError:
                CudaRegion(name, device_id, byte_size, memory).close()
                raise
            self._cuda[name] = CudaRegion(name, device_id, byte_size, memory)

    def cuda_status(self, name: str = "") -> list[dict[str, Any]]:
        self._check_enabled()
        with self._lock:
            regions = _select(self._cuda, name, "cuda")
            return [
                {"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size}
                for r in regions
            ]

    def unregister_cuda(self, name: str = "") -> None:
        """Unknown names are not an error, as in Triton."""
        self._check_enabled()
        self._retire(self._cuda, name)

    # --- requests ----------------------------------------------------------------------
    def acquire(self, request: InferRequest) -> Lease:
        """Resolve every shared-memory input into a tensor and check every shared-memory
        output, holding the regions until the lease is released."""
        self._check_enabled()
        lease = Lease(self)
        try:
            for tensor in request.inputs:
                params = tensor.parameters
                if not params or REGION not in params:
                    continue
                binding = self._bind(lease, tensor.name, params)
                view = binding.region.read(binding.offset, binding.byte_size)
                tensor.data = from_buffer(
                    view, tensor.datatype, tensor.shape, tensor.name, request.model_name, request.id
                )
            for output in request.outputs or ():
                params = output.parameters
                if not params or REGION not in params:
                    continue
                if params.get("classification"):
                    raise invalid_arg(
                        "Output can't set both 'shared_memory_region' and 'classification'"
                    )
                lease.outputs[output.name] = self._bind(lease, output.name, params)
        except BaseException:
            lease.release()
            raise
        return lease

    def _bind(self, lease: Lease, tensor: str, params: dict[str, Any]) -> _Binding:
        name = params.get(REGION)
        if not isinstance(name, str):
            raise invalid_arg(
                f"invalid value type for '{REGION}' parameter for tensor '{tensor}', expected string"
            )
        # Both front ends have made sure of a byte size (HTTP reads a missing one as 0).
        size = params[BYTE_SIZE]
        offset = params.get(OFFSET, 0)
        for key, value in ((BYTE_SIZE, size), (OFFSET, offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise invalid_arg(
                    f"invalid value for '{key}' parameter for tensor '{tensor}', expected a "
                    "non-negative integer"
                )
        with self._lock:
            region: Region | None = self._system.get(name) or self._cuda.get(name)
            if region is None:
                raise ServerError(Code.NOT_FOUND, f"Unable to find shared memory region: '{name}'")
            if offset >= region.byte_size:
                raise invalid_arg(f"Invalid offset for shared memory region: '{name}'")
            # Triton compares offset + size - 1 with the region's last byte, unsigned: a size
            # and offset of 0 wrap around and are refused too.
            if offset + size > region.byte_size or offset + size == 0:
                raise invalid_arg(f"Invalid offset + byte size for shared memory region: '{name}'")
            region.users += 1
            lease.regions.append(region)
        return _Binding(region, offset, size)

    def _release(self, regions: Iterable[Region]) -> None:
        idle: list[Region] = []
        with self._lock:
            for region in regions:
                region.users -= 1
                if region.retired and region.users == 0:
                    idle.append(region)
        for region in idle:
            region.close()


def _map(name: str, key: str, offset: int, byte_size: int) -> mmap.mmap:
    path = _shm_path(key)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        raise ServerError(Code.INTERNAL, f"Unable to open shared memory region: '{key}'") from None
    try:
        size = os.fstat(fd).st_size
        if byte_size == 0 or offset + byte_size > size:
            raise invalid_arg(f"failed to register shared memory region '{name}': invalid args")
        # Mapped from the start of the object: mmap offsets must be page-aligned, region
        # offsets need not be, so views add the region offset instead.
        return mmap.mmap(fd, offset + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise invalid_arg(
            f"failed to register shared memory region '{name}': unable to process address space: "
            f"{exc.strerror}"
        ) from None
    finally:
        os.close(fd)


def _shm_path(key: str) -> str:
    """POSIX shm_open names live under /dev/shm on Linux; a key never names another path."""
    stripped = key[1:] if key.startswith("/") else key
    if not stripped or "/" in stripped or stripped in (".", ".."):
        raise ServerError(Code.INTERNAL, f"Unable to open shared memory region: '{key}'")
    return os.path.join("/dev/shm", stripped)


def _select(table: dict[str, Any], name: str, kind: str) -> list[Any]:
    """One region by name (NOT_FOUND in Triton's words when absent), or all by name."""
    if not name:
        return sorted(table.values(), key=lambda r: r.name)
    region = table.get(name)
    if region is None:
        raise ServerError(Code.NOT_FOUND, f"Unable to find {kind} shared memory region: '{name}'")
    return [region]
