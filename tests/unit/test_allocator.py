"""The malloc thresholds the server sets at start, and when it leaves them alone."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from server import allocator


class FakeMallopt:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


def test_sets_both_thresholds_when_the_environment_is_silent() -> None:
    mallopt = FakeMallopt()
    assert allocator.tune({}, mallopt) is True
    # M_MMAP_THRESHOLD is -3 and M_TRIM_THRESHOLD -1 in glibc's malloc.h.
    assert mallopt.calls == [(-3, 32 * 1024 * 1024), (-1, 64 * 1024 * 1024)]


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TOP_PAD_": "0"},
        {"MALLOC_MMAP_MAX_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"GLIBC_TUNABLES": "glibc.pthread.mutex_spin_count=10:glibc.malloc.arena_max=2"},
    ],
)
def test_leaves_what_the_user_configured(environ: dict[str, str]) -> None:
    mallopt = FakeMallopt()
    assert allocator.tune(environ, mallopt) is False
    assert mallopt.calls == []


def test_other_tunables_do_not_count_as_malloc_settings() -> None:
    mallopt = FakeMallopt()
    assert allocator.tune({"GLIBC_TUNABLES": "glibc.pthread.mutex_spin_count=10"}, mallopt)
    assert len(mallopt.calls) == 2


def test_a_refused_setting_is_reported() -> None:
    assert allocator.tune({}, FakeMallopt(answer=0)) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_thresholds_in_a_real_process() -> None:
    code = "from server import allocator; print(allocator.tune({}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True"
