"""Per model-version statistics: the one record both the statistics extension and the
Prometheus metrics are computed from, so the two always agree.

Updated only on the event loop thread, so no locks are needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from server.backends.base import Timing

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


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
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_queue(self, queue_start_ns: int, compute_start_ns: int) -> None:
        self.queue.add(compute_start_ns - queue_start_ns)

    def record_success(self, request_start_ns: int, end_ns: int) -> None:
        self.success.add(end_ns - request_start_ns)

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
