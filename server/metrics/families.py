"""Triton's metric families, computed at scrape time from the READY model versions'
statistics (the same records the statistics extension reports) and the polled gauges.

Series of a model exist exactly while a version of it is READY: nothing is registered, so
nothing has to be removed on unload.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from server.metrics.config import MetricsOptions
from server.metrics.exposition import Family
from server.metrics.latency import SUMMARY_KINDS, LatencyRecorder
from server.metrics.poller import Snapshot
from server.stats import FAILURE_REASONS, ModelStats

# (family, source attribute on ModelStats, help)
_DURATIONS = (
    ("nv_inference_request_duration_us", "success", "Cumulative time requests took from arrival to completion, queue included, in microseconds"),
    ("nv_inference_queue_duration_us", "queue", "Cumulative time requests spent queued before execution, in microseconds"),
    ("nv_inference_compute_input_duration_us", "compute_input", "Cumulative time spent preparing inputs, each request charged its batch's time, in microseconds"),
    ("nv_inference_compute_infer_duration_us", "compute_infer", "Cumulative time spent executing the model, each request charged its batch's time, in microseconds"),
    ("nv_inference_compute_output_duration_us", "compute_output", "Cumulative time spent producing outputs, each request charged its batch's time, in microseconds"),
)  # fmt: skip
_SUMMARIES = {
    "request": ("nv_inference_request_summary_us", "Request duration, queue included, in microseconds"),
    "queue": ("nv_inference_queue_summary_us", "Queue duration in microseconds"),
    "compute_input": ("nv_inference_compute_input_summary_us", "Input preparation duration in microseconds"),
    "compute_infer": ("nv_inference_compute_infer_summary_us", "Model execution duration in microseconds"),
    "compute_output": ("nv_inference_compute_output_summary_us", "Output production duration in microseconds"),
}  # fmt: skip


def model_labels(loaded: Any) -> dict[str, str]:
    """``model`` and ``version``, plus ``gpu_uuid`` when every instance of the version runs
    on the same GPU (statistics are kept per version, not per instance)."""
    labels = {"model": loaded.stats.name, "version": loaded.stats.version}
    uuids = {
        spec.device_uuid for spec in loaded.instances if spec.kind == "GPU" and spec.device_uuid
    }
    kinds = {spec.kind for spec in loaded.instances}
    if len(uuids) == 1 and kinds == {"GPU"}:
        labels["gpu_uuid"] = next(iter(uuids))
    return labels


def model_families(versions: Sequence[Any], options: MetricsOptions) -> list[Family]:
    success = Family(
        "nv_inference_request_success",
        "Number of successful inference requests, a batch counting as one",
        "counter",
    )
    failure = Family(
        "nv_inference_request_failure", "Number of failed inference requests, by reason", "counter"
    )
    count = Family(
        "nv_inference_count",
        "Number of inferences performed, the sum of executed batch sizes",
        "counter",
    )
    exec_count = Family(
        "nv_inference_exec_count", "Number of model executions (batches) performed", "counter"
    )
    durations = [Family(name, text, "counter") for name, _, text in _DURATIONS]
    pending = Family(
        "nv_inference_pending_request_count",
        "Requests accepted by the model and not yet executing",
        "gauge",
    )
    load = Family(
        "nv_model_load_duration_secs", "Time the model version took to load, in seconds", "gauge"
    )
    summaries = {kind: Family(name, text, "summary") for kind, (name, text) in _SUMMARIES.items()}
    first = Family("nv_inference_first_response_histogram_ms", "Time from request arrival to the first response, in milliseconds", "histogram")  # fmt: skip
    for loaded in sorted(versions, key=lambda v: (v.stats.name, int(v.stats.version))):
        stats: ModelStats = loaded.stats
        labels = model_labels(loaded)
        model_only = {"model": stats.name, "version": stats.version}
        success.add(labels, stats.success.count)
        for reason in FAILURE_REASONS:
            failure.add(
                dict(sorted({**labels, "reason": reason}.items())), stats.failures.get(reason, 0)
            )
        count.add(labels, stats.inference_count)
        exec_count.add(labels, stats.execution_count)
        if options.counter_latencies:
            for family, (_, attr, _) in zip(durations, _DURATIONS, strict=True):
                family.add(labels, getattr(stats, attr).ns // 1000)
        pending.add(model_only, stats.pending)
        load.add(model_only, stats.load_duration_s)
        recorder = stats.observer
        if isinstance(recorder, LatencyRecorder):
            _add_summaries(summaries, recorder, labels, options)
            _add_first_response(first, recorder, labels)
    out = [success, failure, count, exec_count]
    if options.counter_latencies:
        out += durations
    out += [pending, load]
    out += [summaries[kind] for kind in SUMMARY_KINDS] + [first]
    return out


def _add_summaries(summaries: dict[str, Family], recorder: LatencyRecorder, labels: dict[str, str], options: MetricsOptions) -> None:  # fmt: skip
    wanted = tuple(q for q, _ in options.summary_quantiles)
    for kind, window in recorder.summaries.items():
        family = summaries[kind]
        family.add(labels, window.count, "_count")
        family.add(labels, window.sum_us, "_sum")
        for quantile, value in zip(wanted, window.quantiles(wanted), strict=True):
            family.add({**labels, "quantile": _number(quantile)}, value)


def _add_first_response(family: Family, recorder: LatencyRecorder, labels: dict[str, str]) -> None:
    histogram = recorder.first_response
    if histogram is None:
        return
    running = 0
    for bound, bucket in zip(histogram.bounds, histogram.counts, strict=False):
        running += bucket
        family.add({**labels, "le": _number(bound)}, running, "_bucket")
    family.add({**labels, "le": "+Inf"}, sum(histogram.counts), "_bucket")
    family.add(labels, sum(histogram.counts), "_count")
    family.add(labels, histogram.total, "_sum")


def system_families(snapshot: Snapshot, *, cpu: bool, gpu: bool) -> list[Family]:
    out: list[Family] = []
    if gpu and snapshot.gpus:
        out += _gpu_families(snapshot)
    # This server has no pinned host memory pool; report it as empty so Triton's
    # dashboards find the family.
    out.append(
        Family(
            "nv_pinned_memory_pool_total_bytes", "Pinned host memory pool size, in bytes", "gauge"
        )
    )
    out.append(
        Family("nv_pinned_memory_pool_used_bytes", "Pinned host memory pool use, in bytes", "gauge")
    )
    out[-2].add({}, 0)
    out[-1].add({}, 0)
    if cpu and snapshot.cpu is not None:
        for name, text, value in (
            ("nv_cpu_utilization", "CPU utilization over the last poll interval, 0.0 to 1.0", snapshot.cpu.utilization),
            ("nv_cpu_memory_total_bytes", "Host memory (RAM) in total, in bytes", snapshot.cpu.memory_total_bytes),
            ("nv_cpu_memory_used_bytes", "Host memory (RAM) in use, in bytes", snapshot.cpu.memory_used_bytes),
        ):  # fmt: skip
            family = Family(name, text, "gauge")
            family.add({}, value)
            out.append(family)
    return out


def _gpu_families(snapshot: Snapshot) -> list[Family]:
    specs = (
        ("nv_gpu_utilization", "GPU utilization over the last poll interval, 0.0 to 1.0", "gauge", "utilization"),
        ("nv_gpu_memory_total_bytes", "GPU memory in total, in bytes", "gauge", "memory_total_bytes"),
        ("nv_gpu_memory_used_bytes", "GPU memory in use, in bytes", "gauge", "memory_used_bytes"),
        ("nv_gpu_power_usage", "GPU power draw, in watts", "gauge", "power_usage_w"),
        ("nv_gpu_power_limit", "GPU power management limit, in watts", "gauge", "power_limit_w"),
    )  # fmt: skip
    out = []
    for name, text, kind, attr in specs:
        family = Family(name, text, kind)
        for sample in snapshot.gpus:
            value = getattr(sample, attr)
            if value is not None:
                family.add({"gpu_uuid": sample.uuid}, value)
        out.append(family)
    energy = Family(
        "nv_energy_consumption", "GPU energy used since the server started, in joules", "counter"
    )
    for uuid, joules in snapshot.energy_j.items():
        energy.add({"gpu_uuid": uuid}, joules)
    out.append(energy)
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and value >= 1 else repr(float(value))


def all_families(
    versions: Iterable[Any], snapshot: Snapshot, options: MetricsOptions, *, cpu: bool, gpu: bool
) -> list[Family]:
    return model_families(list(versions), options) + system_families(snapshot, cpu=cpu, gpu=gpu)
