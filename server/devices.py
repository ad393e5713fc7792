"""GPU and MIG discovery, and GPU telemetry for the metrics.

Everything that asks about devices goes through a ``DeviceLayer`` so machines without a GPU
can swap in ``FakeDeviceLayer``. The real layer asks the CUDA driver which devices this
process can use and in which order (that order is what ``gpus: [...]`` in a model config and
onnxruntime's ``device_id`` count in), and NVML what each of them is. Environment variables
such as ``CUDA_VISIBLE_DEVICES`` or ``NVIDIA_VISIBLE_DEVICES`` are left to the driver to
interpret: a container handed one MIG slice sees exactly that slice through both APIs.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int  # CUDA ordinal as this process sees it
    uuid: str  # "GPU-..." or, for a MIG slice, "MIG-..."
    name: str  # product name, e.g. "NVIDIA H100 80GB HBM3"
    is_mig: bool = False
    profile: str = ""  # MIG profile, e.g. "1g.10gb"
    parent_uuid: str = ""  # the physical GPU of a MIG slice
    memory_total: int = 0

    def describe(self) -> str:
        if self.is_mig:
            return f"MIG {self.profile or self.name} {self.uuid} (CUDA device {self.index}, on {self.parent_uuid or 'unknown GPU'})"
        return f"GPU {self.index} {self.name} {self.uuid}"

    @property
    def display_name(self) -> str:
        """What an instance's ``device_name`` carries: the MIG profile where there is one."""
        return self.profile if self.is_mig and self.profile else self.name


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One poll of one device; ``None`` where the device does not report the value (MIG
    slices have no utilisation or power of their own)."""

    uuid: str
    utilization: float | None = None  # 0.0-1.0
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    power_usage_w: float | None = None
    power_limit_w: float | None = None
    energy_mj: int | None = None  # millijoules since the driver loaded


class DeviceLayer:
    """Real devices, discovered through the CUDA driver and NVML when a driver is present."""

    def __init__(self) -> None:
        self._gpus: list[GpuDevice] | None = None
        self._lock = threading.Lock()

    def gpus(self) -> list[GpuDevice]:
        with self._lock:
            if self._gpus is None:
                self._gpus = discover()
                for gpu in self._gpus:
                    log.info("found %s", gpu.describe())
            return list(self._gpus)

    def sample(self, devices: Sequence[GpuDevice]) -> list[GpuSample]:
        """Telemetry for ``devices``; empty when NVML is unavailable."""
        nvml = _nvml()
        if nvml is None:
            return []
        samples = []
        for device in devices:
            try:
                handle = nvml.nvmlDeviceGetHandleByUUID(device.uuid)
            except Exception as exc:
                log.debug("NVML has no handle for %s: %s", device.uuid, exc)
                continue
            samples.append(_read_sample(nvml, handle, device.uuid))
        return samples


@dataclass
class FakeDeviceLayer(DeviceLayer):
    """Devices and telemetry given by a test."""

    devices: Sequence[GpuDevice] = ()
    samples: dict[str, GpuSample] = field(default_factory=dict)
    sample_calls: int = 0

    def __post_init__(self) -> None:
        super().__init__()
        self._gpus = list(self.devices)

    def sample(self, devices: Sequence[GpuDevice]) -> list[GpuSample]:
        self.sample_calls += 1
        return [self.samples[d.uuid] for d in devices if d.uuid in self.samples]


# --- discovery ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _NvmlDevice:
    uuid: str
    name: str
    is_mig: bool
    profile: str
    parent_uuid: str
    memory_total: int


def discover() -> list[GpuDevice]:
    """The devices this process can run on, in CUDA order."""
    known = {d.uuid: d for d in _nvml_devices()}
    cuda_uuids = _cuda_uuids()
    if cuda_uuids is None:
        # No CUDA driver library: the process cannot launch kernels, whatever NVML sees.
        if known:
            log.warning(
                "NVML reports %d device(s) but the CUDA driver is not loadable; using none",
                len(known),
            )
        return []
    found = []
    for ordinal, uuid in enumerate(cuda_uuids):
        match = known.get(uuid)
        if match is None:
            # CUDA and NVML spell MIG UUIDs differently on some drivers; match by the hex part.
            match = next((d for d in known.values() if _bare(d.uuid) == _bare(uuid)), None)
        if match is None:
            found.append(GpuDevice(ordinal, uuid, "unknown", uuid.startswith("MIG-")))
        else:
            found.append(
                GpuDevice(
                    ordinal,
                    match.uuid,
                    match.name,
                    match.is_mig,
                    match.profile,
                    match.parent_uuid,
                    match.memory_total,
                )
            )
    return found


def _bare(uuid: str) -> str:
    return uuid.split("-", 1)[1] if uuid[:4] in ("GPU-", "MIG-") else uuid


def mig_profile(name: str) -> str:
    """``"NVIDIA A100-SXM4-40GB MIG 1g.5gb"`` -> ``"1g.5gb"``."""
    marker = " MIG "
    return name.split(marker, 1)[1].strip() if marker in name else ""


_nvml_module: Any = None
_nvml_failed = False
_nvml_lock = threading.Lock()


def _nvml() -> Any:
    global _nvml_module, _nvml_failed
    with _nvml_lock:
        if _nvml_module is not None or _nvml_failed:
            return _nvml_module
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # no package or no driver: a CPU-only machine
            log.debug("NVML unavailable: %s", exc)
            _nvml_failed = True
            return None
        _nvml_module = pynvml
        return pynvml


def _nvml_devices() -> list[_NvmlDevice]:
    nvml = _nvml()
    if nvml is None:
        return []
    found: list[_NvmlDevice] = []
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:
        log.warning("GPU discovery through NVML failed: %s", exc)
        return []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
            found.append(_NvmlDevice(uuid, name, False, "", "", _memory_total(nvml, handle)))
            found.extend(_mig_devices(nvml, handle, uuid))
        except Exception as exc:
            log.warning("NVML could not describe GPU %d: %s", index, exc)
    return found


def _mig_devices(nvml: Any, parent: Any, parent_uuid: str) -> list[_NvmlDevice]:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(parent)
    except Exception:  # GPUs without MIG support
        return []
    if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
        return []
    slices = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(parent)):
        try:
            handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, slot)
        except Exception:  # an empty slot, or one not given to this container
            continue
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        name = _text(nvml.nvmlDeviceGetName(handle))
        slices.append(
            _NvmlDevice(
                uuid, name, True, mig_profile(name), parent_uuid, _memory_total(nvml, handle)
            )
        )
    return slices


def _memory_total(nvml: Any, handle: Any) -> int:
    try:
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    except Exception:
        return 0


def _read_sample(nvml: Any, handle: Any, uuid: str) -> GpuSample:
    def read(getter: str, *args: Any) -> Any:
        try:
            return getattr(nvml, getter)(handle, *args)
        except Exception:  # NVML_ERROR_NOT_SUPPORTED and friends: leave the gauge out
            return None

    util = read("nvmlDeviceGetUtilizationRates")
    memory = read("nvmlDeviceGetMemoryInfo")
    power = read("nvmlDeviceGetPowerUsage")
    limit = read("nvmlDeviceGetPowerManagementLimit")
    energy = read("nvmlDeviceGetTotalEnergyConsumption")
    return GpuSample(
        uuid,
        utilization=util.gpu / 100.0 if util is not None else None,
        memory_total_bytes=int(memory.total) if memory is not None else None,
        memory_used_bytes=int(memory.used) if memory is not None else None,
        power_usage_w=int(power) / 1000.0 if power is not None else None,
        power_limit_w=int(limit) / 1000.0 if limit is not None else None,
        energy_mj=int(energy) if energy is not None else None,
    )


def _cuda_uuids() -> list[str] | None:
    """UUIDs of the devices CUDA enumerates for this process, in ordinal order; None when
    the driver library cannot be loaded, [] when it loads but finds no device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if cuda.cuInit(0) != 0:
        return []
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    get_uuid = getattr(cuda, "cuDeviceGetUuid_v2", None) or cuda.cuDeviceGetUuid
    uuids = []
    for ordinal in range(count.value):
        device = ctypes.c_int(0)
        raw = (ctypes.c_ubyte * 16)()
        if cuda.cuDeviceGet(ctypes.byref(device), ordinal) != 0 or get_uuid(raw, device) != 0:
            continue
        # CUDA does not say whether an ordinal is a MIG slice; NVML does, matched by the hex.
        uuids.append(format_uuid(bytes(raw)))
    return uuids


def format_uuid(raw: bytes, mig: bool = False) -> str:
    """16 raw bytes -> ``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`` as NVML prints them."""
    h = raw.hex()
    body = f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
    return ("MIG-" if mig else "GPU-") + body


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_default: DeviceLayer | None = None


def default_layer() -> DeviceLayer:
    global _default
    if _default is None:
        _default = DeviceLayer()
    return _default
