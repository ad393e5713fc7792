"""The /metrics ASGI app on a fake core and a fake device layer: routes, content type, the
GPU poller, series following the READY versions, and the prometheus-client extras."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.backends.base import InstanceSpec, Timing
from server.cli import parse_args
from server.devices import FakeDeviceLayer, GpuDevice, GpuSample
from server.metrics.endpoint import MetricsApp, create_metrics_app
from server.metrics.latency import LatencyRecorder
from server.repository.manager import READY, LoadedVersion
from server.stats import ModelStats

H100 = GpuDevice(0, "GPU-aaaa", "NVIDIA H100 80GB HBM3", memory_total=80)
MIG = GpuDevice(1, "MIG-bbbb", "NVIDIA A100 MIG 1g.10gb", True, "1g.10gb", "GPU-cccc", 10)


@dataclass
class FakeManager:
    versions: list[LoadedVersion] = field(default_factory=list)
    listeners: list[Any] = field(default_factory=list)
    devices: Any = None

    def ready_versions(self) -> list[LoadedVersion]:
        return [v for v in self.versions if v.state == READY]

    def load(self, loaded: LoadedVersion) -> None:
        self.versions.append(loaded)
        for listener in self.listeners:
            listener(loaded.stats.name, loaded, True)


@dataclass
class FakeCore:
    manager: FakeManager


class FakeScheduler:
    def __init__(self, depths: dict[int, int], delay_us: int) -> None:
        self._depths = depths
        self.current_delay_us = delay_us

    def queue_depths(self) -> dict[int, int]:
        return self._depths


def loaded_version(name: str, scheduler: Any = None) -> LoadedVersion:
    stats = ModelStats(name, "1", load_duration_s=1.5)
    spec = InstanceSpec(f"{name}_0", name, "CPU")
    return LoadedVersion(1, READY, scheduler=scheduler, stats=stats, instances=[spec])


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture
def make_app() -> Iterator[Any]:
    apps: list[MetricsApp] = []

    def make(args: list[str], manager: FakeManager, devices: Any = None) -> MetricsApp:
        settings = parse_args(["--model-repository", "/nonexistent", *args])
        app = create_metrics_app(FakeCore(manager), settings, devices)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


async def get(app: MetricsApp, path: str = "/metrics", method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        return await client.request(method, path)


async def test_routes_and_content_type(make_app: Any) -> None:
    app = make_app([], FakeManager([loaded_version("m")]))
    for path in ("/metrics", "/metrics/"):
        response = await get(app, path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "nv_inference_request_success" in families(response.text)
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        response = await get(app, "/metrics", method)
        assert response.status_code == 405
    assert (await get(app, "/elsewhere")).text == ""


async def test_series_follow_ready_versions(make_app: Any) -> None:
    manager = FakeManager()
    app = make_app([], manager)
    assert "nv_inference_count" not in families((await get(app)).text)
    first, second = loaded_version("first"), loaded_version("second")
    manager.load(first)
    manager.load(second)
    models = {
        s.labels["model"] for s in families((await get(app)).text)["nv_inference_count"].samples
    }
    assert models == {"first", "second"}
    first.state = "UNAVAILABLE"
    text = (await get(app)).text
    models = {s.labels["model"] for s in families(text)["nv_inference_count"].samples}
    assert models == {"second"}
    assert 'model="first"' not in text


async def test_gpu_gauges_from_the_device_layer(make_app: Any) -> None:
    layer = FakeDeviceLayer(
        [H100, MIG],
        {
            H100.uuid: GpuSample(H100.uuid, 0.75, 80, 30, 300.0, 700.0, 1_000_000),
            MIG.uuid: GpuSample(MIG.uuid, None, 10, 2, None, None, None),
        },
    )
    app = make_app(["--metrics-interval-ms", "60000"], FakeManager(), layer)
    found = families((await get(app)).text)
    util = {s.labels["gpu_uuid"]: s.value for s in found["nv_gpu_utilization"].samples}
    assert util == {"GPU-aaaa": 0.75}
    used = {s.labels["gpu_uuid"]: s.value for s in found["nv_gpu_memory_used_bytes"].samples}
    assert used == {"GPU-aaaa": 30, "MIG-bbbb": 2}
    # Energy counts from the first poll, not from when the driver loaded.
    assert found["nv_energy_consumption"].samples[0].value == 0
    layer.samples[H100.uuid] = GpuSample(H100.uuid, 0.5, 80, 30, 300.0, 700.0, 1_004_000)
    app.poller.poll_once()
    found = families((await get(app)).text)
    assert found["nv_energy_consumption"].samples[0].value == 4.0
    assert found["nv_gpu_utilization"].samples[0].value == 0.5


async def test_gpu_metrics_switched_off_or_absent(make_app: Any) -> None:
    layer = FakeDeviceLayer([H100], {H100.uuid: GpuSample(H100.uuid, 0.5)})
    app = make_app(["--allow-gpu-metrics=false"], FakeManager(), layer)
    assert "nv_gpu_" not in (await get(app)).text
    assert layer.sample_calls == 0
    no_gpu = make_app([], FakeManager(), FakeDeviceLayer())
    text = (await get(no_gpu)).text
    assert "nv_gpu_" not in text
    assert "nv_cpu_utilization" in text


async def test_cpu_metrics_flag(make_app: Any) -> None:
    on = families((await get(make_app([], FakeManager()))).text)
    assert 0.0 <= on["nv_cpu_utilization"].samples[0].value <= 1.0
    total = on["nv_cpu_memory_total_bytes"].samples[0].value
    assert 0 < on["nv_cpu_memory_used_bytes"].samples[0].value <= total
    off = (await get(make_app(["--allow-cpu-metrics=false"], FakeManager()))).text
    assert "nv_cpu_" not in off


async def test_summaries_attach_to_models_loaded_before_and_after(make_app: Any) -> None:
    before = loaded_version("before")
    manager = FakeManager([before])
    app = make_app(["--metrics-config", "summary_latencies=true"], manager)
    after = loaded_version("after")
    manager.load(after)
    for loaded in (before, after):
        assert isinstance(loaded.stats.observer, LatencyRecorder)
        loaded.stats.record_queue(0, 1_000_000)
        loaded.stats.record_success(0, 2_000_000)
    found = families((await get(app)).text)
    counts = {
        s.labels["model"]: s.value
        for s in found["nv_inference_request_summary_us"].samples
        if s.name.endswith("_count")
    }
    assert counts == {"before": 1, "after": 1}


async def test_extras_batch_size_queue_delay_and_queue_depth(make_app: Any) -> None:
    loaded = loaded_version("batched", FakeScheduler({1: 3, 2: 0}, 250))
    stats = loaded.stats
    for size in (1, 4, 4, 8):
        stats.record_execution(size, 1, Timing(0, 1, 2, 3))
    stats.record_queue(0, 80_000)  # 80 us
    stats.record_queue(0, 3_000_000)  # 3 ms
    app = make_app([], FakeManager([loaded]))
    text = (await get(app)).text
    found = families(text)
    batch = {
        s.labels["le"]: s.value
        for s in found["inference_executed_batch_size"].samples
        if s.name.endswith("_bucket")
    }
    assert batch["1.0"] == 1 and batch["2.0"] == 1 and batch["4.0"] == 3 and batch["8.0"] == 4
    assert batch["+Inf"] == 4
    total = [
        s.value for s in found["inference_executed_batch_size"].samples if s.name.endswith("_sum")
    ]
    assert total == [17]
    delay = {
        s.labels["le"]: s.value
        for s in found["inference_queue_delay_us"].samples
        if s.name.endswith("_bucket")
    }
    assert (
        delay["50.0"] == 0 and delay["100.0"] == 1 and delay["2500.0"] == 1 and delay["5000.0"] == 2
    )
    depth = {s.labels["priority"]: s.value for s in found["inference_queue_depth"].samples}
    assert depth == {"1": 3, "2": 0}
    assert found["inference_batcher_delay_us"].samples[0].value == 250
    assert found["process_cpu_seconds"].type == "counter"
    # The extras never carry Triton's family names.
    assert sum(line.startswith("# TYPE nv_inference_count ") for line in text.splitlines()) == 1


class BrokenScheduler:
    @property
    def current_delay_us(self) -> int:
        raise RuntimeError("scheduler torn down")


async def test_a_failing_extra_does_not_cost_the_triton_families(make_app: Any) -> None:
    app = make_app([], FakeManager([loaded_version("m", BrokenScheduler())]))
    response = await get(app)
    assert response.status_code == 200
    found = families(response.text)
    assert found["nv_inference_request_success"].samples[0].value == 0
    assert "inference_queue_delay_us" not in found
