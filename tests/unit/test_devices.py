"""Device discovery (CUDA order, NVML descriptions, MIG slices), GPU telemetry, and how
model instances are placed on devices, all without a GPU."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest

from server import devices
from server.backends import onnxruntime as ort_backend
from server.backends.base import InstanceSpec
from server.devices import FakeDeviceLayer, GpuDevice, format_uuid, mig_profile
from server.errors import Code, ServerError
from server.protocol.generated import model_config_pb2 as mc
from server.repository.config import validate_instance_groups
from server.repository.manager import ModelManager, instance_specs
from server.scheduler import create_scheduler
from tests.models import write_onnx_add_sub

MIG_NAME = "NVIDIA A100-SXM4-40GB MIG 1g.5gb"


class NotSupported(Exception):
    pass


class FakeNvml:
    """Two GPUs: GPU 0 plain, GPU 1 in MIG mode with slots 0 and 2 holding slices."""

    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self) -> None:
        self.gpus = [
            SimpleNamespace(
                uuid="GPU-00000000-0000-0000-0000-000000000000", name="NVIDIA H100", mig=0, mem=80
            ),
            SimpleNamespace(
                uuid="GPU-11111111-1111-1111-1111-111111111111",
                name="NVIDIA A100-SXM4-40GB",
                mig=1,
                mem=40,
            ),
        ]
        self.slices = {
            0: SimpleNamespace(
                uuid="MIG-22222222-2222-2222-2222-222222222222", name=MIG_NAME, mig=None, mem=5
            ),
            2: SimpleNamespace(
                uuid="MIG-33333333-3333-3333-3333-333333333333", name=MIG_NAME, mig=None, mem=5
            ),
        }

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        for handle in [*self.gpus, *self.slices.values()]:
            if handle.uuid == uuid:
                return handle
        raise NotSupported(uuid)

    def nvmlDeviceGetUUID(self, handle: Any) -> bytes:
        return handle.uuid.encode()

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return SimpleNamespace(total=handle.mem, used=handle.mem // 4)

    def nvmlDeviceGetMigMode(self, handle: Any) -> tuple[int, int]:
        if handle.mig is None:
            raise NotSupported("MIG mode")
        return handle.mig, handle.mig

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, slot: int) -> Any:
        if slot not in self.slices:
            raise NotSupported("empty slot")
        return self.slices[slot]

    def _whole_gpu_only(self, handle: Any) -> None:
        if handle.mig is None:
            raise NotSupported("a MIG slice has no value of its own")

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        self._whole_gpu_only(handle)
        return SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        self._whole_gpu_only(handle)
        return 123_456

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        self._whole_gpu_only(handle)
        return 700_000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        self._whole_gpu_only(handle)
        return 9_000


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setattr(devices, "_nvml", lambda: fake)
    return fake


def test_discovery_follows_cuda_order_and_describes_from_nvml(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CUDA enumerates only what this process may use, here the second slice, then GPU 0.
    monkeypatch.setattr(
        devices,
        "_cuda_uuids",
        lambda: ["GPU-33333333-3333-3333-3333-333333333333", nvml.gpus[0].uuid],
    )
    found = devices.discover()
    assert [d.index for d in found] == [0, 1]
    mig, whole = found
    assert mig.uuid == "MIG-33333333-3333-3333-3333-333333333333"
    assert mig.is_mig and mig.profile == "1g.5gb" and mig.parent_uuid == nvml.gpus[1].uuid
    assert mig.display_name == "1g.5gb" and mig.memory_total == 5
    assert "MIG 1g.5gb" in mig.describe()
    assert not whole.is_mig and whole.name == "NVIDIA H100" and whole.display_name == "NVIDIA H100"


def test_no_cuda_driver_means_no_usable_gpu(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "_cuda_uuids", lambda: None)
    assert devices.discover() == []


def test_cuda_device_unknown_to_nvml_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_nvml", lambda: None)
    monkeypatch.setattr(devices, "_cuda_uuids", lambda: ["GPU-abc"])
    assert devices.discover() == [GpuDevice(0, "GPU-abc", "unknown", False)]


def test_telemetry_leaves_out_what_a_mig_slice_cannot_report(nvml: FakeNvml) -> None:
    whole = GpuDevice(0, nvml.gpus[1].uuid, "A100")
    mig = GpuDevice(1, nvml.slices[0].uuid, MIG_NAME, True, "1g.5gb")
    gone = GpuDevice(2, "GPU-gone", "lost")
    samples = devices.DeviceLayer().sample([whole, mig, gone])
    assert [s.uuid for s in samples] == [whole.uuid, mig.uuid]
    full, part = samples
    assert (
        full.utilization == 0.42 and full.power_usage_w == 123.456 and full.power_limit_w == 700.0
    )
    assert (
        full.energy_mj == 9_000 and full.memory_total_bytes == 40 and full.memory_used_bytes == 10
    )
    assert part.utilization is None and part.power_usage_w is None and part.energy_mj is None
    assert part.memory_total_bytes == 5


def test_uuid_and_profile_helpers() -> None:
    assert format_uuid(bytes(range(16))) == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert format_uuid(bytes(16), mig=True).startswith("MIG-")
    assert mig_profile(MIG_NAME) == "1g.5gb"
    assert mig_profile("NVIDIA H100") == ""


def test_fake_layer_reports_given_devices() -> None:
    gpu = GpuDevice(0, "GPU-x", "fake")
    layer = FakeDeviceLayer([gpu])
    assert layer.gpus() == [gpu]
    assert layer.sample([gpu]) == [] and layer.sample_calls == 1


# --- placement ---------------------------------------------------------------------
def config_with_group(kind: int, gpus: list[int], count: int = 1) -> Any:
    config = mc.ModelConfig(name="m")
    group = config.instance_group.add(name="g", kind=kind, count=count)
    group.gpus.extend(gpus)
    return config


GPUS = [
    GpuDevice(0, "GPU-a", "NVIDIA H100"),
    GpuDevice(1, "MIG-b", MIG_NAME, True, "1g.5gb", "GPU-p"),
]


def test_instances_pinned_to_listed_devices() -> None:
    specs = instance_specs(config_with_group(mc.ModelInstanceGroup.KIND_GPU, [1, 0], count=2), GPUS)
    # Triton's names and order: "<group>_<index>", the same on every GPU of the group.
    assert [(s.name, s.device_id, s.device_uuid, s.device_name) for s in specs] == [
        ("g_0", 1, "MIG-b", "1g.5gb"),
        ("g_0", 0, "GPU-a", "NVIDIA H100"),
        ("g_1", 1, "MIG-b", "1g.5gb"),
        ("g_1", 0, "GPU-a", "NVIDIA H100"),
    ]
    assert all(s.kind == "GPU" for s in specs)


@pytest.mark.parametrize(
    ("kind", "gpus", "gpu_count", "message"),
    [
        (
            "KIND_GPU",
            [],
            0,
            "instance group g of model m has kind KIND_GPU but no GPUs are available",
        ),
        (
            "KIND_GPU",
            [5],
            2,
            "instance group g of model m specifies invalid or unsupported gpu id 5. GPUs with at "
            "least the minimum required CUDA compute compatibility of 6.000000 are: 0, 1",
        ),
        (
            "KIND_GPU",
            [-1],
            2,
            "instance group g of model m specifies invalid or unsupported gpu id -1. GPUs with at "
            "least the minimum required CUDA compute compatibility of 6.000000 are: 0, 1",
        ),
        (
            "KIND_CPU",
            [0],
            1,
            "instance group g of model m has kind KIND_CPU but specifies one or more GPUs",
        ),
        (
            "KIND_MODEL",
            [0],
            1,
            "instance group g of model m has kind KIND_MODEL but specifies one or more GPUs",
        ),
    ],
)
def test_instance_groups_are_checked_as_triton_checks_them(
    kind: str, gpus: list[int], gpu_count: int, message: str
) -> None:
    config = config_with_group(mc.ModelInstanceGroup.Kind.Value(kind), gpus)
    with pytest.raises(ServerError) as err:
        validate_instance_groups(config, gpu_count)
    assert err.value.code == Code.INVALID_ARG
    assert err.value.message == message


def test_listed_gpus_that_exist_pass_the_checks() -> None:
    config = config_with_group(mc.ModelInstanceGroup.KIND_GPU, [1, 0])
    validate_instance_groups(config, 2)
    validate_instance_groups(config_with_group(mc.ModelInstanceGroup.KIND_CPU, []), 0)


async def test_manager_kind_gpu_on_cpu_machine_is_unavailable_and_auto_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_onnx_add_sub(tmp_path, "on_gpu", config_extra="instance_group [ { kind: KIND_GPU } ]")
    write_onnx_add_sub(
        tmp_path, "on_auto", config_extra="instance_group [ { kind: KIND_AUTO count: 1 } ]"
    )
    manager = ModelManager([tmp_path], create_scheduler, devices=FakeDeviceLayer())
    with pytest.raises(ServerError) as err:
        await manager.load("on_gpu")
    assert "has kind KIND_GPU but no GPUs are available" in err.value.message
    with caplog.at_level(logging.INFO, logger="server.repository.manager"):
        await manager.load("on_auto")
    assert "KIND_AUTO and no usable GPU was found; running it on CPU" in caplog.text
    assert manager.get("on_auto").instances[0].kind == "CPU"
    await manager.unload_all(drain_timeout=1.0)


class RecordingBackend:
    """Stands in for a framework: records where each instance was asked to run."""

    name = "onnxruntime"

    def __init__(self) -> None:
        self.placed: list[InstanceSpec] = []

    def autocomplete(self, config: Any, model_dir: Path, version_dir: Path | None) -> None:
        pass

    def gpu_unusable_reason(self) -> str | None:
        return None

    def load(self, config: Any, view: Any, version_dir: Path, instance: InstanceSpec) -> Any:
        self.placed.append(instance)
        return SimpleNamespace(execute=lambda requests, timing: [], unload=lambda: None)


async def test_manager_pins_instances_and_logs_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RecordingBackend()
    monkeypatch.setattr("server.repository.manager.get_backend", lambda name: backend)
    write_onnx_add_sub(
        tmp_path, "pinned", config_extra="instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]"
    )
    manager = ModelManager([tmp_path], create_scheduler, devices=FakeDeviceLayer(GPUS))
    with caplog.at_level(logging.INFO, logger="server.repository.manager"):
        await manager.load("pinned")
    assert [(s.device_id, s.device_uuid, s.device_name) for s in backend.placed] == [
        (1, "MIG-b", "1g.5gb")
    ]
    assert manager.get("pinned").instances == backend.placed
    assert "MIG 1g.5gb MIG-b (CUDA device 1" in caplog.text
    await manager.unload_all(drain_timeout=1.0)


class FakeSession:
    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        self.requested = providers
        self.started = [p[0] if isinstance(p, tuple) else p for p in providers]
        if not FakeOrt.cuda_starts:
            self.started = [p for p in self.started if p != "CUDAExecutionProvider"]
        FakeOrt.sessions.append(self)

    def get_providers(self) -> list[str]:
        return self.started

    def get_inputs(self) -> list[Any]:
        return []

    def get_outputs(self) -> list[Any]:
        return []


class FakeOrt:
    cuda_starts = True
    sessions: list[FakeSession] = []
    InferenceSession = FakeSession

    @staticmethod
    def get_available_providers() -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    @staticmethod
    def SessionOptions() -> Any:  # noqa: N802 - onnxruntime's name
        # Accepts whatever tuning the backend applies; placement is what is checked here.
        return MagicMock()


@pytest.mark.parametrize("cuda_starts", [True, False])
def test_onnxruntime_cuda_provider_gets_the_device_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda_starts: bool
) -> None:
    monkeypatch.setattr(ort_backend, "_ort", lambda: FakeOrt)
    monkeypatch.setattr(FakeOrt, "cuda_starts", cuda_starts)
    monkeypatch.setattr(FakeOrt, "sessions", [])
    model_dir = write_onnx_add_sub(tmp_path, "m")
    config = mc.ModelConfig(name="m", default_model_filename="model.onnx")
    spec = InstanceSpec("m_1_0", "m", "GPU", 1, "MIG-b", "1g.5gb")
    backend = ort_backend.OnnxRuntimeBackend()
    if cuda_starts:
        instance = backend.load(
            config, SimpleNamespace(inputs={}, outputs={}), model_dir / "1", spec
        )
        # A run on a GPU waits on the device: never on the event loop.
        assert instance.short_runs_inline is False
    else:
        with pytest.raises(ServerError) as err:
            backend.load(config, SimpleNamespace(inputs={}, outputs={}), model_dir / "1", spec)
        assert err.value.code == Code.UNAVAILABLE
        assert (
            "could not start onnxruntime's CUDA provider on device 1 (MIG-b)" in err.value.message
        )
    assert FakeOrt.sessions[0].requested[0] == ("CUDAExecutionProvider", {"device_id": 1})


class CudaLessOrt:
    """onnxruntime-gpu on a machine without its CUDA libraries: the CUDA provider is listed,
    and sessions asked for it quietly start on the CPU (real CPU sessions)."""

    def __init__(self, listed: bool = True) -> None:
        import onnxruntime

        self._real = onnxruntime
        self._listed = listed
        self.requested: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_available_providers(self) -> list[str]:
        cpu = ["CPUExecutionProvider"]
        return ["CUDAExecutionProvider", *cpu] if self._listed else cpu

    def InferenceSession(  # noqa: N802 - onnxruntime's name
        self, model: Any, sess_options: Any = None, providers: Any = None
    ) -> Any:
        self.requested.append(providers)
        return self._real.InferenceSession(
            model, sess_options=sess_options, providers=["CPUExecutionProvider"]
        )


@pytest.mark.parametrize("listed", [True, False])
async def test_kind_auto_runs_on_cpu_where_onnxruntime_cannot_use_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, listed: bool
) -> None:
    fake = CudaLessOrt(listed)
    monkeypatch.setattr(ort_backend, "_ort", lambda: fake)
    backend = ort_backend.OnnxRuntimeBackend()
    monkeypatch.setattr("server.repository.manager.get_backend", lambda name: backend)
    write_onnx_add_sub(
        tmp_path, "on_auto", config_extra="instance_group [ { kind: KIND_AUTO count: 3 } ]"
    )
    write_onnx_add_sub(tmp_path, "no_group")
    write_onnx_add_sub(
        tmp_path, "on_gpu", config_extra="instance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]"
    )
    manager = ModelManager([tmp_path], create_scheduler, devices=FakeDeviceLayer(GPUS))
    with caplog.at_level(logging.WARNING, logger="server.repository.manager"):
        await manager.load("on_auto")
        await manager.load("no_group")
    reason = (
        "onnxruntime's CUDA provider could not start"
        if listed
        else f"this onnxruntime ({fake.__version__}) has no CUDA provider"
    )
    for name, group in (("on_auto", "on_auto_0"), ("no_group", "no_group")):
        assert f"model '{name}': instance group '{group}' is KIND_AUTO and {reason}" in caplog.text
    # The groups read back as where they run, with the CPU's default count where none was given.
    groups = {
        name: [(g.kind, list(g.gpus), g.count) for g in manager.get(name).config.instance_group]
        for name in ("on_auto", "no_group")
    }
    cpu = mc.ModelInstanceGroup.KIND_CPU
    assert groups == {"on_auto": [(cpu, [], 3)], "no_group": [(cpu, [], 2)]}
    assert {s.kind for s in manager.get("on_auto").instances} == {"CPU"}
    # CUDA was tried once, on the probe model, and only where the provider is listed.
    probes = [p for p in fake.requested if p == [("CUDAExecutionProvider", {"device_id": 0})]]
    assert len(probes) == (1 if listed else 0)
    # A group the configuration puts on a GPU is not moved: it fails with the reason.
    with pytest.raises(ServerError) as err:
        await manager.load("on_gpu")
    assert "version 1 is at UNAVAILABLE state" in err.value.message
    assert ("could not start onnxruntime's CUDA provider" if listed else "is not available") in (
        err.value.message
    )
    await manager.unload_all(drain_timeout=1.0)


async def test_kind_auto_stays_on_the_gpu_where_onnxruntime_can_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort_backend, "_ort", lambda: FakeOrt)
    monkeypatch.setattr(FakeOrt, "cuda_starts", True)
    monkeypatch.setattr(FakeOrt, "sessions", [])
    backend = ort_backend.OnnxRuntimeBackend()
    assert backend.gpu_unusable_reason() is None
    assert FakeOrt.sessions[0].requested == [("CUDAExecutionProvider", {"device_id": 0})]
    monkeypatch.setattr(FakeOrt, "cuda_starts", False)
    assert backend.gpu_unusable_reason() is None  # probed once per process


def test_pytorch_without_cuda_is_not_used_for_kind_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.backends import pytorch

    for available, expected in ((False, "this torch (2.9.0+cpu) cannot use CUDA"), (True, None)):
        fake = SimpleNamespace(
            __version__="2.9.0+cpu", cuda=SimpleNamespace(is_available=lambda a=available: a)
        )
        monkeypatch.setattr(pytorch, "import_torch", lambda model, t=fake: t)
        assert pytorch.PyTorchBackend().gpu_unusable_reason() == expected
