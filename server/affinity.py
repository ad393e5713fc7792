"""Which CPUs the threads that take turns on the interpreter lock run on.

The event loop's thread and the thread of a Python-backend model never run Python at the
same time: they hand the interpreter lock to each other, several times per batch. Left to
the kernel, the two land on different CPUs, and every hand-off moves the requests, the
responses and the interpreter's own state from one CPU's caches to the other's and wakes a
thread across CPUs. Kept on one CPU, they share its caches, and the other CPUs stay with
the threads that compute without the lock (ONNX Runtime's and PyTorch's pools, the load
generator of a benchmark). On two CPUs this cut the CPU a Python identity model took per
request, and raised its requests per second (docs/performance.md, change 22).

So when a Python model has one instance and that instance's recent runs were short, its
thread joins the event loop on the CPU the loop ran on when the first such thread joined;
the loop is pinned only while at least one thread shares it, and a thread whose runs grow
long (native code that computes without the lock belongs on the other CPUs) goes back to
every CPU the process may use. Several instances of one model are there to run at once, and
keep every CPU. Every other thread the server starts takes that whole set, whatever the
loop's thread had when it started it (``release_current_thread``).

A pinned thread cannot be moved by the kernel, so the placement is reviewed every
``REVIEW_S``. It ends when the threads sharing the loop stopped running (an idle model holds
nothing), and when the group spent more than ``CONTENDED_SHARE`` of its runnable time
waiting for its CPU (the kernel's count of each thread's run delay): another process busy on
that CPU would otherwise halve the server for as long as it stays. After contention the
threads stay free for ``HOLD_S``, doubled at each contention in a row up to ``MAX_HOLD_S``,
so that the kernel spreads them; the next short run then places them on the CPU the loop
has moved to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

SetAffinity = Callable[[int, Iterable[int]], None]
CallLater = Callable[[float, Callable[[], None]], Any]
# None where the system has no such call (macOS).
SCHED_SETAFFINITY: SetAffinity | None = getattr(os, "sched_setaffinity", None)

REVIEW_S = 1.0
"""How often a placement is reviewed while the loop is pinned."""
CONTENDED_SHARE = 0.3
"""The share of the placed threads' runnable time spent waiting for their CPU above which
they are released. On two CPUs under load the loop and a Python model's thread waited 0.10
of it, and 0.57 with another process busy on their CPU."""
HOLD_S = 2.0
MAX_HOLD_S = 64.0


def _current_cpu() -> int:
    """The CPU this thread is running on (field 39 of /proc/thread-self/stat)."""
    with open("/proc/thread-self/stat", "rb") as stat:
        text = stat.read()
    # The command name may hold spaces and parentheses: fields are counted after its end.
    return int(text[text.rindex(b")") + 2 :].split()[36])


def _schedstat(thread_id: int) -> tuple[int, int]:
    """Nanoseconds the thread with native id ``thread_id`` has run, and has waited runnable
    for a CPU (the first two fields of its ``schedstat``)."""
    with open(f"/proc/self/task/{thread_id}/schedstat", "rb") as stat:
        ran, waited = stat.read().split()[:2]
    return int(ran), int(waited)


def _call_later(delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback)


class LoopCpu:
    """The event loop's CPU and the threads sharing it. ``place`` runs on the loop's thread.

    ``set_affinity`` and ``current_cpu`` are ``os.sched_setaffinity`` (None where the
    system has none) and the CPU of the calling thread; ``schedstat``, ``call_later`` and
    ``clock`` read a thread's run and wait times, schedule the review on the running loop
    and tell the time. Tests pass fakes. ``allowed`` is the process's CPU set when the
    server started (a ``taskset`` or a container's cpuset): nothing is ever placed outside
    it."""

    def __init__(
        self,
        allowed: Iterable[int] | None = None,
        set_affinity: SetAffinity | None = SCHED_SETAFFINITY,
        current_cpu: Callable[[], int] = _current_cpu,
        schedstat: Callable[[int], tuple[int, int]] = _schedstat,
        call_later: CallLater = _call_later,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if allowed is None:
            get_affinity = getattr(os, "sched_getaffinity", None)
            allowed = get_affinity(0) if get_affinity is not None else ()
        self.allowed = frozenset(allowed)
        self._set = set_affinity
        self._current_cpu = current_cpu
        self._schedstat = schedstat
        self._call_later = call_later
        self._clock = clock
        # With a single CPU there is nothing to choose; without the call, nothing to do.
        self.possible = set_affinity is not None and len(self.allowed) > 1
        self.enabled = self.possible
        self.cpu: int | None = None
        self.members: set[int] = set()
        self._loop_thread = 0
        self._review_handle: Any = None
        # Each placed thread's (run, wait) nanoseconds at the last review.
        self._times: dict[int, tuple[int, int]] = {}
        self._ran = False  # a placed thread ran since the last review
        self._hold = HOLD_S
        self._held_until = 0.0

    def configure(self, enabled: bool) -> None:
        """Turn placement on or off for the models loaded from now on (the server's
        ``--backend-config=python,share-event-loop-cpu=<bool>``)."""
        if not enabled:
            self.disable()
        self.enabled = enabled and self.possible

    def place(self, thread_id: int, beside: bool) -> None:
        """Put the thread with native id ``thread_id`` on the loop's CPU (``beside``) or
        back on every allowed CPU. Costs nothing when it is already where it belongs."""
        if beside:
            self._ran = True
        setter = self._set
        if not self.enabled or setter is None or (thread_id in self.members) == beside:
            return
        try:
            if beside:
                cpu = self.cpu  # None exactly while no thread shares the loop's CPU
                if cpu is None:
                    if self._clock() < self._held_until:
                        return
                    cpu = self._current_cpu()
                    cpu = self.cpu = cpu if cpu in self.allowed else min(self.allowed)
                    self._loop_thread = threading.get_native_id()
                    setter(0, (cpu,))
                    self._times = {self._loop_thread: self._schedstat(self._loop_thread)}
                    self._review_handle = self._call_later(REVIEW_S, self._review)
                self.members.add(thread_id)
                setter(thread_id, (cpu,))
            else:
                self.forget(thread_id)
                setter(thread_id, self.allowed)
        except (OSError, ValueError, IndexError, RuntimeError) as exc:
            self._turn_off(exc)

    def _turn_off(self, exc: BaseException) -> None:
        # A CPU taken from the container's cpuset, a thread already gone, a /proc that does
        # not read as expected, no running loop to review the placement on: the kernel's own
        # placement is always correct, so fall back to it for good.
        log.info("CPU placement of the event loop's threads turned off: %s", exc)
        self.disable()

    def _review(self) -> None:
        """Every ``REVIEW_S`` while the loop is pinned, on the loop's thread: release the
        group if none of its threads ran since the last review, or if they waited for their
        CPU more than ``CONTENDED_SHARE`` of the time they were runnable."""
        self._review_handle = None
        if self.cpu is None:
            return
        try:
            now = {
                thread_id: self._schedstat(thread_id)
                for thread_id in (self._loop_thread, *self.members)
            }
        except (OSError, ValueError, IndexError) as exc:
            self._turn_off(exc)
            return
        ran = waited = 0
        for thread_id, (run_ns, wait_ns) in now.items():
            before = self._times.get(thread_id)
            if before is not None:
                ran += run_ns - before[0]
                waited += wait_ns - before[1]
        self._times = now
        contended = waited > CONTENDED_SHARE * (ran + waited)
        active, self._ran = self._ran, False
        if contended:
            self._held_until = self._clock() + self._hold
            log.debug(
                "the event loop's CPU %d is contended (%.0f%% of runnable time waiting): "
                "its threads are free for %.0f s",
                self.cpu,
                100 * waited / (ran + waited),
                self._hold,
            )
            self._hold = min(2 * self._hold, MAX_HOLD_S)
        else:
            self._hold = HOLD_S
        if contended or not active:
            self._release_all()
        else:
            self._review_handle = self._call_later(REVIEW_S, self._review)

    def forget(self, thread_id: int) -> None:
        """A thread that shared the loop's CPU left it or ended; the loop is free to move
        once none shares it."""
        if thread_id not in self.members:
            return
        self.members.discard(thread_id)
        if not self.members:
            self._release_all()

    def release_current_thread(self) -> None:
        """Every allowed CPU for the calling thread: the first step of each thread the
        server starts, which otherwise inherits the loop's one CPU while it is pinned."""
        if self.enabled:
            self._release(0)

    def disable(self) -> None:
        """No placement from now on; every placed thread and the loop get every CPU back."""
        self.enabled = False
        self._release_all()

    def _release_all(self) -> None:
        members, self.members = self.members, set()
        self.cpu = None
        if self._review_handle is not None:
            self._review_handle.cancel()
            self._review_handle = None
        for thread_id in members:
            self._release(thread_id)
        if self._loop_thread:
            self._release(self._loop_thread)

    def _release(self, thread_id: int) -> None:
        if self._set is None:
            return
        try:
            self._set(thread_id, self.allowed)
        except OSError:
            pass  # the thread ended, or the CPU set changed under us: nothing to undo


LOOP_CPU = LoopCpu()
"""The process's one placement: the server has one event loop."""
