"""Per-request latency summaries and histograms, fed through ``ModelStats.observer``.

Summaries follow Triton's: cumulative ``_count`` and ``_sum`` (microseconds, each request
truncated to whole microseconds) and quantiles over the observations of the last
``max_age`` seconds, NaN while there are none.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable

from server.metrics.config import MetricsOptions

SUMMARY_KINDS = ("request", "queue", "compute_input", "compute_infer", "compute_output")
FIRST_RESPONSE_BUCKETS_MS: tuple[float, ...] = (100, 500, 2000, 5000)
# Bounds the memory of one window under very high request rates.
_MAX_WINDOW = 20_000


class Window:
    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.count = 0
        self.sum_us = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=_MAX_WINDOW)
        self._clock = clock

    def observe(self, ns: int) -> None:
        us = ns // 1000
        self.count += 1
        self.sum_us += us
        self._recent.append((self._clock(), us))

    def quantiles(self, wanted: tuple[float, ...]) -> list[float]:
        horizon = self._clock() - self.max_age_s
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        if not self._recent:
            return [math.nan] * len(wanted)
        values = sorted(v for _, v in self._recent)
        last = len(values) - 1
        return [float(values[min(last, max(0, math.ceil(q * len(values)) - 1))]) for q in wanted]


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class LatencyRecorder:
    """The observer attached to one model version's statistics."""

    def __init__(self, options: MetricsOptions, decoupled: bool) -> None:
        self.summaries = (
            {kind: Window(options.summary_max_age_s) for kind in SUMMARY_KINDS}
            if options.summary_latencies
            else {}
        )
        # Triton keeps the first-response histogram for decoupled models only.
        self.first_response = (
            Histogram(FIRST_RESPONSE_BUCKETS_MS)
            if options.histogram_latencies and decoupled
            else None
        )

    def __call__(self, kind: str, ns: int) -> None:
        window = self.summaries.get(kind)
        if window is not None:
            window.observe(ns)
        elif kind == "first_response" and self.first_response is not None:
            self.first_response.observe(ns / 1_000_000)

    @property
    def active(self) -> bool:
        return bool(self.summaries) or self.first_response is not None
