"""The event loop's CPU and the threads that share it (``server.affinity``), with a fake
``sched_setaffinity``; and the scheduler's choice of which instance threads share it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from server import affinity
from server.affinity import LoopCpu
from server.backends.base import ModelInstance, RequestOutputs, Timing
from server.cli import parse_args
from server.scheduler import base
from server.scheduler.base import BESIDE_LOOP_RUN_NS, INLINE_AFTER_RUNS
from server.types import InferRequest
from tests.unit.test_batch_decision_batcher import make_batcher, request


class FakeAffinity:
    """Records every call and the thread that made it; raises for the ids in ``gone``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, frozenset[int]]] = []
        self.callers: list[int] = []
        self.gone: set[int] = set()

    def __call__(self, thread_id: int, cpus: Iterable[int]) -> None:
        if thread_id in self.gone:
            raise ProcessLookupError(3, "No such process")
        self.calls.append((thread_id, frozenset(cpus)))
        self.callers.append(threading.get_native_id())


class FakeTimer:
    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeSystem:
    """The review's world: each thread's (run, wait) nanoseconds, the clock, the timers."""

    def __init__(self) -> None:
        self.times: dict[int, tuple[int, int]] = {}
        self.now = 100.0
        self.timers: list[FakeTimer] = []
        self.unreadable = False

    def schedstat(self, thread_id: int) -> tuple[int, int]:
        if self.unreadable:
            raise FileNotFoundError(2, "No such file or directory")
        return self.times.get(thread_id, (0, 0))

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        self.timers.append(FakeTimer(delay, callback))
        return self.timers[-1]

    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled]

    def advance(self, thread_id: int, run_ns: int, wait_ns: int) -> None:
        run, wait = self.times.get(thread_id, (0, 0))
        self.times[thread_id] = (run + run_ns, wait + wait_ns)

    def review(self) -> None:
        """A second passes and the pending review runs."""
        (timer,) = self.pending()
        self.timers.remove(timer)
        self.now += timer.delay
        timer.callback()


def loop_cpu(
    cpus: Iterable[int] = (0, 1, 2, 3), current: int = 2, system: FakeSystem | None = None
) -> tuple[LoopCpu, FakeAffinity]:
    fake = FakeAffinity()
    system = system or FakeSystem()
    placement = LoopCpu(
        allowed=cpus,
        set_affinity=fake,
        current_cpu=lambda: current,
        schedstat=system.schedstat,
        call_later=system.call_later,
        clock=lambda: system.now,
    )
    return placement, fake


ALL = frozenset({0, 1, 2, 3})


def test_the_first_thread_pins_the_loop_to_its_current_cpu_and_joins_it() -> None:
    placement, fake = loop_cpu(current=2)
    placement.place(101, beside=True)
    # 0 is the calling thread: the loop's own, where ``place`` runs.
    assert fake.calls == [(0, frozenset({2})), (101, frozenset({2}))]
    assert placement.cpu == 2 and placement.members == {101}
    placement.place(102, beside=True)
    assert fake.calls[2:] == [(102, frozenset({2}))], "the loop is pinned once"


def test_placing_a_thread_where_it_already_is_makes_no_call() -> None:
    placement, fake = loop_cpu()
    placement.place(101, beside=False)
    placement.place(101, beside=True)
    placement.place(101, beside=True)
    assert len(fake.calls) == 2


def test_the_loop_is_released_when_the_last_thread_leaves() -> None:
    placement, fake = loop_cpu(current=1)
    loop_thread = threading.get_native_id()
    placement.place(101, beside=True)
    placement.place(102, beside=True)
    placement.place(101, beside=False)
    assert fake.calls[-1] == (101, ALL) and placement.cpu == 1
    placement.place(102, beside=False)
    assert fake.calls[-2:] == [(loop_thread, ALL), (102, ALL)]
    assert placement.cpu is None and not placement.members


def test_a_cpu_outside_the_allowed_set_is_never_chosen() -> None:
    placement, fake = loop_cpu(cpus=(4, 5), current=0)
    placement.place(101, beside=True)
    assert placement.cpu == 4
    assert {cpus for _, cpus in fake.calls} == {frozenset({4})}


def test_one_cpu_or_no_affinity_call_means_no_placement() -> None:
    single, fake = loop_cpu(cpus=(3,), current=3)
    single.place(101, beside=True)
    single.release_current_thread()
    assert not single.enabled and fake.calls == []
    unsupported = LoopCpu(allowed=(0, 1), set_affinity=None)
    unsupported.configure(True)
    assert not unsupported.enabled


def test_an_error_turns_placement_off_and_releases_what_was_placed() -> None:
    placement, fake = loop_cpu(current=0)
    loop_thread = threading.get_native_id()
    placement.place(101, beside=True)
    fake.gone.add(102)
    placement.place(102, beside=True)
    assert not placement.enabled and not placement.members and placement.cpu is None
    assert fake.calls[-2:] == [(101, ALL), (loop_thread, ALL)]
    placement.place(103, beside=True)
    assert fake.calls[-1][0] == loop_thread, "nothing is placed any more"


def test_configure_false_releases_and_true_enables_again() -> None:
    placement, fake = loop_cpu()
    placement.place(101, beside=True)
    placement.configure(False)
    assert not placement.enabled and not placement.members
    assert (101, ALL) in fake.calls
    placement.configure(True)
    assert placement.enabled


def test_a_thread_started_by_the_loop_takes_every_allowed_cpu() -> None:
    placement, fake = loop_cpu()
    placement.release_current_thread()
    assert fake.calls == [(0, ALL)]


def test_the_cpu_of_this_thread_is_read_from_proc() -> None:
    if not hasattr(affinity.os, "sched_getaffinity"):
        pytest.skip("Linux only")
    assert affinity._current_cpu() in affinity.os.sched_getaffinity(0)


# --- the review: idle or contended placements end ------------------------------------------
def test_a_placement_whose_threads_keep_running_uncontended_is_kept() -> None:
    system = FakeSystem()
    placement, fake = loop_cpu(system=system)
    loop_thread = threading.get_native_id()
    placement.place(101, beside=True)
    assert [t.delay for t in system.pending()] == [affinity.REVIEW_S]
    for _ in range(3):
        placement.place(101, beside=True)  # a run
        # Busy and waiting a tenth of the time: two threads taking turns on one CPU.
        system.advance(loop_thread, 900_000_000, 100_000_000)
        system.advance(101, 100_000_000, 10_000_000)
        system.review()
        assert placement.members == {101} and placement.cpu == 2
        assert len(system.pending()) == 1, "the next review is scheduled"
    assert len(fake.calls) == 2, "nothing was moved"


def test_threads_that_stopped_running_are_released_and_placed_again_at_the_next_run() -> None:
    system = FakeSystem()
    placement, fake = loop_cpu(system=system, current=3)
    loop_thread = threading.get_native_id()
    placement.place(101, beside=True)
    system.review()  # ran since the placement: kept
    assert placement.members == {101}
    system.review()  # no run for a whole period
    assert placement.cpu is None and not placement.members and not system.pending()
    assert fake.calls[-2:] == [(101, ALL), (loop_thread, ALL)]
    placement.place(101, beside=True)  # the model is used again: no hold after idleness
    assert placement.cpu == 3 and placement.members == {101}


def test_a_contended_cpu_frees_the_threads_for_a_hold_that_doubles_while_it_recurs() -> None:
    system = FakeSystem()
    placement, fake = loop_cpu(system=system)
    loop_thread = threading.get_native_id()

    def contended_second() -> None:
        placement.place(101, beside=True)
        # Another process on the CPU: half of the runnable time spent waiting.
        system.advance(loop_thread, 500_000_000, 450_000_000)
        system.advance(101, 50_000_000, 300_000_000)
        system.review()

    placement.place(101, beside=True)
    contended_second()
    assert placement.cpu is None and not placement.members and not system.pending()
    assert fake.calls[-2:] == [(101, ALL), (loop_thread, ALL)]
    for hold in (affinity.HOLD_S, 2 * affinity.HOLD_S, 4 * affinity.HOLD_S):
        released_at = system.now
        system.now = released_at + hold - 0.01
        placement.place(101, beside=True)
        assert placement.cpu is None, "still held: the kernel spreads the threads meanwhile"
        system.now = released_at + hold
        placement.place(101, beside=True)
        assert placement.members == {101}, "placed again once the hold is over"
        contended_second()
        assert placement.cpu is None
    # A quiet period resets the hold.
    system.now += 8 * affinity.HOLD_S
    placement.place(101, beside=True)
    placement.place(101, beside=True)
    system.review()
    contended_second_at = system.now
    assert placement.members == {101}
    contended_second()
    system.now = contended_second_at + 1.0 + affinity.HOLD_S
    placement.place(101, beside=True)
    assert placement.members == {101}


def test_the_hold_never_exceeds_its_maximum() -> None:
    system = FakeSystem()
    placement, _ = loop_cpu(system=system)
    loop_thread = threading.get_native_id()
    for _ in range(12):
        system.now += affinity.MAX_HOLD_S
        placement.place(101, beside=True)
        assert placement.members == {101}
        system.advance(loop_thread, 100, 900)
        system.review()
    assert placement._hold == affinity.MAX_HOLD_S


def test_a_thread_time_that_cannot_be_read_turns_placement_off() -> None:
    system = FakeSystem()
    placement, fake = loop_cpu(system=system)
    placement.place(101, beside=True)
    system.unreadable = True
    system.review()
    assert not placement.enabled and not placement.members and placement.cpu is None
    assert (101, ALL) in fake.calls


def test_releasing_the_loop_cancels_its_review() -> None:
    system = FakeSystem()
    placement, _ = loop_cpu(system=system)
    placement.place(101, beside=True)
    placement.place(101, beside=False)
    assert system.timers and not system.pending()
    placement.place(101, beside=True)
    placement.configure(False)
    assert not system.pending()


def test_without_a_running_loop_to_review_it_nothing_stays_placed() -> None:
    fake = FakeAffinity()
    placement = LoopCpu(allowed=(0, 1), set_affinity=fake, current_cpu=lambda: 1)
    placement.place(101, beside=True)  # no event loop runs in this thread
    assert not placement.enabled and placement.cpu is None and not placement.members
    assert fake.calls[0] == (0, frozenset({1}))
    assert fake.calls[-1] == (threading.get_native_id(), frozenset({0, 1}))


def test_a_threads_run_and_wait_times_are_read_from_proc() -> None:
    if not Path("/proc/thread-self/schedstat").exists():
        pytest.skip("Linux only")
    ran, waited = affinity._schedstat(threading.get_native_id())
    end = time.thread_time() + 0.01
    while time.thread_time() < end:
        pass
    ran_after, waited_after = affinity._schedstat(threading.get_native_id())
    assert ran_after - ran >= 5_000_000 and waited_after >= waited >= 0


# --- which instance threads the scheduler places -----------------------------------------
class Runs(ModelInstance):
    """Echoes INPUT0; each run computes for ``seconds`` of processor time."""

    def __init__(self, seconds: float, beside: bool = True) -> None:
        self.seconds = seconds
        self.short_runs_beside_loop = beside
        self.threads: set[int] = set()
        self.runs = 0

    def execute(self, requests: Sequence[InferRequest], timing: Timing) -> list[RequestOutputs]:
        self.threads.add(threading.get_native_id())
        self.runs += 1
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
        return [{"OUTPUT0": r.inputs[0].data} for r in requests]


@pytest.fixture()
def placement(monkeypatch: pytest.MonkeyPatch) -> tuple[LoopCpu, FakeAffinity]:
    placement, fake = loop_cpu()
    monkeypatch.setattr(base, "LOOP_CPU", placement)
    return placement, fake


async def test_a_python_instance_shares_the_loop_cpu_after_short_runs(
    placement: tuple[LoopCpu, FakeAffinity],
) -> None:
    loop_cpu_, fake = placement
    instance = Runs(0.0)
    batcher = make_batcher("", [instance])
    for n in range(INLINE_AFTER_RUNS - 1):
        await batcher.submit(request(f"r{n}"))
    (thread,) = instance.threads
    assert thread not in loop_cpu_.members
    # The instance's thread let go of the CPU set it inherited from the loop's thread.
    assert fake.calls == [(0, ALL)] and fake.callers == [thread]
    await batcher.submit(request("last"))
    assert loop_cpu_.members == {thread}
    loop_thread = threading.get_native_id()
    assert fake.calls[1:] == [(0, frozenset({2})), (thread, frozenset({2}))]
    assert fake.callers[1:] == [loop_thread, loop_thread]
    await batcher.stop(drain_timeout=1.0)
    assert not loop_cpu_.members, "a stopped model's thread no longer holds the loop"


async def test_long_runs_other_backends_and_several_instances_never_share_it(
    placement: tuple[LoopCpu, FakeAffinity],
) -> None:
    loop_cpu_, _ = placement
    long_runs = [Runs(2 * BESIDE_LOOP_RUN_NS / 1e9)]
    tensor_framework = [Runs(0.0, beside=False)]
    two_instances = [Runs(0.0), Runs(0.0)]
    for instances in (long_runs, tensor_framework, two_instances):
        batcher = make_batcher("", instances)
        for _ in range(2 * INLINE_AFTER_RUNS):
            # Two at once: with two instances, each takes one.
            await asyncio.gather(batcher.submit(request("a")), batcher.submit(request("b")))
        assert all(instance.runs >= INLINE_AFTER_RUNS for instance in instances)
        assert not loop_cpu_.members and loop_cpu_.cpu is None
        await batcher.stop(drain_timeout=1.0)


# --- the setting ---------------------------------------------------------------------------
def test_share_event_loop_cpu_is_a_python_backend_setting() -> None:
    assert parse_args([]).python_shares_loop_cpu
    assert not parse_args(
        ["--backend-config=python,share-event-loop-cpu=false"]
    ).python_shares_loop_cpu
    last_wins = parse_args(
        [
            "--backend-config=python,share-event-loop-cpu=0",
            "--backend-config=onnxruntime,share-event-loop-cpu=1",
            "--backend-config=python,shm-default-byte-size=1048576",
        ]
    )
    assert not last_wins.python_shares_loop_cpu, "another backend's key is not the Python one's"


def test_a_value_that_is_not_a_boolean_stops_the_server_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--backend-config=python,share-event-loop-cpu=sometimes"])
    assert exited.value.code == 2
    assert "share-event-loop-cpu: expected a boolean, got 'sometimes'" in capsys.readouterr().err
