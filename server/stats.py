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
from server.errors import ServerError

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

# Upper bounds, in microseconds, of the queue-delay histogram the metrics export.
QUEUE_DELAY_BUCKETS_US: tuple[float, ...] = (
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
    100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
)  # fmt: skip

# Receives (kind, nanoseconds) per request for latency summaries; kinds are "request",
# "queue", "compute_input", "compute_infer", "compute_output" and "first_response".
LatencyObserver = Callable[[str, int], None]


class ErrorResponse(ServerError):
    """An error a model answered one request with (a Python model's
    ``InferenceResponse(error=...)``), as opposed to a request its execution failed.

    The client receives the error all the same, but the request was executed: Triton counts
    it as a success in the statistics and metrics, with its queue and compute times.
    """

    __slots__ = ()

    @classmethod
    def of(cls, error: ServerError) -> ErrorResponse:
        return cls(error.code, error.message)


def counts_as_success(result: object) -> bool:
    """Whether one request's outcome of an execution counts as a success."""
    return not isinstance(result, ServerError) or isinstance(result, ErrorResponse)


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
        if ns > 0:  # a conditional rather than max(): this runs several times a request
            self.ns += ns

    def add_each(self, ns: int, count: int) -> None:
        """``count`` observations of ``ns`` each."""
        self.count += count
        if ns > 0:
            self.ns += ns * count

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


def _phases(timing: Timing) -> tuple[int, int, int]:
    return (
        timing.input_end_ns - timing.compute_start_ns,
        timing.infer_end_ns - timing.input_end_ns,
        timing.output_end_ns - timing.infer_end_ns,
    )


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
        """An execution of ``batch_size`` rows in which ``request_count`` requests completed."""
        self.record_batch(batch_size, timing)
        self.record_computed(batch_size, request_count, timing)

    def record_batch(self, batch_size: int, timing: Timing) -> None:
        """One run of the model over ``batch_size`` rows, whatever its requests' outcome:
        the execution count and the per-batch-size statistics."""
        input_ns, infer_ns, output_ns = _phases(timing)
        self.execution_count += 1
        stat = self.batch_stats.get(batch_size)
        if stat is None:
            stat = self.batch_stats[batch_size] = BatchStat()
        stat.compute_input.add(input_ns)
        stat.compute_infer.add(infer_ns)
        stat.compute_output.add(output_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_computed(self, rows: int, request_count: int, timing: Timing) -> None:
        """Requests that an execution completed (``rows`` batch rows in all): each is
        charged its batch's full compute time, as Triton does. Requests that failed in the
        execution are not counted here."""
        input_ns, infer_ns, output_ns = _phases(timing)
        self.inference_count += rows
        self.compute_input.add_each(input_ns, request_count)
        self.compute_infer.add_each(infer_ns, request_count)
        self.compute_output.add_each(output_ns, request_count)
        if self.observer is not None:
            for _ in range(request_count):
                self.observer("compute_input", input_ns)
                self.observer("compute_infer", infer_ns)
                self.observer("compute_output", output_ns)

    def record_queue(self, queue_start_ns: int, compute_start_ns: int) -> None:
        """The queue time of a request its execution completed."""
        self.settle_queue(self.record_dequeue(queue_start_ns, compute_start_ns), completed=True)

    def record_dequeue(self, queue_start_ns: int, compute_start_ns: int) -> int:
        """A request left the queue for an execution: its wait counts from now on (and
        goes into the queue-delay histogram for good). Returns the wait in nanoseconds."""
        waited = compute_start_ns - queue_start_ns
        if waited < 0:
            waited = 0
        self.queue.add(waited)
        self.queue_delay_us.observe(waited / 1000.0)
        return waited

    def settle_queue(self, waited_ns: int, *, completed: bool) -> None:
        """After the execution: Triton keeps the queue time of the requests it completed
        only, so a request that failed in its execution gives its wait back."""
        if completed:
            if self.observer is not None:
                self.observer("queue", waited_ns)
            return
        self.queue.count -= 1
        self.queue.ns -= waited_ns

    def record_success(self, request_start_ns: int, end_ns: int) -> None:
        self.success.add(end_ns - request_start_ns)
        if self.observer is not None:
            self.observer("request", max(end_ns - request_start_ns, 0))

    def record_first_response(self, request_start_ns: int, first_response_ns: int) -> None:
        """For decoupled models: the time from a request's start to its first response
        (data or an error response; the bare final flag is not a response)."""
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
