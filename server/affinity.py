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
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

SetAffinity = Callable[[int, Iterable[int]], None]
# None where the system has no such call (macOS).
SCHED_SETAFFINITY: SetAffinity | None = getattr(os, "sched_setaffinity", None)


def _current_cpu() -> int:
    """The CPU this thread is running on (field 39 of /proc/thread-self/stat)."""
    with open("/proc/thread-self/stat", "rb") as stat:
        text = stat.read()
    # The command name may hold spaces and parentheses: fields are counted after its end.
    return int(text[text.rindex(b")") + 2 :].split()[36])


class LoopCpu:
    """The event loop's CPU and the threads sharing it. ``place`` runs on the loop's thread.

    ``set_affinity`` and ``current_cpu`` are ``os.sched_setaffinity`` (None where the
    system has none) and the CPU of the calling thread; tests pass fakes. ``allowed`` is
    the process's CPU set when the server started (a ``taskset`` or a container's cpuset):
    nothing is ever placed outside it."""

    def __init__(
        self,
        allowed: Iterable[int] | None = None,
        set_affinity: SetAffinity | None = SCHED_SETAFFINITY,
        current_cpu: Callable[[], int] = _current_cpu,
    ) -> None:
        if allowed is None:
            get_affinity = getattr(os, "sched_getaffinity", None)
            allowed = get_affinity(0) if get_affinity is not None else ()
        self.allowed = frozenset(allowed)
        self._set = set_affinity
        self._current_cpu = current_cpu
        # With a single CPU there is nothing to choose; without the call, nothing to do.
        self.possible = set_affinity is not None and len(self.allowed) > 1
        self.enabled = self.possible
        self.cpu: int | None = None
        self.members: set[int] = set()
        self._loop_thread = 0

    def configure(self, enabled: bool) -> None:
        """Turn placement on or off for the models loaded from now on (the server's
        ``--backend-config=python,share-event-loop-cpu=<bool>``)."""
        if not enabled:
            self.disable()
        self.enabled = enabled and self.possible

    def place(self, thread_id: int, beside: bool) -> None:
        """Put the thread with native id ``thread_id`` on the loop's CPU (``beside``) or
        back on every allowed CPU. Costs nothing when it is already where it belongs."""
        setter = self._set
        if not self.enabled or setter is None or (thread_id in self.members) == beside:
            return
        try:
            if beside:
                cpu = self.cpu  # None exactly while no thread shares the loop's CPU
                if cpu is None:
                    cpu = self._current_cpu()
                    cpu = self.cpu = cpu if cpu in self.allowed else min(self.allowed)
                    self._loop_thread = threading.get_native_id()
                    setter(0, (cpu,))
                self.members.add(thread_id)
                setter(thread_id, (cpu,))
            else:
                self.forget(thread_id)
                setter(thread_id, self.allowed)
        except (OSError, ValueError, IndexError) as exc:
            # A CPU taken from the container's cpuset, a thread already gone, a /proc that
            # does not read as expected: the kernel's own placement is always correct, so
            # fall back to it for good.
            log.info("CPU placement of the event loop's threads turned off: %s", exc)
            self.disable()

    def forget(self, thread_id: int) -> None:
        """A thread that shared the loop's CPU left it or ended; the loop is free to move
        once none shares it."""
        if thread_id not in self.members:
            return
        self.members.discard(thread_id)
        if not self.members:
            self.cpu = None
            self._release(self._loop_thread)

    def release_current_thread(self) -> None:
        """Every allowed CPU for the calling thread: the first step of each thread the
        server starts, which otherwise inherits the loop's one CPU while it is pinned."""
        if self.enabled:
            self._release(0)

    def disable(self) -> None:
        """No placement from now on; every placed thread and the loop get every CPU back."""
        members, self.members = self.members, set()
        self.enabled = False
        self.cpu = None
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
