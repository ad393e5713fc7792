"""Metrics beyond Triton's, rendered by prometheus-client: how the batcher behaves (executed
batch sizes, queue delay, queue depth per priority level) and the process itself.

The per-model values come from the same statistics as Triton's families, read at scrape
time by a custom collector, so their series also vanish when a model unloads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BATCH_SIZE_BOUNDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class BatcherCollector(Collector):
    def __init__(self, versions: Callable[[], Sequence[Any]]) -> None:
        self._versions = versions

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        batch = HistogramMetricFamily(
            "inference_executed_batch_size",
            "Sizes of the batches the model executed",
            labels=labels,
        )
        delay = HistogramMetricFamily(
            "inference_queue_delay_us",
            "Time each request waited in the queue before execution, in microseconds",
            labels=labels,
        )
        depth = GaugeMetricFamily(
            "inference_queue_depth",
            "Requests waiting in the scheduler queue, by priority level",
            labels=[*labels, "priority"],
        )
        chosen = GaugeMetricFamily(
            "inference_batcher_delay_us",
            "The queue delay the dynamic batcher currently waits for a fuller batch, in microseconds",
            labels=labels,
        )
        for loaded in self._versions():
            stats = loaded.stats
            values = [stats.name, stats.version]
            sizes = {size: stat.compute_infer.count for size, stat in stats.batch_stats.items()}
            batch.add_metric(
                values, _cumulative(BATCH_SIZE_BOUNDS, sizes), sum(s * n for s, n in sizes.items())
            )
            buckets = stats.queue_delay_us
            delay.add_metric(values, _from_counts(buckets.bounds, buckets.counts), buckets.total)
            for priority, queued in sorted(_queue_depths(loaded.scheduler).items()):
                depth.add_metric([*values, str(priority)], queued)
            waiting = _batcher_delay_us(loaded.scheduler)
            if waiting is not None:
                chosen.add_metric(values, waiting)
        yield from (batch, delay, depth, chosen)


def _cumulative(bounds: Sequence[float], observed: Mapping[int, int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for bound in bounds:
        out.append((_bound(bound), sum(n for size, n in observed.items() if size <= bound)))
    out.append(("+Inf", sum(observed.values())))
    return out


def _from_counts(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        out.append((_bound(bound), running))
    out.append(("+Inf", sum(counts)))
    return out


def _bound(value: float) -> str:
    return repr(float(value))


def _queue_depths(scheduler: Any) -> Mapping[int, int]:
    """Queued requests per priority level, where the scheduler can say (the dynamic
    batcher's ``queue_depths()``, or ``depths()`` of its priority queues)."""
    if scheduler is None:
        return {}
    depths = getattr(scheduler, "queue_depths", None)
    if not callable(depths):
        queues = getattr(scheduler, "queues", None) or getattr(scheduler, "_queues", None)
        depths = getattr(queues, "depths", None)
    if callable(depths):
        try:
            return dict(depths())
        except Exception:  # a scheduler mid-shutdown: report nothing rather than fail the scrape
            return {}
    return {}


def _batcher_delay_us(scheduler: Any) -> float | None:
    """The delay the batcher currently waits for a fuller batch, where it says."""
    if scheduler is None:
        return None
    value = getattr(scheduler, "current_delay_us", None)
    if callable(value):
        value = value()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Extras:
    def __init__(self, versions: Callable[[], Sequence[Any]], *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BatcherCollector(versions))
        if process:
            ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
