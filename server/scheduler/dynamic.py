"""The dynamic batcher: Triton's rules for merging queued requests into executions, plus
two opt-in extras (error isolation and a latency-targeted delay, see docs/batching.md).

This class owns the queues and the event-loop side effects (timers, futures, logging);
which requests form a batch is decided by ``decision.decide`` and where each request
waits by ``policy.PriorityQueues``. ``Scheduler`` runs a batch only when an instance is
free, so batches grow while every instance is busy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from server.backends.base import ModelInstance, RequestOutputs, Timing
from server.errors import Code, ServerError, invalid_arg
from server.repository.view import ModelView
from server.scheduler.adaptive import LatencyTargetedDelay
from server.scheduler.base import Execution, Scheduler
from server.scheduler.decision import BatchRules, decide
from server.scheduler.policy import Entry, PriorityQueues, queues_from_config
from server.stats import ModelStats, counts_as_success
from server.types import InferRequest

log = logging.getLogger(__name__)

# Config `parameters` keys of the extras.
ERROR_ISOLATION_KEY = "dynamic_batching.error_isolation"
P99_TARGET_KEY = "dynamic_batching.p99_latency_target_us"
# Triton's test hook: hold the batcher until this many requests are queued.
DELAY_SCHEDULER_ENV = "TRITONSERVER_DELAY_SCHEDULER"

CANCELLED_MESSAGE = "Request was cancelled"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
# Log a new latency-targeted delay only when it moves this much, at most once a second.
_DELAY_LOG_CHANGE = 0.25
_DELAY_LOG_INTERVAL_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BatcherOptions:
    error_isolation: bool = False
    p99_target_us: int = 0

    @classmethod
    def from_parameters(cls, model: str, parameters: dict[str, str]) -> BatcherOptions:
        isolation = parameters.get(ERROR_ISOLATION_KEY, "").strip().lower()
        if isolation not in _TRUE | _FALSE:
            raise invalid_arg(
                f"parameter '{ERROR_ISOLATION_KEY}' of model '{model}' must be true or false"
            )
        target = parameters.get(P99_TARGET_KEY, "").strip()
        try:
            target_us = int(target) if target else 0
        except ValueError:
            target_us = -1
        if target_us < 0 or (target and target_us == 0):
            raise invalid_arg(
                f"parameter '{P99_TARGET_KEY}' of model '{model}' must be a positive integer"
            )
        return cls(error_isolation=isolation in _TRUE, p99_target_us=target_us)


def delay_scheduler_count(environ: Mapping[str, str] = os.environ) -> int:
    try:
        return max(int(environ.get(DELAY_SCHEDULER_ENV, "0")), 0)
    except ValueError:
        return 0


class DynamicBatcher(Scheduler):
    def __init__(
        self,
        view: ModelView,
        instances: Sequence[ModelInstance],
        stats: ModelStats,
        config: Any = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        super().__init__(view, instances, stats)
        batching = config.dynamic_batching
        optional = any(spec.optional for spec in view.inputs.values())
        self._has_optional = optional
        self._checked = view.shape_checked_inputs
        self.rules = BatchRules(
            max_batch_size=view.max_batch_size,
            preferred_sizes=tuple(int(s) for s in batching.preferred_batch_size),
            max_delay_ns=int(batching.max_queue_delay_microseconds) * 1000,
            check_signature=bool(self._checked) or optional,
        )
        self.queues: PriorityQueues = queues_from_config(batching)
        self.preserve_ordering = bool(batching.preserve_ordering)
        self.options = BatcherOptions.from_parameters(view.name, view.parameters)
        self.latency_delay: LatencyTargetedDelay | None = None
        if self.options.p99_target_us:
            self.latency_delay = LatencyTargetedDelay(
                self.options.p99_target_us, self.rules.max_delay_ns
            )
            if self.rules.max_delay_ns == 0:
                log.warning(
                    "model '%s': '%s' has no effect while max_queue_delay_microseconds is 0",
                    view.name,
                    P99_TARGET_KEY,
                )
        # Rows per execution -> number of executions, for the metrics.
        self.executed_batch_sizes: dict[int, int] = {}
        self._clock = clock
        self._hold_until = delay_scheduler_count()
        self._entries: dict[InferRequest, Entry] = {}
        self._next_seq = 0
        self._next_release = 0
        self._finished: dict[int, tuple[InferRequest, RequestOutputs]] = {}
        self._expiry_handle: asyncio.TimerHandle | None = None
        self._expiry_at = 0
        self._logged_delay_ns = -1
        self._logged_at_ns = 0

    # --- what the metrics read -----------------------------------------------------------
    def queue_depths(self) -> dict[int, int]:
        """Queued requests per priority level (1 is the highest; one level without levels)."""
        return self.queues.depths()

    @property
    def current_delay_us(self) -> int:
        """The queue delay in force: the latency-targeted choice when that is on, else the
        configured max_queue_delay_microseconds."""
        if self.latency_delay is None:
            return self.rules.max_delay_ns // 1000
        return self.latency_delay.delay_ns(self._clock()) // 1000

    # --- the Scheduler seam --------------------------------------------------------------
    def _enqueue(self, request: InferRequest) -> None:
        now = request.queue_start_ns or self._clock()
        level = self.queues.level_of(request.priority)
        deadline = self.queues.policy(level).deadline_ns(now, request.timeout_us)
        entry = Entry(request, request.batch_size, self._signature(request), now, deadline, level)
        self.queues.push(entry)
        entry.seq = self._next_seq
        self._next_seq += 1
        request.deadline_ns = deadline
        self._entries[request] = entry
        if self.latency_delay is not None:
            self.latency_delay.on_arrival(now, request.batch_size)
        if deadline:
            self._arm_expiry(now)

    def _take_batch(self, now_ns: int) -> list[InferRequest] | float | None:
        self._expire(now_ns)
        if self._hold_until:
            if len(self.queues) < self._hold_until:
                return None
            self._hold_until = 0
        if not len(self.queues):
            return None
        rules = self.rules
        if self.latency_delay is not None:
            rules = replace(rules, max_delay_ns=self._chosen_delay(now_ns))
        decision = decide(self._candidates(), rules, now_ns)
        if not decision.run_now:
            return None if decision.wait_ns is None else decision.wait_ns / 1e9
        return self._pop(decision.take)

    def _fail_queued(self, error: ServerError) -> None:
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
            self._expiry_handle = None
        for entry in self.queues.drain():
            self._complete_error(entry.request, error)

    def _withdraw(self, request: InferRequest) -> bool:
        entry = self._entries.get(request)
        if entry is None or not self.queues.remove(entry):
            return False
        self._resolve(request, ServerError(Code.CANCELLED, CANCELLED_MESSAGE))
        return True

    def _resolve(self, request: InferRequest, result: RequestOutputs) -> None:
        entry = self._entries.pop(request, None)
        if self.latency_delay is not None and not isinstance(result, ServerError):
            self.latency_delay.on_complete(self._clock() - request.queue_start_ns)
        if not self.preserve_ordering or entry is None:
            super()._resolve(request, result)
            return
        # Responses leave in arrival order: a finished request waits for earlier ones.
        self._finished[entry.seq] = (request, result)
        while self._next_release in self._finished:
            earlier, outcome = self._finished.pop(self._next_release)
            self._next_release += 1
            super()._resolve(earlier, outcome)

    def _execute(
        self, instance: ModelInstance, batch: list[InferRequest], timing: Timing
    ) -> list[Execution]:
        executions = super()._execute(instance, batch, timing)
        if not self.options.error_isolation or len(batch) < 2:
            return executions
        # Only an execution that failed as a whole is worth splitting; errors a model answered
        # individual requests with are already isolated.
        if any(counts_as_success(r) for r in executions[0].results):
            return executions
        # The whole batch failed: re-run it in halves so that only the requests that fail
        # on their own get an error.
        log.info(
            "model '%s': batch of %d requests failed, re-running it in halves",
            self.view.name,
            len(batch),
        )
        half = len(batch) // 2
        return [
            *self._execute(instance, batch[:half], Timing(compute_start_ns=time.monotonic_ns())),
            *self._execute(instance, batch[half:], Timing(compute_start_ns=time.monotonic_ns())),
        ]

    def _record(self, execution: Execution) -> None:
        super()._record(execution)
        rows = sum(
            request.batch_size
            for request, result in zip(execution.batch, execution.results, strict=True)
            if not isinstance(result, ServerError)
        )
        if rows:
            self.executed_batch_sizes[rows] = self.executed_batch_sizes.get(rows, 0) + 1

    # --- internals -----------------------------------------------------------------------
    def _signature(self, request: InferRequest) -> Hashable:
        if not self.rules.check_signature:
            return None
        shapes = {t.name: t.shape[1:] for t in request.inputs}
        checked = tuple(shapes.get(name) for name in self._checked)
        present = frozenset(shapes) if self._has_optional else None
        return checked, present

    def _candidates(self) -> Iterator[Entry]:
        for entry in self.queues:
            if not entry.request.cancelled:
                yield entry

    def _pop(self, count: int) -> list[InferRequest]:
        """The first ``count`` live requests in service order; cancelled ones met on the
        way leave the queue with CANCELLED."""
        batch: list[InferRequest] = []
        while len(batch) < count and len(self.queues):
            for entry in self.queues.pop(count - len(batch)):
                request = entry.request
                if request.cancelled:
                    self._complete_error(request, ServerError(Code.CANCELLED, CANCELLED_MESSAGE))
                else:
                    batch.append(request)
        return batch

    def _expire(self, now_ns: int) -> None:
        for entry, error in self.queues.expire(now_ns):
            self._complete_error(entry.request, error)

    def _arm_expiry(self, now_ns: int) -> None:
        deadline = self.queues.nearest_deadline()
        if not deadline or (self._expiry_handle is not None and self._expiry_at <= deadline):
            return
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._expiry_at = deadline
        self._expiry_handle = loop.call_later(max(deadline - now_ns, 0) / 1e9, self._on_expiry)

    def _on_expiry(self) -> None:
        # Deadlines are enforced even while every instance is busy, not only when a batch
        # is formed, so a timed-out request hears back on time.
        self._expiry_handle = None
        now = self._clock()
        self._expire(now)
        self._arm_expiry(now)
        self._dispatch()

    def _chosen_delay(self, now_ns: int) -> int:
        assert self.latency_delay is not None
        delay = self.latency_delay.delay_ns(now_ns)
        previous = self._logged_delay_ns
        moved = previous < 0 or (delay == 0) != (previous == 0)
        moved = moved or abs(delay - previous) > _DELAY_LOG_CHANGE * max(previous, 1)
        if moved and now_ns - self._logged_at_ns >= _DELAY_LOG_INTERVAL_NS:
            self._logged_delay_ns, self._logged_at_ns = delay, now_ns
            log.info(
                "model '%s': queue delay now %d us (p99 %d us, budget %d us)",
                self.view.name,
                delay // 1000,
                self.latency_delay.p99_ns // 1000,
                self.options.p99_target_us,
            )
        return delay
