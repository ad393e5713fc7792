"""bench/threads.py's reading of /proc and its arithmetic per request, without a server."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from bench.threads import TICKS, ThreadTimes, read_threads, split


def times(user: int, system: int, run_ns: int, wait_ns: int, switches: int) -> ThreadTimes:
    return ThreadTimes("python", user, system, run_ns, wait_ns, switches, "0-1")


def test_each_threads_share_per_request_and_of_the_wall_time() -> None:
    before = {10: times(100, 10, 1_000_000_000, 0, 50), 11: times(5, 0, 0, 0, 0)}
    after = {
        10: times(100 + TICKS, 10 + TICKS // 2, 2_800_000_000, 400_000_000, 4050),
        11: times(5, 0, 0, 0, 0),  # idle: left out
        12: times(TICKS // 10, 0, 100_000_000, 0, 10),  # started during the load
    }
    loop, started = split(before, after, requests=10_000, wall_s=2.0)
    assert loop.tid == 10
    assert loop.user_us_per_req == pytest.approx(100.0)  # one second over 10,000 requests
    assert loop.system_us_per_req == pytest.approx(50.0)
    assert loop.run_share == pytest.approx(0.9) and loop.wait_share == pytest.approx(0.2)
    assert loop.switches_per_s == pytest.approx(2000)
    assert started.tid == 12 and started.user_us_per_req == pytest.approx(10.0)


@pytest.mark.skipif(not Path("/proc/thread-self/schedstat").exists(), reason="Linux only")
def test_this_process_threads_are_read_with_their_cpu_lists() -> None:
    stop = threading.Event()
    waiting = threading.Thread(target=lambda: stop.wait(5), name="waiting")
    waiting.start()
    try:
        first = read_threads(os.getpid())
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass
        second = read_threads(os.getpid())
    finally:
        stop.set()
        waiting.join()
    me = threading.get_native_id()
    assert waiting.native_id in first and me in second
    assert second[me].run_ns - first[me].run_ns >= 10_000_000
    allowed = os.sched_getaffinity(0)
    assert second[me].cpus  # e.g. "0-1"
    assert str(min(allowed)) in second[me].cpus
