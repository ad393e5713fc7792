"""The scheduler seam and the machinery every scheduler shares: a pool of model instances,
executions in executor threads, and per-request completion with statistics.

A concrete scheduler decides *which* queued requests form the next execution
(``_take_batch``); this module decides *when* one can run (an instance is free) and how
its results reach each request's future.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from server.backends.base import ModelInstance, RequestOutputs, Timing
from server.errors import Code, ServerError, internal, unavailable
from server.repository.view import ModelView
from server.stats import ModelStats
from server.types import InferRequest

log = logging.getLogger(__name__)


def failure_reason(error: ServerError) -> str:
    if error.code == Code.CANCELLED:
        return "CANCELED"
    if error.code == Code.UNAVAILABLE:
        return "REJECTED"
    if error.code == Code.INTERNAL:
        return "BACKEND"
    return "OTHER"


class Scheduler(abc.ABC):
    """Runs requests on a model version's instances. ``submit`` resolves to the outputs."""

    def __init__(self, view: ModelView, instances: Sequence[ModelInstance], stats: ModelStats) -> None:
        if not instances:
            raise internal(f"model '{view.name}' has no instances")
        self.view = view
        self.stats = stats
        self._free: list[ModelInstance] = list(instances)
        self._instances = list(instances)
        self._executor = ThreadPoolExecutor(
            max_workers=len(instances), thread_name_prefix=f"model-{view.name}"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # --- the seam -------------------------------------------------------------------
    async def submit(self, request: InferRequest) -> dict[str, object]:
        """Queue ``request`` and wait for its outputs; raises ServerError on failure."""
        if self._stopping:
            raise unavailable("Server is stopping, scheduler for model has stopped accepting new inference requests")
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[dict[str, object]] = loop.create_future()
        request.future = future  # type: ignore[assignment]
        now = time.monotonic_ns()
        request.queue_start_ns = now
        if not request.request_start_ns:
            request.request_start_ns = now
        self._enqueue(request)
        self._inflight += 1
        self._idle.clear()
        self.stats.pending += 1
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            request.cancelled = True
            raise
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def inflight(self) -> int:
        return self._inflight

    async def stop(self, drain_timeout: float) -> None:
        """Refuse new work, let queued and running requests finish, release instances."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
        except asyncio.TimeoutError:
            log.warning("model '%s': %d requests still in flight at shutdown", self.view.name, self._inflight)
        self._fail_queued(unavailable("Server exiting"))
        self._executor.shutdown(wait=False, cancel_futures=True)
        for instance in self._instances:
            try:
                instance.unload()
            except Exception:
                log.exception("model '%s': instance unload failed", self.view.name)

    # --- for concrete schedulers ---------------------------------------------------
    @abc.abstractmethod
    def _enqueue(self, request: InferRequest) -> None:
        """Add to the queue, or raise ServerError to reject at once."""

    @abc.abstractmethod
    def _take_batch(self, now_ns: int) -> list[InferRequest] | float | None:
        """The requests for the next execution, or seconds to wait before asking again,
        or None when there is nothing to run."""

    @abc.abstractmethod
    def _fail_queued(self, error: ServerError) -> None:
        """Fail every request still queued."""

    def _complete_error(self, request: InferRequest, error: ServerError) -> None:
        """Finish a request that never reached an instance (cancelled, timed out, rejected)."""
        self.stats.pending -= 1
        if request.future is not None and not request.future.done():
            request.future.set_exception(error)

    # --- dispatch ------------------------------------------------------------------
    _wake_handle: asyncio.TimerHandle | None = None

    def _dispatch(self) -> None:
        while self._free:
            choice = self._take_batch(time.monotonic_ns())
            if choice is None:
                return
            if isinstance(choice, float):
                self._schedule_wake(choice)
                return
            if not choice:
                continue
            instance = self._free.pop()
            self._start(instance, choice)

    def _schedule_wake(self, seconds: float) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        self._wake_handle = loop.call_later(max(seconds, 0.0), self._on_wake)

    def _on_wake(self) -> None:
        self._wake_handle = None
        self._dispatch()

    def _start(self, instance: ModelInstance, batch: list[InferRequest]) -> None:
        timing = Timing(compute_start_ns=time.monotonic_ns())
        for request in batch:
            request.compute_start_ns = timing.compute_start_ns
            self.stats.pending -= 1
            self.stats.record_queue(request.queue_start_ns, timing.compute_start_ns)
        assert self._loop is not None
        task = self._loop.run_in_executor(self._executor, _run, instance, batch, timing)
        task.add_done_callback(lambda done: self._finish(instance, batch, timing, done))

    def _finish(
        self,
        instance: ModelInstance,
        batch: list[InferRequest],
        timing: Timing,
        done: asyncio.Future[list[RequestOutputs]],
    ) -> None:
        self._free.append(instance)
        try:
            results = done.result()
        except ServerError as exc:
            results = [exc] * len(batch)
        except Exception as exc:  # a backend bug must not lose the requests
            log.exception("model '%s': execution failed", self.view.name)
            results = [internal(str(exc))] * len(batch)
        if len(results) != len(batch):
            results = [internal(f"model '{self.view.name}' returned {len(results)} responses for {len(batch)} requests")] * len(batch)
        timing.output_end_ns = timing.output_end_ns or time.monotonic_ns()
        if not timing.input_end_ns:
            timing.input_end_ns = timing.compute_start_ns
        if not timing.infer_end_ns:
            timing.infer_end_ns = timing.input_end_ns
        if any(not isinstance(r, ServerError) for r in results):
            executed = [(req, res) for req, res in zip(batch, results, strict=True) if not isinstance(res, ServerError)]
            self.stats.record_execution(sum(r.batch_size for r, _ in executed) or 1, len(executed), timing)
        for request, result in zip(batch, results, strict=True):
            future = request.future
            if future is None or future.done():
                continue
            if isinstance(result, ServerError):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._dispatch()


def _run(instance: ModelInstance, batch: list[InferRequest], timing: Timing) -> list[RequestOutputs]:
    results = instance.execute(batch, timing)
    timing.output_end_ns = time.monotonic_ns()
    return results
