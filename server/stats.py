"""Per model-version statistics: the one record both the statistics extension and the
Prometheus metrics are computed from, so the two always agree.

Updated only on the event loop thread, so no locks are needed.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.backends.base import Timing

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

# Upper bounds, in microseconds, of the queue-delay histogram the metrics export.
QUEUE_DELAY_BUCKETS_US: tuple[float, ...] = (
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
    100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
)  # fmt: skip

# Receives (kind, nanoseconds) per request for latency summaries; kinds are "request",
# "queue", "compute_input", "compute_infer", "compute_output" and "first_response".
LatencyObserver = Callable[[str, int], None]


@dataclass(slots=True)
class Buckets:
    """Counts per bucket (the last one is +Inf) and the running sum of observed values."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(ns, 0)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStat:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    name: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    pending: int = 0
    batch_stats: dict[int, BatchStat] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    load_duration_s: float = 0.0
    queue_delay_us: Buckets = field(default_factory=lambda: Buckets(QUEUE_DELAY_BUCKETS_US))
    observer: LatencyObserver | None = None

    def record_execution(self, batch_size: int, request_count: int, timing: Timing) -> None:
        input_ns = timing.input_end_ns - timing.compute_start_ns
        infer_ns = timing.infer_end_ns - timing.input_end_ns
        output_ns = timing.output_end_ns - timing.infer_end_ns
        self.execution_count += 1
        self.inference_count += batch_size
        stat = self.batch_stats.get(batch_size)
        if stat is None:
            stat = self.batch_stats[batch_size] = BatchStat()
        stat.compute_input.add(input_ns)
        stat.compute_infer.add(infer_ns)
        stat.compute_output.add(output_ns)
        # Each request is charged its batch's full compute time, as Triton does.
        for _ in range(request_count):
            self.compute_input.add(input_ns)
            self.compute_infer.add(infer_ns)
            self.compute_output.add(output_ns)
        if self.observer is not None:
            for _ in range(request_count):
                self.observer("compute_input", input_ns)
                self.observer("compute_infer", infer_ns)
                self.observer("compute_output", output_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_queue(self, queue_start_ns: int, compute_start_ns: int) -> None:
        waited = max(compute_start_ns - queue_start_ns, 0)
        self.queue.add(waited)
        self.queue_delay_us.observe(waited / 1000.0)
        if self.observer is not None:
            self.observer("queue", waited)

    def record_success(self, request_start_ns: int, end_ns: int) -> None:
        self.success.add(end_ns - request_start_ns)
        if self.observer is not None:
            self.observer("request", max(end_ns - request_start_ns, 0))

    def record_first_response(self, request_start_ns: int, first_response_ns: int) -> None:
        """For decoupled models: the time from a request's start to its first response."""
        if self.observer is not None:
            self.observer("first_response", max(first_response_ns - request_start_ns, 0))

    def record_failure(self, request_start_ns: int, end_ns: int, reason: str) -> None:
        self.fail.add(end_ns - request_start_ns)
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": stat.compute_input.as_dict(),
                    "compute_infer": stat.compute_infer.as_dict(),
                    "compute_output": stat.compute_output.as_dict(),
                }
                for size, stat in sorted(self.batch_stats.items())
            ],
            "memory_usage": [],
        }
