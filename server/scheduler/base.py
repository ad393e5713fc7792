"""The scheduler seam and the machinery every scheduler shares: a pool of model instances,
executions on one worker thread per instance, and per-request completion with statistics.

A concrete scheduler decides *which* queued requests form the next execution
(``_take_batch``); this module decides *when* one can run (an instance is free) and how
its results reach each request's future.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from server.affinity import LOOP_CPU
from server.backends.base import ModelInstance, RequestOutputs, Timing
from server.errors import Code, ServerError, internal, unavailable
from server.repository.view import ModelView
from server.stats import ModelStats, counts_as_success
from server.types import InferRequest

log = logging.getLogger(__name__)

# A batch whose recent runs took less processor time than this runs on the event loop
# itself, on instances that allow it (``ModelInstance.short_runs_inline``). Handing a batch
# to the instance's thread and its outputs back costs two thread wake-ups and the
# interpreter lock changing hands twice, more than a run this short; the loop waits no
# longer than about this for it.
INLINE_RUN_NS = 200_000
# Runs of a size class observed on the instance's thread before that class may run inline.
INLINE_AFTER_RUNS = 3
# A Python model's thread whose recent runs took less processor time than this shares the
# event loop's CPU (``server.affinity``): such runs are mostly the interpreter's, which the
# two threads take turns on. Longer runs are mostly native code that computes without the
# interpreter lock, and belong on the other CPUs.
BESIDE_LOOP_RUN_NS = 1_000_000


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

    def __init__(
        self, view: ModelView, instances: Sequence[ModelInstance], stats: ModelStats
    ) -> None:
        if not instances:
            raise internal(f"model '{view.name}' has no instances")
        self.view = view
        self.stats = stats
        self._free: list[ModelInstance] = list(instances)
        self._instances = list(instances)
        # One thread and queue per instance: an instance runs one batch at a time anyway,
        # and a bare queue plus call_soon_threadsafe costs less per execution than an
        # executor's futures, locks and done callbacks.
        self._workers: dict[int, queue.SimpleQueue[_Work | None]] = {}
        self._run_times = {
            id(instance): RunTimes()
            for instance in instances
            if getattr(instance, "short_runs_inline", False)
        }
        # Only the thread of a model's only instance: several instances are there to run at
        # once, which short runs of native code that lets go of the lock may well do.
        self._beside_loop = {
            id(instance): RunTimes(BESIDE_LOOP_RUN_NS)
            for instance in instances
            if LOOP_CPU.enabled
            and len(instances) == 1
            and getattr(instance, "short_runs_beside_loop", False)
        }
        # Instances whose runs are timed by their own processor time (either map above).
        self._timed = self._run_times.keys() | self._beside_loop.keys()
        # The native id of each instance's thread, once it runs.
        self._thread_ids: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # --- the seam -------------------------------------------------------------------
    async def submit(self, request: InferRequest) -> dict[str, object]:
        """Queue ``request`` and wait for its outputs; raises ServerError on failure."""
        if self._stopping:
            raise unavailable(
                "Server is stopping, scheduler for model has stopped accepting new inference requests"
            )
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
            if self._withdraw(request):
                self.stats.pending -= 1
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
            log.warning(
                "model '%s': %d requests still in flight at shutdown",
                self.view.name,
                self._inflight,
            )
        self._fail_queued(unavailable("Server exiting"))
        for work in self._workers.values():
            work.put(None)
        self._workers.clear()
        for thread_id in self._thread_ids.values():
            LOOP_CPU.forget(thread_id)
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

    def _withdraw(self, request: InferRequest) -> bool:
        """Take a request whose caller went away out of the queue at once; True when it
        was still queued. By default it stays and is skipped when the batch is formed."""
        return False

    def _complete_error(self, request: InferRequest, error: ServerError) -> None:
        """Finish a request that never reached an instance (cancelled, timed out, rejected)."""
        self.stats.pending -= 1
        self._resolve(request, error)

    def _resolve(self, request: InferRequest, result: RequestOutputs) -> None:
        """Hand one request its outcome; schedulers that order responses override this."""
        future = request.future
        if future is None or future.done():
            return
        if isinstance(result, ServerError):
            future.set_exception(result)
        else:
            # ``submit`` made this future for the outputs, not for a response.
            future.set_result(result)  # type: ignore[arg-type]

    def _execute(
        self, instance: ModelInstance, batch: list[InferRequest], timing: Timing
    ) -> list[Execution]:
        """Run one batch, on the instance's thread or inline. Returns every execution it took
        (one here; more where a scheduler re-runs parts of a failed batch), so each is counted."""
        # The run's own processor time, for instances that may run inline or share the
        # loop's CPU: on the instance's thread its wall time also holds waits for the
        # interpreter lock, which are not the run's.
        timed = id(instance) in self._timed
        started = time.thread_time_ns() if timed else 0
        try:
            results = instance.execute(batch, timing)
        except ServerError as exc:
            results = [exc] * len(batch)
        except Exception as exc:  # a backend bug must not lose the requests
            log.exception("model '%s': execution failed", self.view.name)
            results = [internal(str(exc))] * len(batch)
        ran = time.thread_time_ns() - started if timed else 0
        timing.output_end_ns = timing.output_end_ns or time.monotonic_ns()
        if len(results) != len(batch):
            message = (
                f"model '{self.view.name}' returned {len(results)} responses "
                f"for {len(batch)} requests"
            )
            results = [internal(message)] * len(batch)
        counts = bool(getattr(instance, "reports_failed_executions", False))
        return [Execution(batch, timing, results, counts, ran)]

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
            self.stats.record_dequeue(request.queue_start_ns, timing.compute_start_ns)
        assert self._loop is not None
        times = self._run_times.get(id(instance))
        if times is not None and times.short(input_size_class(batch)):
            # Run here, and hand the outcome over on the loop's next turn, as the thread would.
            self._loop.call_soon(
                self._finish, instance, batch, self._execute(instance, batch, timing)
            )
            return
        work = self._workers.get(id(instance))
        if work is None:
            work = self._workers[id(instance)] = queue.SimpleQueue()
            threading.Thread(
                target=self._work,
                args=(self._loop, instance, work),
                name=f"model-{self.view.name}-{len(self._workers)}",
                daemon=True,
            ).start()
        work.put((batch, timing))

    def _work(
        self,
        loop: asyncio.AbstractEventLoop,
        instance: ModelInstance,
        work: queue.SimpleQueue[_Work | None],
    ) -> None:
        # Started from the event loop's thread, whose CPU this thread would otherwise keep.
        LOOP_CPU.release_current_thread()
        self._thread_ids[id(instance)] = threading.get_native_id()
        while (item := work.get()) is not None:
            batch, timing = item
            outcome: list[Execution] | BaseException
            try:
                outcome = self._execute(instance, batch, timing)
            except BaseException as exc:  # the requests must still be answered
                outcome = exc
            try:
                loop.call_soon_threadsafe(self._finish, instance, batch, outcome)
            except RuntimeError:  # the loop closed while this batch ran
                return

    def _finish(
        self,
        instance: ModelInstance,
        batch: list[InferRequest],
        outcome: list[Execution] | BaseException,
    ) -> None:
        self._free.append(instance)
        if isinstance(outcome, BaseException):
            error = (
                outcome
                if isinstance(outcome, ServerError)
                else internal(str(outcome) or type(outcome).__name__)
            )
            executions = [Execution(batch, Timing(), [error] * len(batch))]
        else:
            executions = outcome
        times = self._run_times.get(id(instance))
        beside = self._beside_loop.get(id(instance))
        for execution in executions:
            if execution.run_ns:
                if times is not None:
                    times.observe(input_size_class(execution.batch), execution.run_ns)
                if beside is not None:
                    beside.observe(0, execution.run_ns)
            self._record(execution)
            for request, result in zip(execution.batch, execution.results, strict=True):
                self._resolve(request, result)
        if beside is not None:
            thread_id = self._thread_ids.get(id(instance))
            if thread_id is not None:
                LOOP_CPU.place(thread_id, beside.short(0))
        self._dispatch()

    def _record(self, execution: Execution) -> None:
        """Triton's accounting of one execution: the requests it completed (error responses
        included) keep their queue time and add their rows and compute times; the run
        itself counts once, even when every request failed if the backend reports such
        runs (as Triton's Python backend does; its tensor backends do not)."""
        timing = execution.timing
        timing.output_end_ns = timing.output_end_ns or time.monotonic_ns()
        if not timing.input_end_ns:
            timing.input_end_ns = timing.compute_start_ns
        if not timing.infer_end_ns:
            timing.infer_end_ns = timing.input_end_ns
        completed = []
        stats = self.stats
        # A completed request's wait stands as counted at dispatch unless an observer
        # records it too: then, or when the request failed, it is settled here.
        observed = stats.observer is not None
        for request, result in zip(execution.batch, execution.results, strict=True):
            done = counts_as_success(result)
            if done:
                completed.append(request)
                if not observed:
                    continue
            # The wait ended at dispatch, also for a part a scheduler re-ran later.
            waited = request.compute_start_ns - request.queue_start_ns
            stats.settle_queue(waited if waited > 0 else 0, completed=done)
        if not completed and not execution.counts_failures:
            return
        rows = sum(request.batch_size for request in execution.batch) or 1
        self.stats.record_batch(rows, timing)
        if completed:
            done_rows = sum(request.batch_size for request in completed) or 1
            self.stats.record_computed(done_rows, len(completed), timing)


@dataclass(slots=True)
class Execution:
    """One run of the model: the requests it took, its timing marks, one result each."""

    batch: list[InferRequest]
    timing: Timing
    results: list[RequestOutputs]
    # Whether the run counts as an execution even when every request failed in it.
    counts_failures: bool = False
    # The processor time of the thread that ran it, in nanoseconds (0 where it did not run).
    run_ns: int = 0


class RunTimes:
    """Recent run times of one instance by the size of a batch's inputs, and from them
    whether the next run of that size is short enough to run inline (``INLINE_RUN_NS``).
    Each size class is judged on its own runs: a moving average that one slow run lifts
    above the limit, after which that class goes back to the thread until its runs are short
    again."""

    __slots__ = ("limit_ns", "after", "_sizes")

    def __init__(self, limit_ns: int = INLINE_RUN_NS, after: int = INLINE_AFTER_RUNS) -> None:
        self.limit_ns = limit_ns
        self.after = after
        # size class -> (runs seen, average run time in ns)
        self._sizes: dict[int, tuple[int, int]] = {}

    def short(self, size: int) -> bool:
        seen = self._sizes.get(size)
        return seen is not None and seen[0] >= self.after and seen[1] < self.limit_ns

    def observe(self, size: int, ns: int) -> None:
        seen = self._sizes.get(size)
        if seen is None:
            self._sizes[size] = (1, ns)
        else:
            count, average = seen
            # A quarter of the way to each new run: a run several times the limit stops the
            # next one from running inline at once.
            self._sizes[size] = (count + 1, average + (ns - average) // 4)


def input_size_class(batch: list[InferRequest]) -> int:
    """The batch's input bytes, rounded up to a power of two: runs of one class cost about
    the same, where the row count alone would put a [1, 16] and a [1, 4000000] tensor of a
    variable-size input together."""
    return sum(tensor.data.nbytes for request in batch for tensor in request.inputs).bit_length()


_Work = tuple[list[InferRequest], Timing]
