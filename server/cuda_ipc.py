"""Device memory other processes export with ``cudaIpcGetMemHandle``, opened so the shared
memory registry can copy tensors in and out of it.

The registry only sees ``IpcLayer``: ``CudaRuntimeIpc`` talks to the CUDA runtime through
cuda-python, and ``HostIpc`` stands in for it on machines without a GPU, with POSIX shared
memory playing the part of device memory. Which one a new registry uses is
``default_layer()``; ``set_default_layer`` swaps it before the server builds its core.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from typing import Any, Protocol

import numpy as np

from server.devices import DeviceLayer
from server.devices import default_layer as default_devices

HANDLE_SIZE = 64  # sizeof(cudaIpcMemHandle_t)


class IpcError(Exception):
    """Opening, copying or closing failed; the message says what the runtime reported."""


class DeviceMemory(Protocol):
    def read(self, offset: int, size: int) -> memoryview: ...

    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    def close(self) -> None: ...


class IpcLayer(Protocol):
    def unavailable_reason(self) -> str | None:
        """Why this server cannot open IPC handles at all, or None when it can."""
        ...

    def device_count(self) -> int: ...

    def open(self, handle: bytes, device_id: int, byte_size: int) -> DeviceMemory: ...


# --- the CUDA runtime -------------------------------------------------------------------
def _import_runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python before 12.6 spells it this way
    return runtime


class CudaRuntimeIpc:
    """cuda-python's runtime bindings; the devices are those ``devices`` discovers, whose
    ordinals are the CUDA ordinals clients pass as ``device_id``."""

    def __init__(self, devices: DeviceLayer | None = None) -> None:
        self._devices = devices
        self._rt: Any = None
        self._reason: str | None = None
        self._probed = False
        self._lock = threading.Lock()

    def _probe(self) -> None:
        with self._lock:
            if self._probed:
                return
            self._probed = True
            try:
                self._rt = _import_runtime()
            except ImportError:
                self._reason = (
                    "CUDA IPC needs the 'cuda-python' package, which this server cannot import"
                )
                return
            err, count = self._rt.cudaGetDeviceCount()
            if _failed(self._rt, err):
                self._reason = f"no usable CUDA device ({_describe(self._rt, err)})"
            elif count == 0 or self.device_count() == 0:
                self._reason = "no CUDA device is visible to this server"

    def unavailable_reason(self) -> str | None:
        self._probe()
        return self._reason

    def device_count(self) -> int:
        return len((self._devices or default_devices()).gpus())

    def open(self, handle: bytes, device_id: int, byte_size: int) -> DeviceMemory:
        self._probe()
        rt = self._rt
        _check(rt, rt.cudaSetDevice(device_id)[0], "failed to set CUDA device")
        ipc_handle = rt.cudaIpcMemHandle_t()
        # The struct is a plain 64-byte array; newer bindings expose no field to assign.
        ctypes.memmove(ipc_handle.getPtr(), handle, HANDLE_SIZE)
        err, pointer = rt.cudaIpcOpenMemHandle(ipc_handle, rt.cudaIpcMemLazyEnablePeerAccess)
        _check(rt, err, "failed to open CUDA IPC handle")
        memory = _RuntimeMemory(rt, int(pointer), device_id, byte_size)
        available = _allocation_size(int(pointer))
        if available is not None and byte_size > available:
            memory.close()
            raise IpcError(
                f"byte_size {byte_size} exceeds the {available} bytes of the exported allocation"
            )
        return memory


class _RuntimeMemory:
    def __init__(self, rt: Any, pointer: int, device_id: int, byte_size: int) -> None:
        self._rt = rt
        self.pointer = pointer
        self.device_id = device_id
        self.byte_size = byte_size

    def read(self, offset: int, size: int) -> memoryview:
        host = np.empty(size, dtype=np.uint8)
        if size:
            rt = self._rt
            _check(rt, rt.cudaSetDevice(self.device_id)[0], "failed to set CUDA device")
            (err,) = rt.cudaMemcpy(
                host.ctypes.data,
                self.pointer + offset,
                size,
                rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            )
            _check(rt, err, "failed to copy from CUDA shared memory")
        return host.data

    def write(self, offset: int, data: bytes | memoryview) -> None:
        host = np.frombuffer(data, dtype=np.uint8)
        if host.size:
            rt = self._rt
            _check(rt, rt.cudaSetDevice(self.device_id)[0], "failed to set CUDA device")
            (err,) = rt.cudaMemcpy(
                self.pointer + offset,
                host.ctypes.data,
                host.size,
                rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            )
            _check(rt, err, "failed to copy to CUDA shared memory")

    def close(self) -> None:
        rt = self._rt
        rt.cudaSetDevice(self.device_id)
        (err,) = rt.cudaIpcCloseMemHandle(self.pointer)
        _check(rt, err, "failed to close CUDA IPC handle")


def _allocation_size(pointer: int) -> int | None:
    """The size of the allocation behind ``pointer``, where the driver bindings tell it."""
    try:
        from cuda.bindings import driver
    except ImportError:
        return None
    err, _base, size = driver.cuMemGetAddressRange(pointer)
    return int(size) if int(err) == 0 else None


def _failed(rt: Any, err: Any) -> bool:
    return err != rt.cudaError_t.cudaSuccess


def _describe(rt: Any, err: Any) -> str:
    try:
        _, text = rt.cudaGetErrorString(err)
        text = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:
        text = ""
    name = getattr(err, "name", str(err))
    return f"{name}: {text}" if text else name


def _check(rt: Any, err: Any, what: str) -> None:
    if _failed(rt, err):
        raise IpcError(f"{what}: {_describe(rt, err)}")


# --- host memory standing in for device memory --------------------------------------------
FAKE_PREFIX = b"hostipc:"


def host_handle(shm_name: str) -> bytes:
    """The handle ``HostIpc`` opens for a POSIX shared memory object (made by any process)."""
    encoded = FAKE_PREFIX + shm_name.lstrip("/").encode()
    if len(encoded) > HANDLE_SIZE:
        raise ValueError(f"shared memory name too long for a handle: {shm_name!r}")
    return encoded.ljust(HANDLE_SIZE, b"\0")


class HostIpc:
    """An IPC layer for machines without a GPU: a handle names a POSIX shared memory object,
    so another process can export "device memory" the way a CUDA client would."""

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.opened = 0
        self.closed = 0

    def unavailable_reason(self) -> str | None:
        return None

    def device_count(self) -> int:
        return self.devices

    def open(self, handle: bytes, device_id: int, byte_size: int) -> DeviceMemory:
        if not handle.startswith(FAKE_PREFIX):
            raise IpcError("failed to open CUDA IPC handle: cudaErrorInvalidValue")
        name = handle[len(FAKE_PREFIX) :].rstrip(b"\0").decode()
        if not name or "/" in name:
            raise IpcError("failed to open CUDA IPC handle: cudaErrorInvalidValue")
        try:
            fd = os.open(os.path.join("/dev/shm", name), os.O_RDWR)
        except OSError:
            raise IpcError("failed to open CUDA IPC handle: cudaErrorInvalidValue") from None
        try:
            if byte_size > os.fstat(fd).st_size:
                raise IpcError(f"byte_size {byte_size} exceeds the exported allocation")
            buffer = mmap.mmap(fd, byte_size)
        finally:
            os.close(fd)
        self.opened += 1
        return _HostMemory(self, buffer)


class _HostMemory:
    def __init__(self, layer: HostIpc, buffer: mmap.mmap) -> None:
        self._layer = layer
        self._buffer = buffer

    def read(self, offset: int, size: int) -> memoryview:
        # A copy, as a device-to-host transfer would make.
        return memoryview(bytearray(self._buffer[offset : offset + size]))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._buffer[offset : offset + len(data)] = bytes(data)

    def close(self) -> None:
        self._buffer.close()
        self._layer.closed += 1


# --- the layer new registries use -------------------------------------------------------
_default: IpcLayer | None = None


def default_layer() -> IpcLayer:
    global _default
    if _default is None:
        _default = CudaRuntimeIpc()
    return _default


def set_default_layer(layer: IpcLayer | None) -> None:
    """Make registries built from now on use ``layer`` (None: the CUDA runtime again)."""
    global _default
    _default = layer
