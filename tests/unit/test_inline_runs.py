"""Short runs on the event loop: which runs the scheduler keeps on the loop's own thread,
and that such runs are answered and counted exactly as runs on the instance's thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np

from server.backends.base import ModelInstance, RequestOutputs, Timing
from server.errors import Code, ServerError, internal
from server.scheduler.base import INLINE_AFTER_RUNS, INLINE_RUN_NS, RunTimes, input_size_class
from server.types import InferRequest
from tests.unit.test_batch_decision_batcher import make_batcher, make_view, request


class ThreadRecorder(ModelInstance):
    """Echoes INPUT0 and records the thread of every run; each run computes for ``delay``
    seconds, and ``fail_next`` raises from the next run."""

    def __init__(self, inline: bool, delay: float = 0.0) -> None:
        self.short_runs_inline = inline
        self.delay = delay
        self.threads: list[int] = []
        self.fail_next = False

    def execute(self, requests: Sequence[InferRequest], timing: Timing) -> list[RequestOutputs]:
        self.threads.append(threading.get_ident())
        # Processor time, as the scheduler measures it, however busy the machine is.
        end = time.thread_time() + self.delay
        while time.thread_time() < end:
            pass
        if self.fail_next:
            self.fail_next = False
            raise internal("backend failed")
        return [{"OUTPUT0": r.inputs[0].data} for r in requests]


async def one_at_a_time(batcher: object, count: int, rows: int = 1) -> list[dict[str, object]]:
    return [
        await batcher.submit(request(f"r{n}", rows=rows))  # type: ignore[attr-defined]
        for n in range(count)
    ]


# --- the decision --------------------------------------------------------------------------
def test_a_size_runs_inline_only_after_enough_short_runs() -> None:
    times = RunTimes(limit_ns=100_000, after=3)
    assert not times.short(1)
    times.observe(1, 20_000)
    times.observe(1, 20_000)
    assert not times.short(1)
    times.observe(1, 20_000)
    assert times.short(1)
    assert not times.short(2), "each size class is judged on its own runs"


def test_one_slow_run_sends_the_size_back_to_the_thread_until_runs_are_short_again() -> None:
    times = RunTimes(limit_ns=100_000, after=3)
    for _ in range(3):
        times.observe(4, 20_000)
    times.observe(4, 1_000_000)
    assert not times.short(4)
    for _ in range(3):
        times.observe(4, 10_000)
    assert not times.short(4), "the average comes down a quarter of the way per run"
    for _ in range(6):
        times.observe(4, 10_000)
    assert times.short(4)


def test_runs_near_the_limit_stay_on_the_thread() -> None:
    times = RunTimes(limit_ns=100_000, after=3)
    for _ in range(10):
        times.observe(8, 100_000)
    assert not times.short(8)


# --- the scheduler -------------------------------------------------------------------------
async def test_short_runs_move_to_the_loop_after_the_first_few() -> None:
    instance = ThreadRecorder(inline=True)
    batcher = make_batcher("", [instance])
    results = await one_at_a_time(batcher, 6)
    loop_thread = threading.get_ident()
    on_loop = [t == loop_thread for t in instance.threads]
    assert on_loop == [False] * INLINE_AFTER_RUNS + [True] * (6 - INLINE_AFTER_RUNS)
    for result in results:
        np.testing.assert_array_equal(result["OUTPUT0"], np.zeros((1, 4), np.float32))
    stats = batcher.stats
    assert (stats.inference_count, stats.execution_count, stats.pending) == (6, 6, 0)
    assert stats.queue.count == 6 and stats.compute_infer.count == 6


async def test_a_new_batch_size_starts_on_the_thread() -> None:
    instance = ThreadRecorder(inline=True)
    batcher = make_batcher("", [instance])
    await one_at_a_time(batcher, 4, rows=1)
    await one_at_a_time(batcher, 1, rows=2)
    assert instance.threads[-1] != threading.get_ident()


async def test_a_much_larger_tensor_in_the_same_rows_starts_on_the_thread() -> None:
    # A variable-size input: one row of 4 values runs inline, one row of a million does not.
    instance = ThreadRecorder(inline=True)
    batcher = make_batcher("", [instance], view=make_view(dims=(-1,)))
    await one_at_a_time(batcher, 4)
    assert instance.threads[-1] == threading.get_ident()
    await batcher.submit(request("large", width=1_000_000))
    assert instance.threads[-1] != threading.get_ident()


def test_size_classes_follow_the_input_bytes() -> None:
    one, two = [request("a")], [request("a"), request("b")]
    assert input_size_class(one) == (16).bit_length()
    assert input_size_class(two) == input_size_class(one) + 1
    assert input_size_class([request("c", width=5)]) == input_size_class(one)
    assert input_size_class([request("d", width=8)]) == input_size_class(one) + 1


async def test_long_runs_stay_on_the_thread() -> None:
    instance = ThreadRecorder(inline=True, delay=10 * INLINE_RUN_NS / 1e9)
    batcher = make_batcher("", [instance])
    await one_at_a_time(batcher, 6)
    assert threading.get_ident() not in instance.threads


async def test_instances_that_run_user_code_never_run_on_the_loop() -> None:
    instance = ThreadRecorder(inline=False)
    batcher = make_batcher("", [instance])
    await one_at_a_time(batcher, 6)
    assert threading.get_ident() not in instance.threads


async def test_a_failing_inline_run_fails_its_requests_and_the_instance_goes_on() -> None:
    instance = ThreadRecorder(inline=True)
    batcher = make_batcher("", [instance])
    await one_at_a_time(batcher, INLINE_AFTER_RUNS)
    instance.fail_next = True
    try:
        await batcher.submit(request("doomed"))
    except ServerError as exc:
        assert exc.code is Code.INTERNAL and exc.message == "backend failed"
    else:
        raise AssertionError("the failed run answered its request")
    assert instance.threads[-1] == threading.get_ident()
    result = await batcher.submit(request("after"))
    np.testing.assert_array_equal(result["OUTPUT0"], np.zeros((1, 4), np.float32))
    assert batcher.stats.pending == 0


async def test_requests_arriving_during_an_inline_run_form_the_next_batch() -> None:
    instance = ThreadRecorder(inline=True)
    batcher = make_batcher("", [instance])
    await one_at_a_time(batcher, INLINE_AFTER_RUNS)
    results = await asyncio.gather(*(batcher.submit(request(f"q{n}")) for n in range(5)))
    assert len(results) == 5
    # The first request runs alone and inline; the four that came meanwhile run as one batch.
    assert batcher.executed_batch_sizes.get(4) == 1
    assert batcher.stats.pending == 0
