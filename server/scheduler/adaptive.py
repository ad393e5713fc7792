"""A queue delay chosen from load and a p99 latency budget, instead of a fixed one.

A fixed ``max_queue_delay_microseconds`` is wrong at both ends: at low load no other
request arrives while the first one waits, so the wait is pure latency; at high load a
longer wait fills larger batches and raises throughput. This controller picks the delay
the batcher uses, never above the configured maximum:

- load: an exponentially weighted mean of the gap between arriving rows. When fewer than
  one more row is expected within the current delay, waiting cannot form a batch, so the
  chosen delay is 0;
- budget: a window of recent server-side latencies (queue + compute). While their p99
  stays under the budget the ceiling grows additively; when it passes the budget the
  ceiling halves (AIMD), so the wait backs off before the promise is broken.

Time is passed in, so the controller is tested without a clock.
"""

from __future__ import annotations

from collections import deque

# How far under the budget p99 must be before the ceiling may grow.
GROW_BELOW = 0.8
# Latency samples kept, and how often (in completions) the ceiling is revisited.
WINDOW = 512
REVISIT_EVERY = 16
# Smoothing of the inter-arrival gap. Arrivals come in bursts under load (clients answer
# to responses), so single gaps say little; the smoothed mean says how busy the model is.
GAP_WEIGHT = 0.1
# A silence this many delays long means the load is gone, whatever the mean says.
SILENCE_FACTOR = 10


class LatencyTargetedDelay:
    def __init__(self, budget_us: int, max_delay_ns: int, window: int = WINDOW) -> None:
        if budget_us <= 0:
            raise ValueError("the p99 latency budget must be positive")
        self.budget_ns = budget_us * 1000
        self.max_delay_ns = max_delay_ns
        self.ceiling_ns = max_delay_ns
        self._step_ns = max(max_delay_ns // 8, 1_000)
        self._samples: deque[int] = deque(maxlen=window)
        self._since_revisit = 0
        self._gap_ns: float | None = None
        self._last_arrival_ns: int | None = None
        self.p99_ns = 0

    def on_arrival(self, now_ns: int, rows: int) -> None:
        last = self._last_arrival_ns
        self._last_arrival_ns = now_ns
        if last is None:
            return
        gap = max(now_ns - last, 0) / max(rows, 1)
        self._gap_ns = (
            gap if self._gap_ns is None else (GAP_WEIGHT * gap + (1 - GAP_WEIGHT) * self._gap_ns)
        )

    def on_complete(self, latency_ns: int) -> None:
        self._samples.append(latency_ns)
        self._since_revisit += 1
        if self._since_revisit >= REVISIT_EVERY:
            self._since_revisit = 0
            self._revisit()

    def _revisit(self) -> None:
        ordered = sorted(self._samples)
        self.p99_ns = ordered[min(len(ordered) - 1, (len(ordered) * 99) // 100)]
        if self.p99_ns > self.budget_ns:
            self.ceiling_ns //= 2
        elif self.p99_ns < GROW_BELOW * self.budget_ns:
            self.ceiling_ns = min(self.max_delay_ns, self.ceiling_ns + self._step_ns)

    def expected_gap_ns(self, now_ns: int) -> float | None:
        """The mean gap between arriving rows; a silence far longer than the delay also
        counts, so a stale estimate from a past burst does not keep a request waiting."""
        if self._gap_ns is None or self._last_arrival_ns is None:
            return None
        silence = now_ns - self._last_arrival_ns
        if silence > SILENCE_FACTOR * self.ceiling_ns:
            return float(silence)
        return self._gap_ns

    def delay_ns(self, now_ns: int) -> int:
        """The delay to use now: the ceiling when another row is expected within it, else 0."""
        gap = self.expected_gap_ns(now_ns)
        if gap is None or gap > self.ceiling_ns:
            return 0
        return self.ceiling_ns
