"""Triton's metric families as our writer renders them, read back by prometheus-client's
text parser: names, types, labels and values."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.backends.base import InstanceSpec, Timing
from server.devices import GpuSample
from server.metrics.config import DEFAULT_QUANTILES, MetricsOptions, parse_metrics_config
from server.metrics.exposition import Family, format_value, render
from server.metrics.families import model_families, system_families
from server.metrics.latency import LatencyRecorder, Window
from server.metrics.poller import CpuSample, Snapshot
from server.repository.manager import READY, LoadedVersion
from server.stats import ModelStats

COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
GAUGES = ("nv_inference_pending_request_count", "nv_model_load_duration_secs")


def parse(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def version(
    name: str, number: int = 1, instances: list[InstanceSpec] | None = None
) -> LoadedVersion:
    stats = ModelStats(name, str(number), load_duration_s=0.25)
    specs = instances if instances is not None else [InstanceSpec(f"{name}_0", name, "CPU")]
    return LoadedVersion(number, READY, stats=stats, instances=specs)


def run_requests(stats: ModelStats, count: int, *, batch: int = 1) -> None:
    """Record ``count`` requests executed together as one batch of ``batch`` rows each."""
    start = 1_000_000
    for _ in range(count):
        stats.pending += 1
    for _ in range(count):
        stats.pending -= 1
        stats.record_queue(start, start + 2_500_000)
    timing = Timing(start + 2_500_000, start + 3_000_000, start + 7_000_000, start + 7_250_000)
    stats.record_execution(batch * count, count, timing)
    for _ in range(count):
        stats.record_success(start, start + 8_000_123)


def test_counters_keep_triton_names_and_types() -> None:
    loaded = version("simple")
    run_requests(loaded.stats, 3)
    text = render(model_families([loaded], MetricsOptions()))
    families = parse(text)
    for name in COUNTERS:
        assert families[name].type == "counter"
        assert f"# TYPE {name} counter" in text
    for name in GAUGES:
        assert families[name].type == "gauge"
    names = sample_names(text)
    assert not any(n.endswith(("_total", "_created")) for n in names), names
    assert names >= set(COUNTERS) | set(GAUGES)


def test_values_are_microseconds_of_the_statistics() -> None:
    loaded = version("simple")
    run_requests(loaded.stats, 3, batch=2)
    stats = loaded.stats
    text = render(model_families([loaded], MetricsOptions()))
    values = {
        s.name.removesuffix("_total"): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if "reason" not in s.labels
    }
    assert values["nv_inference_request_success"] == 3
    assert values["nv_inference_count"] == stats.inference_count == 6
    assert values["nv_inference_exec_count"] == stats.execution_count == 1
    assert values["nv_inference_request_duration_us"] == stats.success.ns // 1000
    assert values["nv_inference_queue_duration_us"] == 3 * 2500
    # Each request is charged the whole batch's compute time.
    assert values["nv_inference_compute_input_duration_us"] == 3 * 500
    assert values["nv_inference_compute_infer_duration_us"] == 3 * 4000
    assert values["nv_inference_compute_output_duration_us"] == 3 * 250
    assert values["nv_inference_pending_request_count"] == 0
    assert values["nv_model_load_duration_secs"] == 0.25


def test_failure_has_every_reason_label() -> None:
    loaded = version("m")
    loaded.stats.record_failure(0, 1000, "BACKEND")
    loaded.stats.record_failure(0, 1000, "BACKEND")
    loaded.stats.record_failure(0, 1000, "REJECTED")
    families = parse(render(model_families([loaded], MetricsOptions())))
    by_reason = {
        s.labels["reason"]: s.value for s in families["nv_inference_request_failure"].samples
    }
    assert by_reason == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 2, "OTHER": 0}
    for sample in families["nv_inference_request_failure"].samples:
        assert set(sample.labels) == {"model", "version", "reason"}


def test_labels_model_and_version_string_per_series() -> None:
    versions = [version("a", 1), version("a", 2), version("b", 3)]
    families = parse(render(model_families(versions, MetricsOptions())))
    labels = [s.labels for s in families["nv_inference_request_success"].samples]
    assert labels == [
        {"model": "a", "version": "1"},
        {"model": "a", "version": "2"},
        {"model": "b", "version": "3"},
    ]


def test_gpu_uuid_on_request_series_of_a_gpu_instance_but_not_on_model_level_ones() -> None:
    specs = [InstanceSpec("g_0_0", "g", "GPU", 0, "GPU-1111", "NVIDIA H100")] * 2
    loaded = version("g", instances=specs)
    families = parse(render(model_families([loaded], MetricsOptions())))
    assert families["nv_inference_request_success"].samples[0].labels["gpu_uuid"] == "GPU-1111"
    assert (
        families["nv_inference_compute_infer_duration_us"].samples[0].labels["gpu_uuid"]
        == "GPU-1111"
    )
    assert "gpu_uuid" not in families["nv_inference_pending_request_count"].samples[0].labels
    assert "gpu_uuid" not in families["nv_model_load_duration_secs"].samples[0].labels


def test_gpu_uuid_left_out_when_instances_span_devices() -> None:
    specs = [
        InstanceSpec("g_0_0", "g", "GPU", 0, "GPU-1111"),
        InstanceSpec("g_1_0", "g", "GPU", 1, "GPU-2222"),
    ]
    families = parse(render(model_families([version("g", instances=specs)], MetricsOptions())))
    assert "gpu_uuid" not in families["nv_inference_request_success"].samples[0].labels


def test_counter_latencies_false_drops_only_duration_counters() -> None:
    families = parse(
        render(model_families([version("m")], MetricsOptions(counter_latencies=False)))
    )
    assert "nv_inference_queue_duration_us" not in families
    assert "nv_inference_request_duration_us" not in families
    assert "nv_inference_request_success" in families
    assert "nv_inference_pending_request_count" in families


def test_no_models_no_model_families() -> None:
    assert render(model_families([], MetricsOptions())) == ""


def test_summaries_have_quantiles_count_and_sum() -> None:
    options = MetricsOptions(summary_latencies=True)
    loaded = version("m")
    loaded.stats.observer = LatencyRecorder(options, decoupled=False)
    text = render(model_families([loaded], options))
    summary = parse(text)["nv_inference_queue_summary_us"]
    assert summary.type == "summary"
    quantiles = [s for s in summary.samples if "quantile" in s.labels]
    assert [s.labels["quantile"] for s in quantiles] == ["0.5", "0.9", "0.95", "0.99", "0.999"]
    assert all(math.isnan(s.value) for s in quantiles)

    run_requests(loaded.stats, 4)
    families = parse(render(model_families([loaded], options)))
    queue = {
        (s.name, s.labels.get("quantile")): s.value
        for s in families["nv_inference_queue_summary_us"].samples
    }
    assert queue[("nv_inference_queue_summary_us_count", None)] == 4
    assert queue[("nv_inference_queue_summary_us_sum", None)] == 4 * 2500
    assert queue[("nv_inference_queue_summary_us", "0.5")] == 2500
    request = {
        s.name: s.value
        for s in families["nv_inference_request_summary_us"].samples
        if "quantile" not in s.labels
    }
    assert request["nv_inference_request_summary_us_count"] == loaded.stats.success.count
    # Triton truncates each request to whole microseconds before summing.
    assert request["nv_inference_request_summary_us_sum"] == 4 * (8_000_123 // 1000)


def test_first_response_histogram_only_for_decoupled_models() -> None:
    options = MetricsOptions(histogram_latencies=True)
    plain, streaming = version("plain"), version("streaming")
    plain.stats.observer = LatencyRecorder(options, decoupled=False)
    streaming.stats.observer = LatencyRecorder(options, decoupled=True)
    for stats in (plain.stats, streaming.stats):
        stats.record_first_response(0, 300_000_000)  # 300 ms
        stats.record_first_response(0, 50_000_000)  # 50 ms
    families = parse(render(model_families([plain, streaming], options)))
    histogram = families["nv_inference_first_response_histogram_ms"]
    assert histogram.type == "histogram"
    assert {s.labels["model"] for s in histogram.samples} == {"streaming"}
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert buckets == {"100": 1, "500": 2, "2000": 2, "5000": 2, "+Inf": 2}


def test_window_quantiles_forget_old_observations() -> None:
    now = [100.0]
    window = Window(max_age_s=10, clock=lambda: now[0])
    for us in (10, 20, 30, 40):
        window.observe(us * 1000)
    assert window.quantiles((0.5, 1.0)) == [20.0, 40.0]
    now[0] += 11
    window.observe(99_000)
    assert window.quantiles((0.5,)) == [99.0]
    assert window.count == 5 and window.sum_us == 10 + 20 + 30 + 40 + 99


def test_system_families_cpu_gpu_and_pinned() -> None:
    snapshot = Snapshot(
        cpu=CpuSample(0.25, 1000, 400),
        gpus=(
            GpuSample("GPU-a", 0.5, 80, 20, 150.5, 700.0, 5000),
            GpuSample("MIG-b", None, 10, 1, None, None, None),
        ),
        energy_j={"GPU-a": 12.5},
    )
    families = parse(render(system_families(snapshot, cpu=True, gpu=True)))
    assert families["nv_cpu_utilization"].samples[0].value == 0.25
    assert families["nv_cpu_memory_used_bytes"].samples[0].labels == {}
    util = families["nv_gpu_utilization"].samples
    assert [(s.labels, s.value) for s in util] == [({"gpu_uuid": "GPU-a"}, 0.5)]
    memory = {s.labels["gpu_uuid"]: s.value for s in families["nv_gpu_memory_total_bytes"].samples}
    assert memory == {"GPU-a": 80, "MIG-b": 10}
    assert families["nv_energy_consumption"].type == "counter"
    assert families["nv_energy_consumption"].samples[0].value == 12.5
    assert families["nv_gpu_power_limit"].samples[0].value == 700.0
    assert families["nv_pinned_memory_pool_total_bytes"].samples[0].value == 0


def test_no_gpu_no_gpu_families_and_cpu_switch() -> None:
    snapshot = Snapshot(cpu=CpuSample(0.1, 10, 5))
    text = render(system_families(snapshot, cpu=False, gpu=True))
    assert "nv_gpu_" not in text and "nv_energy" not in text
    assert "nv_cpu_" not in text


def test_writer_escapes_labels_and_special_values() -> None:
    family = Family("nv_x", "a help\nline", "gauge")
    family.add({"model": 'we"ird\\name\n'}, math.nan)
    family.add({"model": "inf"}, math.inf)
    family.add({"model": "frac"}, 0.125)
    text = render([family])
    samples = parse(text)["nv_x"].samples
    assert samples[0].labels["model"] == 'we"ird\\name\n'
    assert math.isnan(samples[0].value)
    assert samples[1].value == math.inf
    assert samples[2].value == 0.125
    assert format_value(3.0) == "3" and format_value(7) == "7"


def test_writer_rejects_unknown_types() -> None:
    with pytest.raises(ValueError):
        Family("x", "h", "counterish")


def test_metrics_config_keys() -> None:
    options = parse_metrics_config(
        [
            "summary_latencies=true",
            "counter_latencies=false",
            "summary_quantiles=0.5:0.05,0.99:0.001",
        ]
    )
    assert options.summary_latencies and not options.counter_latencies
    assert options.summary_quantiles == ((0.5, 0.05), (0.99, 0.001))
    assert parse_metrics_config([]).summary_quantiles == DEFAULT_QUANTILES
    for bad in (["summary_latencies"], ["summary_latencies=maybe"], ["summary_quantiles=2:0.1"]):
        with pytest.raises(ValueError):
            parse_metrics_config(bad)
