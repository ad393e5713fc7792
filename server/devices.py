"""GPU discovery. Everything that asks about devices goes through ``DeviceLayer`` so tests on
machines without a GPU can swap in a fake one."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int  # CUDA ordinal as this process sees it
    uuid: str
    name: str
    is_mig: bool = False


class DeviceLayer:
    """Real devices, discovered through NVML (nvidia-ml-py) when a driver is present."""

    def __init__(self) -> None:
        self._gpus: list[GpuDevice] | None = None

    def gpus(self) -> list[GpuDevice]:
        if self._gpus is None:
            self._gpus = _discover_nvml()
        return self._gpus


def _discover_nvml() -> list[GpuDevice]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: a CPU-only machine
        return []
    found: list[GpuDevice] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            found.append(GpuDevice(index, _text(uuid), _text(name)))
    except Exception as exc:
        log.warning("GPU discovery through NVML failed: %s", exc)
    return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_default: DeviceLayer | None = None


def default_layer() -> DeviceLayer:
    global _default
    if _default is None:
        _default = DeviceLayer()
    return _default
